"""The gRPC bridge's thread hand-off (asyncio thread -> Trio thread -> back), measured.

    python -m bench.grpc_handoff [--calls 20000] [--concurrency 1,32]

grpc.aio runs on its own thread and loop; each RPC hands its work to the Trio thread and
awaits the answer (``bridges.grpc.portal``). Two ways, compared in one run:

- ``per call``: what the portal does — ``TrioToken.run_sync_soon`` per call in, and
  ``loop.call_soon_threadsafe`` per answer out. Each is a write to the other loop's wakeup
  socket (a syscall) whether or not that loop is already awake.
- ``coalesced``: calls and answers go into a deque; only the first of a burst wakes the other
  loop, which then drains everything queued (``bridges.grpc.portal.Coalescer``, what the
  portal uses since this measurement).

For each it prints calls per second and CPU time per call (both threads, ``process_time``)
with ``concurrency`` calls in flight, the medians of ``--repeat`` runs. The work handed
over is trivial, so this is the hand-off's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from bridges.grpc.portal import Coalescer


def _per_call(token: trio.lowlevel.TrioToken) -> Callable[[asyncio.AbstractEventLoop],
                                                           Callable[[], Any]]:
    def make(loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
        def call() -> asyncio.Future[int]:
            future: asyncio.Future[int] = loop.create_future()

            def on_trio() -> None:
                loop.call_soon_threadsafe(future.set_result, 1)

            token.run_sync_soon(on_trio)
            return future

        return call

    return make


def _coalesced(token: trio.lowlevel.TrioToken) -> Callable[[asyncio.AbstractEventLoop],
                                                            Callable[[], Any]]:
    def make(loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
        to_trio = Coalescer(token.run_sync_soon)
        to_loop = Coalescer(loop.call_soon_threadsafe)

        def call() -> asyncio.Future[int]:
            future: asyncio.Future[int] = loop.create_future()

            def on_trio() -> None:
                to_loop.put(lambda: future.set_result(1))

            to_trio.put(on_trio)
            return future

        return call

    return make


def measure(kind: Callable[[trio.lowlevel.TrioToken], Any], calls: int, concurrency: int
            ) -> tuple[float, float]:
    """(calls per second, CPU µs per call)."""
    result: list[tuple[float, float]] = []

    async def trio_main() -> None:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def asyncio_thread() -> None:
            async def main() -> None:
                call = kind(token)(asyncio.get_running_loop())

                async def worker(n: int) -> None:
                    for _ in range(n):
                        await call()

                start, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
                n = calls // concurrency * concurrency
                wall, used = time.perf_counter() - start, time.process_time() - cpu
                result.append((n / wall, used / n * 1e6))

            asyncio.run(main())
            token.run_sync_soon(done.set)

        threading.Thread(target=asyncio_thread, daemon=True).start()
        await done.wait()

    trio.run(trio_main)
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; the median is shown")
    args = parser.parse_args()
    print("| hand-off | in flight | calls/s | CPU µs/call |")
    print("|---|---|---|---|")
    kinds = (("per call", _per_call), ("coalesced", _coalesced))
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in kinds}
        for _ in range(args.repeat):  # interleaved, then medians: the machines are noisy
            for name, kind in kinds:
                runs[name].append(measure(kind, args.calls, concurrency))
        for name, _ in kinds:
            rates = sorted(r[0] for r in runs[name])
            cpus = sorted(r[1] for r in runs[name])
            print(f"| {name} | {concurrency} | {rates[len(rates) // 2]:.0f} "
                  f"| {cpus[len(cpus) // 2]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
