"""The Inferoxy Python client: one idiom over REST, gRPC and ZeroMQ.

    import numpy as np
    from inferoxy.client import AsyncClient, Client, InferenceError

    with Client.zmq("tcp://127.0.0.1:7787") as client:   # or Client.http("127.0.0.1:8000"),
        out = client.infer("stub", {"IMAGE": images})    #    Client.grpc("127.0.0.1:8001")
        out["IMAGE"]                                     # one row per input row
        everything = client.infer_many("stub", {"IMAGE": ten_thousand_images})

    async with AsyncClient.zmq("tcp://127.0.0.1:7787") as client:   # Trio
        out = await client.infer("stub", {"IMAGE": images})

Inputs map each model input's name to a numpy array whose first dimension is the batch (the
rows); the answer maps every output's name to an array with one row per input row. ``version``
picks a model version, ``timeout`` (seconds) is the server-side deadline, ``parameters``
reach the model. A failure raises ``InferenceError`` with an HTTP-like ``code`` (400 bad
input, 404 unknown model, 503 overloaded, 504 deadline, 500 the model failed; gRPC status
codes are mapped to these).

REST and gRPC go through ``tritonclient`` (binary tensor data; ``pip install
tritonclient[http,grpc]``); ZeroMQ speaks Arrow batches (``bridges.zmq.wire``). ``infer_many``
splits many rows into requests of ``rows_per_request`` and, on ZeroMQ and in ``AsyncClient``,
keeps ``window`` of them in flight; the gateway further splits each request into its model's
batches. Keep ``window`` at most 16 on ZeroMQ: the gateway queues that many unread replies
per connection. ``AsyncClient`` drives its ZeroMQ socket natively from Trio (one I/O task);
for REST and gRPC it runs the blocking calls in worker threads (one tritonclient per thread,
at most ``threads`` at a time).

Arrays that come back over ZeroMQ from ``infer`` are read-only views of the reply.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import orjson
import trio
import zmq

from bridges.zmq import wire

__all__ = ["AsyncClient", "Client", "InferenceError"]

Arrays = dict[str, np.ndarray]
DEFAULT_WAIT_S = 120.0  # how long a call waits for its answer when it sets no timeout
WAIT_MARGIN_S = 5.0  # beyond a request's own timeout, for the answer to travel

GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNKNOWN": 500,
    "DATA_LOSS": 500, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}


class InferenceError(Exception):
    """The server refused or failed a request; ``code`` is HTTP-like."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


