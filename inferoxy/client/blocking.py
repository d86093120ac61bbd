"""``Client``: the blocking client over every transport."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from inferoxy.client._common import (
    DEFAULT_WAIT_S,
    Arrays,
    Transport,
    concat,
    row_slices,
    version_text,
)
from inferoxy.client.triton import TritonTransport
from inferoxy.client.websocket import ThreadedTrio
from inferoxy.client.zmq_socket import ZmqTransport


class Client:
    """A blocking client; make one with ``Client.http``, ``.grpc``, ``.zmq`` or ``.websocket``."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @classmethod
    def http(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """Open Inference Protocol v2 over HTTP; ``url`` is ``host:port``."""
        return cls(TritonTransport("http", url, wait_s))

    @classmethod
    def grpc(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """Open Inference Protocol v2 over gRPC; ``url`` is ``host:port``."""
        return cls(TritonTransport("grpc", url, wait_s))

    @classmethod
    def zmq(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """The ZeroMQ bridge (Arrow batches); ``url`` is ``tcp://host:port``."""
        return cls(ZmqTransport(url, wait_s))

    @classmethod
    def websocket(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """The WebSocket bridge; ``url`` is ``ws://host:port``. One stream per model (for a
        stateful model, one sequence: end it with ``parameters={"sequence_end": True}``)."""
        return cls(ThreadedTrio(url, wait_s))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *,
              version: str | int | None = None, timeout: float | None = None,
              parameters: Mapping[str, Any] | None = None) -> Arrays:
        """One request: every output of ``model`` for ``inputs``."""
        return self._transport.infer(model, inputs, version_text(version), timeout, parameters)

    def infer_many(self, model: str, inputs: Mapping[str, np.ndarray], *,
                   rows_per_request: int = 64, window: int = 8,
                   version: str | int | None = None, timeout: float | None = None,
                   parameters: Mapping[str, Any] | None = None) -> Arrays:
        """Many rows as requests of ``rows_per_request`` rows; outputs in row order.

        On ZeroMQ ``window`` requests are in flight at once; over REST and gRPC they run one
        after the other (use ``AsyncClient`` for concurrency there). ``timeout`` applies to
        each request.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        if isinstance(self._transport, ZmqTransport):
            return self._transport.infer_many(model, inputs,
                                              row_slices(inputs, rows_per_request), window,
                                              version_text(version), timeout, parameters)
        transport = self._transport
        assert isinstance(transport, TritonTransport)
        limit = transport.max_rows(model, version_text(version))
        slices = row_slices(inputs, min(rows_per_request, limit or rows_per_request))
        return concat([
            self._transport.infer(model, {n: a[rows] for n, a in inputs.items()},
                                  version_text(version), timeout, parameters)
            for rows in slices
        ])

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
