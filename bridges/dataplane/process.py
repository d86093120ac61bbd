"""One data-plane process (``python -m bridges.dataplane``): the whole data path of
stateless models, on ports it shares with the other data-plane processes.

Started by the control process's ``DataPlanePool`` with its settings in
``INFEROXY_BRIDGE_SETTINGS``. It listens on the HTTP port with SO_REUSEPORT (the kernel
spreads connections over the processes), serves infer requests with the same handlers as
the control process, over a ``DataPlane``: stateless models are batched here and their
batches sent straight to the copies; stateful models and every other route go to the
control process in one message.

Lifecycle: connect to the core, say HELLO, wait for the routing table, listen, say HELLO
again (``listening``). STOP (the core drains), or SIGTERM while the core lives: close the
listener, finish open responses, exit. The core gone (our parent changed, seen by
our parent watch): every waiting request is answered 503 at once, then exit. Our slab's
segments are unlinked on the way out; those of a killed process are unlinked by the core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from typing import Any

import trio

from bridges.dataplane.facade import CoreLink
from bridges.dataplane.grpc import DataPlaneHandlers, control_address
from bridges.dataplane.plane import DataPlane
from bridges.grpc.portal import Portal
from bridges.grpc.server import serve_grpc
from bridges.grpc.service import Service
from gateway import bridge_wire as bw
from gateway import wakeup
from gateway.errors import Unavailable
from gateway.link import WorkerLink
from gateway.loadboard import LoadBoard, board_name
from gateway.logs import setup_logging
from gateway.settings import Settings
from shm import wire
from shm.messages import Reply
from shm.segment import SegmentCache, segment_name
from shm.slab import SlabAllocator

log = logging.getLogger("inferoxy.bridge")

REPORT_EVERY_S = 0.1  # answer counts and statistics reach the control process this late
# The core gone is noticed by polling our parent: PR_SET_PDEATHSIG fires when the *thread*
# that spawned us exits, and Trio spawns from a worker thread that idles out after seconds.
PARENT_CHECK_S = 0.2
PRUNE_EVERY_S = 5.0  # output segments of workers that are gone are unmapped this often
SEGMENT_BYTES = 16 << 20  # smaller than the core's: workers keep a dead bridge's mapped


async def serve_bridge(index: int, core_pid: int, run_dir: str, settings: Settings,
                       count: int = 1) -> None:
    from bridges.dataplane.http import serve_http  # the REST layer, imported in the child only

    pid = os.getpid()
    slab = SlabAllocator(
        segment_name(settings.shm_prefix, pid, "b"),
        # The data-plane processes share --shm-limit-bytes (the control process keeps its own
        # for the WebSocket and ZeroMQ bridges).
        limit_bytes=max(SEGMENT_BYTES, settings.shm_limit_bytes // max(count, 1)),
        segment_bytes=SEGMENT_BYTES,
    )
    link = CoreLink(index, run_dir, slab)
    workers = WorkerLink(run_dir, reply=Reply(wire.producer_address(run_dir, pid), pid))
    board = LoadBoard.attach(board_name(f"{settings.shm_prefix}-{core_pid}"), index + 1)
    board.rows = count + 1  # the control process's row and one per data-plane process
    plane = DataPlane(settings, link, workers, slab, SegmentCache(), board)
    link.on_flush = lambda gen: report(gen)
    sent: dict[tuple[str, str], int] = {}
    last_gauges: list[Any] = [None]

    def report(flush: int | None = None) -> None:
        counts = plane.bridge_answers.counts
        delta = [[b, c, n - sent.get((b, c), 0)] for (b, c), n in list(counts.items())
                 if n != sent.get((b, c), 0)]
        sent.update(counts)
        stats = plane.stats_report()
        gauges = (plane.pending_report(), slab.slots_in_use, slab.bytes_in_use)
        if not delta and not stats and gauges == last_gauges[0] and flush is None:
            return  # idle: nothing new to say
        last_gauges[0] = gauges
        try:
            link.report(delta, stats, gauges[0], flush)
        except Unavailable:
            pass

    core_gone = False
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def watch_parent() -> None:  # from the start: any stage may be cut
                    nonlocal core_gone
                    while os.getppid() == core_pid:
                        await trio.sleep(PARENT_CHECK_S)
                    core_gone = True
                    log.warning("bridge %d: the gateway core is gone; exiting", index)
                    link.fail_all(Unavailable("the gateway core stopped"))
                    plane.fail_all(Unavailable("the gateway core stopped"))
                    await trio.sleep(0.2)  # let the handlers write their 503s
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_parent)
                nursery.start_soon(wakeup.install().run)  # batch deadlines on time
                nursery.start_soon(link.run)
                nursery.start_soon(link.run_flusher)
                link.send(bw.HELLO, {"pid": pid, "listening": False})
                with trio.fail_after(30):
                    await link.got_table.wait()
                nursery.start_soon(plane.run)
                shutdown, http_done = trio.Event(), trio.Event()

                async def run_http(task_status: trio.TaskStatus[list[str]]) -> None:
                    try:
                        await serve_http(plane, settings.host, settings.http_port, shutdown,
                                         task_status=task_status)
                    finally:
                        http_done.set()

                await nursery.start(run_http)
                grpc_done = trio.Event()

                def handlers(portal: Portal, service: Service) -> DataPlaneHandlers:
                    return DataPlaneHandlers(portal, service, plane, control_address(run_dir),
                                             settings.max_body_bytes)

                async def run_grpc(task_status: trio.TaskStatus[list[str]]) -> None:
                    try:
                        await serve_grpc(plane, settings.host,  # type: ignore[arg-type]
                                         settings.grpc_port, shutdown, reuse_port=True,
                                         make_handlers=handlers, task_status=task_status)
                    finally:
                        grpc_done.set()

                await nursery.start(run_grpc)
                link.send(bw.HELLO, {"pid": pid, "listening": True})
                nursery.start_soon(_every, REPORT_EVERY_S, report)
                nursery.start_soon(_every, PRUNE_EVERY_S, link.cache.prune)

                async def first_signal() -> None:
                    async for _ in signals:
                        return

                async with trio.open_nursery() as watchers:  # STOP or a signal: drain
                    for watch in (first_signal, link.stop_requested.wait):
                        watchers.start_soon(_then_cancel, watch, watchers.cancel_scope)
                plane.draining = True
                shutdown.set()  # the listener closes; open responses go out
                with trio.move_on_after(settings.drain_timeout_s):
                    await http_done.wait()
                    await grpc_done.wait()
                nursery.cancel_scope.cancel()
    finally:
        if not core_gone:
            report()
        link.close()
        workers.close()
        plane.cache.close()
        board.close()
        slab.close()


async def _every(period_s: float, fn: Any) -> None:
    while True:
        await trio.sleep(period_s)
        fn()


async def _then_cancel(wait: Any, scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bridges.dataplane")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--core-pid", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--count", type=int, default=1, help="data-plane processes in all")
    args = parser.parse_args(argv)
    if os.getppid() != args.core_pid:  # the core died before we could ask
        return
    settings = Settings(**json.loads(os.environ["INFEROXY_BRIDGE_SETTINGS"]))
    setup_logging(settings.log_level, settings.log_format)
    trio.run(serve_bridge, args.index, args.core_pid, args.run_dir, settings, args.count)