def _host_port(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def _wait_s(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout + WAIT_MARGIN_S


def _timeout_us(timeout: float | None) -> int | None:
    if timeout is None:
        return None
    if timeout <= 0:
        raise ValueError("timeout must be positive (seconds)")
    return max(1, round(timeout * 1e6))


def _row_slices(inputs: Mapping[str, np.ndarray], rows_per_request: int) -> list[slice]:
    if rows_per_request < 1:
        raise ValueError("rows_per_request must be at least 1")
    counts = {np.shape(a)[0] if np.ndim(a) else 0 for a in inputs.values()}
    if len(counts) != 1:
        raise ValueError(f"all inputs must have the same number of rows, got {sorted(counts)}")
    rows = counts.pop()
    if rows == 0:
        raise ValueError("inputs have no rows")
    return [slice(i, min(i + rows_per_request, rows)) for i in range(0, rows, rows_per_request)]


def _concat(parts: list[Arrays]) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class _Transport(Protocol):
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays: ...

    def close(self) -> None: ...


# -- REST and gRPC: tritonclient ------------------------------------------------------------------


class _TritonTransport:
    """``tritonclient.http`` or ``tritonclient.grpc``, binary tensors, every output returned."""

    def __init__(self, protocol: str, url: str, wait_s: float) -> None:
        try:
            if protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
            from tritonclient.utils import InferenceServerException, np_to_triton_dtype
        except ImportError as exc:
            raise ImportError(
                f"Client.{protocol} needs tritonclient: pip install 'tritonclient[{protocol}]'"
            ) from exc
        self.protocol = protocol
        self._module: Any = module
        self._exception = InferenceServerException
        self._dtype = np_to_triton_dtype
        self._wait_s = wait_s
        self._max_rows: dict[tuple[str, str], int | None] = {}
        if protocol == "http":
            self._client: Any = module.InferenceServerClient(
                _host_port(url), connection_timeout=wait_s, network_timeout=wait_s
            )
        else:
            self._client = module.InferenceServerClient(_host_port(url))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        tensors = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = self._module.InferInput(name, list(array.shape), self._dtype(array.dtype))
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        kwargs: dict[str, Any] = {
            "model_version": "" if version is None else str(version),
            "timeout": _timeout_us(timeout),
            "parameters": dict(parameters) if parameters else None,
        }
        if self.protocol == "grpc":
            kwargs["client_timeout"] = _wait_s(timeout, self._wait_s)
        try:
            result = self._client.infer(model, tensors, **kwargs)
        except self._exception as exc:
            raise self._error(exc) from None
        response = result.get_response()
        if self.protocol == "http":
            names = [o["name"] for o in response.get("outputs", [])]
        else:
            names = [o.name for o in response.outputs]
        return {name: result.as_numpy(name) for name in names}

    def max_rows(self, model: str, version: str | None) -> int | None:
        """The model's ``max_batch_size`` (a request's most rows here), None if unbounded."""
        key = (model, version or "")
        if key not in self._max_rows:
            try:
                if self.protocol == "http":
                    config = self._client.get_model_config(model, version or "")
                else:
                    config = self._client.get_model_config(model, version or "",
                                                           as_json=True)["config"]
            except self._exception as exc:
                raise self._error(exc) from None
            rows = int(config.get("max_batch_size") or 0)
            self._max_rows[key] = rows or None
        return self._max_rows[key]

    def _error(self, exc: Any) -> InferenceError:
        status = str(exc.status() or "")
        message = str(exc.message() or exc)
        if status.isdigit():
            return InferenceError(int(status), message)
        name = status.rsplit(".", 1)[-1]  # "StatusCode.NOT_FOUND"
        if name in GRPC_TO_HTTP:
            return InferenceError(GRPC_TO_HTTP[name], message)
        return InferenceError(503, message)  # no status: the server was not reached

    def close(self) -> None:
        self._client.close()


# -- ZeroMQ, blocking ------------------------------------------------------------------------------


def _reply_outputs(header: dict[str, Any], outputs: Arrays | None) -> Arrays:
    if outputs is None:
        code = header.get("code")
        raise InferenceError(code if isinstance(code, int) else 500,
                             str(header.get("message", "request failed")))
    return outputs


class _ZmqTransport:
    """A DEALER socket; replies are matched to requests by id, stale ones skipped."""

    def __init__(self, url: str, wait_s: float) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(url)
        self._ids = itertools.count(1)
        self._wait_s = wait_s

    def _send(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> int:
        rid = next(self._ids)
        header: dict[str, Any] = {"model": model, "id": rid}
        if version is not None:
            header["version"] = str(version)
        if parameters:
            header["parameters"] = dict(parameters)
        us = _timeout_us(timeout)
        if us is not None:
            header["timeout_us"] = us
        self._sock.send_multipart(wire.encode_request(header, inputs), copy=False)
        return rid

    def _receive(self, deadline: float) -> tuple[dict[str, Any], Arrays | None]:
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not self._sock.poll(left_ms, zmq.POLLIN):
            raise InferenceError(504, "no reply from the gateway in time")
        return wire.decode_reply(self._sock.recv_multipart(copy=False))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        rid = self._send(model, inputs, version, timeout, parameters)
        deadline = time.monotonic() + _wait_s(timeout, self._wait_s)
        while True:
            header, outputs = self._receive(deadline)
            if header.get("id") == rid:
                return _reply_outputs(header, outputs)

    def infer_many(self, model: str, inputs: Mapping[str, np.ndarray], slices: list[slice],
                   window: int, version: str | None, timeout: float | None,
                   parameters: Mapping[str, Any] | None) -> Arrays:
        results: list[Arrays | None] = [None] * len(slices)
        pending: dict[int, int] = {}  # request id -> part
        queue = collections.deque(enumerate(slices))
        wait = _wait_s(timeout, self._wait_s)
        while queue or pending:
            while queue and len(pending) < window:
                i, rows = queue.popleft()
                part = {name: a[rows] for name, a in inputs.items()}
                pending[self._send(model, part, version, timeout, parameters)] = i
            header, outputs = self._receive(time.monotonic() + wait)
            i_or_none = pending.pop(header.get("id"), None)  # type: ignore[arg-type]
            if i_or_none is not None:
                results[i_or_none] = _reply_outputs(header, outputs)
        return _concat([r for r in results if r is not None])

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


# -- the blocking client ------------------------------------------------------------------------


class Client:
    """A blocking client; make one with ``Client.http``, ``.grpc``, ``.zmq`` or ``.websocket``."""

    def __init__(self, transport: _Transport) -> None:
        self._transport = transport

    @classmethod
    def http(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """Open Inference Protocol v2 over HTTP; ``url`` is ``host:port``."""
        return cls(_TritonTransport("http", url, wait_s))

    @classmethod
    def grpc(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """Open Inference Protocol v2 over gRPC; ``url`` is ``host:port``."""
        return cls(_TritonTransport("grpc", url, wait_s))

    @classmethod
    def zmq(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """The ZeroMQ bridge (Arrow batches); ``url`` is ``tcp://host:port``."""
        return cls(_ZmqTransport(url, wait_s))

    @classmethod
    def websocket(cls, url: str, *, wait_s: float = DEFAULT_WAIT_S) -> Client:
        """The WebSocket bridge; ``url`` is ``ws://host:port``. One stream per model (for a
        stateful model, one sequence: end it with ``parameters={"sequence_end": True}``)."""
        return cls(_ThreadedTrio(url, wait_s))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *,
              version: str | int | None = None, timeout: float | None = None,
              parameters: Mapping[str, Any] | None = None) -> Arrays:
        """One request: every output of ``model`` for ``inputs``."""
        return self._transport.infer(model, inputs, _version(version), timeout, parameters)

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
        if isinstance(self._transport, _ZmqTransport):
            return self._transport.infer_many(model, inputs,
                                              _row_slices(inputs, rows_per_request), window,
                                              _version(version), timeout, parameters)
        transport = self._transport
        assert isinstance(transport, _TritonTransport)
        limit = transport.max_rows(model, _version(version))
        slices = _row_slices(inputs, min(rows_per_request, limit or rows_per_request))
        return _concat([
            self._transport.infer(model, {n: a[rows] for n, a in inputs.items()},
                                  _version(version), timeout, parameters)
            for rows in slices
        ])

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _version(version: str | int | None) -> str | None:
    return None if version is None else str(version)


# -- WebSocket ---------------------------------------------------------------------------------


class _TrioWebSocket:
    """One stream per (model, version), opened on first use; frames answered in order.

    For a stateful model the stream is one sequence: its first frame starts it, and a call
    with ``parameters={"sequence_end": True}`` ends it (the stream then closes).
    """

    def __init__(self, url: str, nursery: trio.Nursery, wait_s: float) -> None:
        self.url = url.rstrip("/")
        self._nursery = nursery
        self._wait_s = wait_s
        self._streams: dict[tuple[str, str | None], Any] = {}
        self._locks: collections.defaultdict[tuple[str, str | None], trio.Lock] = (
            collections.defaultdict(trio.Lock))

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
                    timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

        from bridges.websocket.frames import decode_reply, encode_frame
        from shm.datatypes import v2_datatype

        params = dict(parameters or {})
        end = bool(params.pop("sequence_end", False))
        key = (model, version)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/stream"
        async with self._locks[key]:
            ws = self._streams.get(key)
            if ws is None:
                try:
                    ws = await self._nursery.start(_open_ws, open_websocket_url, self.url + path)
                except ConnectionRejected as exc:
                    message = orjson.loads(exc.body or b"{}").get("error", "") if exc.body else ""
                    raise InferenceError(exc.status_code or 500, message) from None
                self._streams[key] = ws
            arrays = [np.ascontiguousarray(a) for a in inputs.values()]
            header: dict[str, Any] = {
                "inputs": [{"name": n, "datatype": v2_datatype(a.dtype), "shape": list(a.shape)}
                           for n, a in zip(inputs, arrays, strict=True)],
                "parameters": params,
            }
            if end:
                header["end"] = True
            try:
                with trio.fail_after(_wait_s(timeout, self._wait_s)):
                    await ws.send_message(encode_frame(header, arrays))
                    reply, outputs = decode_reply(await ws.get_message())
            except (ConnectionClosed, trio.TooSlowError) as exc:
                self._streams.pop(key, None)
                raise InferenceError(503, f"the stream closed: {exc}") from None
            if end:
                self._streams.pop(key, None)
                await ws.aclose()
        if "error" in reply:
            raise InferenceError(int(reply.get("code", 500)), str(reply["error"]))
        return {n: a.copy() for n, a in outputs.items()}  # the reply's buffer is not ours

    async def aclose(self) -> None:
        for ws in self._streams.values():
            await ws.aclose()
        self._streams.clear()


async def _open_ws(open_websocket_url: Any, url: str, *,
                   task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """Hold one connection open inside the client's nursery until it is closed."""
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        while not ws.closed:
            await trio.sleep(0.05)


class _ThreadedTrio:
    """A blocking face for a Trio transport: its own thread runs ``trio.run``."""

    def __init__(self, url: str, wait_s: float) -> None:
        import threading

        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._transport: _TrioWebSocket | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, url, wait_s),
                                        daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self, url: str, wait_s: float) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                self._transport = _TrioWebSocket(url, nursery, wait_s)
                self._ready.set()
                try:
                    await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._transport.aclose()

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        assert self._transport is not None
        result: Arrays = trio.from_thread.run(self._transport.infer, model, inputs, version,
                                              timeout, parameters, trio_token=self._token)
        return result

    def close(self) -> None:
        if self._cancel is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(timeout=10)


# -- Trio ---------------------------------------------------------------------------------------


class _AsyncTransport(Protocol):
    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
                    timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays: ...


class _Homed:
    """A blocking transport that lives on one thread of its own: tritonclient's HTTP client
    (gevent) must be used from the thread that made it."""

    def __init__(self, factory: Callable[[], _TritonTransport]) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "inferoxy-client")
        self.transport = self.executor.submit(factory)  # made on its home thread

    def close(self) -> None:
        def close_it() -> None:
            if self.transport.done() and self.transport.exception() is None:
                self.transport.result().close()

        self.executor.submit(close_it)
        self.executor.shutdown(wait=True)


class _Threaded:
    """Blocking transports on threads of their own, at most ``threads`` calls at a time."""

    def __init__(self, factory: Callable[[], _TritonTransport], threads: int) -> None:
        self._factory = factory
        self._limiter = trio.CapacityLimiter(threads)
        self._idle: list[_Homed] = []
        self._all: list[_Homed] = []

    async def _call(self, method: str, *args: Any) -> Any:
        async with self._limiter:
            if self._idle:
                homed = self._idle.pop()
            else:
                homed = _Homed(self._factory)
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


class _Waiter:
    __slots__ = ("done", "frames")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.frames: list[zmq.Frame] = []


class _TrioZmq:
    """A DEALER socket owned by one Trio task (``run``); callers meet it through the outbox."""

    def __init__(self, url: str, wait_s: float) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(url)
        self._ids = itertools.count(1)
        self._wait_s = wait_s
        self._outbox: collections.deque[list[Any]] = collections.deque()
        self._waiters: dict[int, _Waiter] = {}
        self._idle: trio.CancelScope | None = None

    async def run(self) -> None:
        sock = self._sock
        fd = int(sock.getsockopt(zmq.FD))
        while True:
            busy = False
            while self._outbox:
                try:
                    sock.send_multipart(self._outbox[0], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._outbox.popleft()
                busy = True
            for _ in range(64):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._deliver(frames)
                busy = True
            if busy:
                await trio.lowlevel.checkpoint()
                continue
            events = int(sock.getsockopt(zmq.EVENTS))
            if events & zmq.POLLIN or (self._outbox and events & zmq.POLLOUT):
                continue
            with trio.CancelScope() as self._idle:
                await trio.lowlevel.wait_readable(fd)
            self._idle = None

    def _deliver(self, frames: list[zmq.Frame]) -> None:
        try:
            rid = orjson.loads(frames[0].bytes).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        waiter = self._waiters.pop(rid, None) if isinstance(rid, int) else None
        if waiter is not None:
            waiter.frames = frames
            waiter.done.set()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
                    timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        rid = next(self._ids)
        header: dict[str, Any] = {"model": model, "id": rid}
        if version is not None:
            header["version"] = version
        if parameters:
            header["parameters"] = dict(parameters)
        us = _timeout_us(timeout)
        if us is not None:
            header["timeout_us"] = us
        waiter = _Waiter()
        self._waiters[rid] = waiter
        self._outbox.append(wire.encode_request(header, inputs))
        if self._idle is not None:
            self._idle.cancel()
        try:
            with trio.move_on_after(_wait_s(timeout, self._wait_s)):
                await waiter.done.wait()
        finally:
            self._waiters.pop(rid, None)
        if not waiter.done.is_set():
            raise InferenceError(504, "no reply from the gateway in time")
        return _reply_outputs(*wire.decode_reply(waiter.frames))

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


class AsyncClient:
    """The Trio client. Open one with ``async with AsyncClient.zmq(url) as client:`` (or
    ``.http`` / ``.grpc``); the ZeroMQ socket's I/O task lives inside that block."""

    def __init__(self, transport: _AsyncTransport) -> None:
        self._transport = transport

    @classmethod
    @asynccontextmanager
    async def _threaded(cls, protocol: str, url: str, wait_s: float,
                        threads: int) -> AsyncIterator[AsyncClient]:
        threaded = _Threaded(lambda: _TritonTransport(protocol, url, wait_s), threads)
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
        transport = _TrioZmq(url, wait_s)
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
            transport = _TrioWebSocket(url, nursery, wait_s)
            try:
                yield cls(transport)
            finally:
                with trio.CancelScope(shield=True):
                    await transport.aclose()
                nursery.cancel_scope.cancel()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *,
                    version: str | int | None = None, timeout: float | None = None,
                    parameters: Mapping[str, Any] | None = None) -> Arrays:
        return await self._transport.infer(model, inputs, _version(version), timeout, parameters)

    async def infer_many(self, model: str, inputs: Mapping[str, np.ndarray], *,
                         rows_per_request: int = 64, window: int = 8,
                         version: str | int | None = None, timeout: float | None = None,
                         parameters: Mapping[str, Any] | None = None) -> Arrays:
        """Many rows as requests of ``rows_per_request``, ``window`` in flight; row order kept.
        The first failure cancels the rest and is raised."""
        if window < 1:
            raise ValueError("window must be at least 1")
        if isinstance(self._transport, _Threaded):  # REST, gRPC: at most max_batch_size rows
            limit = await self._transport.max_rows(model, _version(version))
            rows_per_request = min(rows_per_request, limit or rows_per_request)
        slices = _row_slices(inputs, rows_per_request)
        limiter = trio.CapacityLimiter(window)
        results: list[Arrays | None] = [None] * len(slices)
        failures: list[InferenceError] = []

        async def part(i: int, rows: slice, nursery: trio.Nursery) -> None:
            async with limiter:
                try:
                    results[i] = await self._transport.infer(
                        model, {n: a[rows] for n, a in inputs.items()}, _version(version),
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
        return _concat([r for r in results if r is not None])

