"""``AsyncClient``: the Trio client over every transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import numpy as np
import trio

from inferoxy.client._common import (
    DEFAULT_WAIT_S,
    Arrays,
    AsyncTransport,
    concat,
    row_slices,
    version_text,
)
from inferoxy.client.errors import InferenceError
from inferoxy.client.threads import Threaded
from inferoxy.client.triton import TritonTransport
from inferoxy.client.websocket import TrioWebSocket
from inferoxy.client.zmq_socket import TrioZmq


class AsyncClient:
    """The Trio client. Open one with ``async with AsyncClient.zmq(url) as client:`` (or
    ``.http`` / ``.grpc``); the ZeroMQ socket's I/O task lives inside that block."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    @classmethod
    @asynccontextmanager
    async def _threaded(cls, protocol: str, url: str, wait_s: float,
                        threads: int) -> AsyncIterator[AsyncClient]:
        threaded = Threaded(lambda: TritonTransport(protocol, url, wait_s), threads)
        try:
            yield cls(threaded)
        finally:
            threaded.close()

    @classmethod
    def http(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S,
             threads: int = 8) -> AbstractAsyncContextManager[AsyncClient]:
        """REST through ``threads`` worker threads (tritonclient is blocking)."""
        return cls._threaded("http", url, wait_s, threads)

    @classmethod
    def grpc(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S,
             threads: int = 8) -> AbstractAsyncContextManager[AsyncClient]:
        """gRPC through ``threads`` worker threads (tritonclient is blocking)."""
        return cls._threaded("grpc", url, wait_s, threads)

    @classmethod
    @asynccontextmanager
    async def zmq(cls, url: str, *,
                  wait_s: float = DEFAULT_WAIT_S) -> AsyncIterator[AsyncClient]:
        transport = TrioZmq(url, wait_s)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.run)
                try:
                    yield cls(transport)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            transport.close()

    @classmethod
    @asynccontextmanager
    async def websocket(cls, url: str, *,
                        wait_s: float = DEFAULT_WAIT_S) -> AsyncIterator[AsyncClient]:
        """The WebSocket bridge (``ws://host:port``); streams live inside this block."""
        async with trio.open_nursery() as nursery:
            transport = TrioWebSocket(url, nursery, wait_s)
            try:
                yield cls(transport)
            finally:
                with trio.CancelScope(shield=True):
                    await transport.aclose()
                nursery.cancel_scope.cancel()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *,
                    version: str | int | None = None, timeout: float | None = None,
                    parameters: Mapping[str, Any] | None = None) -> Arrays:
        return await self._transport.infer(model, inputs, version_text(version), timeout,
                                           parameters)

    async def infer_many(self, model: str, inputs: Mapping[str, np.ndarray], *,
                         rows_per_request: int = 64, window: int = 8,
                         version: str | int | None = None, timeout: float | None = None,
                         parameters: Mapping[str, Any] | None = None) -> Arrays:
        """Many rows as requests of ``rows_per_request``, ``window`` in flight; row order kept.
        The first failure cancels the rest and is raised."""
        if window < 1:
            raise ValueError("window must be at least 1")
        if isinstance(self._transport, Threaded):  # REST, gRPC: at most max_batch_size rows
            limit = await self._transport.max_rows(model, version_text(version))
            rows_per_request = min(rows_per_request, limit or rows_per_request)
        slices = row_slices(inputs, rows_per_request)
        limiter = trio.CapacityLimiter(window)
        results: list[Arrays | None] = [None] * len(slices)
        failures: list[InferenceError] = []

        async def part(i: int, rows: slice, nursery: trio.Nursery) -> None:
            async with limiter:
                try:
                    results[i] = await self._transport.infer(
                        model, {n: a[rows] for n, a in inputs.items()}, version_text(version),
                        timeout, parameters,
                    )
                except InferenceError as exc:
                    failures.append(exc)
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, rows in enumerate(slices):
                nursery.start_soon(part, i, rows, nursery)
        if failures:
            raise failures[0]
        return concat([r for r in results if r is not None])
