"""Blocking transports (tritonclient) called from Trio: each on a thread of its own, at most
``threads`` calls at a time."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import trio

from inferoxy.client._common import Arrays
from inferoxy.client.triton import TritonTransport


class Homed:
    """A blocking transport that lives on one thread of its own: tritonclient's HTTP client
    (gevent) must be used from the thread that made it."""

    def __init__(self, factory: Callable[[], TritonTransport]) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "inferoxy-client")
        self.transport = self.executor.submit(factory)  # made on its home thread

    def close(self) -> None:
        def close_it() -> None:
            if self.transport.done() and self.transport.exception() is None:
                transport = self.transport.result()
                transport.close()
                if transport.protocol == "http":
                    # geventhttpclient gave this thread a gevent hub, whose epoll and eventfd
                    # outlive the thread: the thread is this transport's alone, so is the hub.
                    import gevent

                    gevent.get_hub().destroy(destroy_loop=True)

        self.executor.submit(close_it)
        self.executor.shutdown(wait=True)


class Threaded:
    """Blocking transports on threads of their own, at most ``threads`` calls at a time."""

    def __init__(self, factory: Callable[[], TritonTransport], threads: int) -> None:
        self._factory = factory
        self._limiter = trio.CapacityLimiter(threads)
        self._idle: list[Homed] = []
        self._all: list[Homed] = []

    async def _call(self, method: str, *args: Any) -> Any:
        async with self._limiter:
            if self._idle:
                homed = self._idle.pop()
            else:
                homed = Homed(self._factory)
                self._all.append(homed)
            token = trio.lowlevel.current_trio_token()
            done = trio.Event()

            def call() -> Any:
                return getattr(homed.transport.result(), method)(*args)

            def finished(_: concurrent.futures.Future[Any]) -> None:
                try:
                    token.run_sync_soon(done.set)
                except trio.RunFinishedError:
                    pass

            future = homed.executor.submit(call)
            future.add_done_callback(finished)
            try:
                await done.wait()
            except BaseException:  # cancelled: the call runs on; its thread is busy till then
                future.add_done_callback(lambda _: self._idle.append(homed))
                raise
            self._idle.append(homed)
            return future.result()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
                    timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        result: Arrays = await self._call("infer", model, inputs, version, timeout, parameters)
        return result

    async def max_rows(self, model: str, version: str | None) -> int | None:
        rows: int | None = await self._call("max_rows", model, version)
        return rows

    def close(self) -> None:
        for homed in self._all:
            homed.close()
        self._all.clear()
        self._idle.clear()
