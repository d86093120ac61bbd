"""The WebSocket bridge: one stream per model, driven from Trio, and a blocking face for it
on a thread of its own."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import trio

from inferoxy.client._common import Arrays, wait_s_for
from inferoxy.client.errors import InferenceError

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection


CLOSE_WAIT_S = 2.0  # how long a dropped stream waits for the server's close handshake


class TrioWebSocket:
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
        from trio_websocket import ConnectionClosed, ConnectionRejected

        from inferoxy.protocol.websocket import decode_reply, encode_frame
        from shm.datatypes import v2_datatype

        params = dict(parameters or {})
        end = bool(params.pop("sequence_end", False))
        key = (model, version)
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/stream"
        async with self._locks[key]:
            ws = self._streams.get(key)
            if ws is None:
                try:
                    ws = await self._nursery.start(open_ws, self.url + path)
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
                with trio.fail_after(wait_s_for(timeout, self._wait_s)):
                    await ws.send_message(encode_frame(header, arrays))
                    reply, outputs = decode_reply(await ws.get_message())
            except (ConnectionClosed, trio.TooSlowError) as exc:
                self._streams.pop(key, None)
                # A stream that timed out is still open: close it, or its connection (and a
                # stateful model's sequence) stays on the gateway until the client closes.
                with trio.move_on_after(CLOSE_WAIT_S):  # then the socket is closed anyway
                    await ws.aclose()
                raise InferenceError(503, f"the stream closed: {exc}") from None
            if end:
                self._streams.pop(key, None)
                await ws.aclose()
        if "error" in reply:
            raise InferenceError(int(reply.get("code", 500)), str(reply["error"]))
        return {n: a.copy() for n, a in outputs.items()}  # the reply's buffer is not ours

    async def aclose(self) -> None:
        """Close every stream while its reader task still runs (it completes the close
        handshake); a server that does not answer gets its socket closed after a while."""
        streams, self._streams = list(self._streams.values()), {}
        for ws in streams:
            with trio.move_on_after(CLOSE_WAIT_S):
                await ws.aclose()


@asynccontextmanager
async def open_stream(url: str, **options: Any) -> AsyncIterator[WebSocketConnection]:
    """``trio_websocket.open_websocket_url(url, **options)``, less its leak on a refused
    handshake.

    trio-websocket (0.12) raises ``ConnectionRejected`` out of the connection's reader task and
    never closes that connection's TCP socket; the garbage collector finds it open later (an
    unraisable ``ResourceWarning``, in whatever code runs then). Here it is closed before the
    error goes on, found in any exception group the way ``open_websocket`` unwraps them.
    """
    from trio_websocket import open_websocket_url

    try:
        async with open_websocket_url(url, **options) as ws:
            yield ws
    except BaseException as exc:
        await _close_refused(exc)
        raise


async def _close_refused(exc: BaseException) -> None:
    """Close the stream of each refused connection that ``exc`` carries."""
    from trio_websocket import ConnectionRejected, WebSocketConnection

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            await _close_refused(inner)
        return
    if not isinstance(exc, ConnectionRejected):
        return
    # The library gives no handle on a refused connection: it is ``self`` of the reader-task
    # frames the error was raised in (its traceback keeps them). A library that stops leaking
    # makes this a no-op (closing twice is harmless); one that changes shape, too.
    tb = exc.__traceback__
    while tb is not None:
        connection = tb.tb_frame.f_locals.get("self")
        if isinstance(connection, WebSocketConnection):
            stream = getattr(connection, "_stream", None)
            if isinstance(stream, trio.abc.AsyncResource):
                await trio.aclose_forcefully(stream)
            return
        tb = tb.tb_next


async def open_ws(url: str, *,
                  task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    """Hold one connection open inside the client's nursery until it is closed."""
    async with open_stream(url) as ws:
        task_status.started(ws)
        while not ws.closed:
            await trio.sleep(0.05)


class ThreadedTrio:
    """A blocking face for a Trio transport: its own thread runs ``trio.run``."""

    def __init__(self, url: str, wait_s: float) -> None:
        import threading

        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._transport: TrioWebSocket | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, url, wait_s),
                                        daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self, url: str, wait_s: float) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel:
            async with trio.open_nursery() as nursery:
                self._transport = TrioWebSocket(url, nursery, wait_s)
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
        # The streams first, then the nursery: a stream closed once its reader task is
        # cancelled waits for a close handshake that never comes.
        if self._cancel is not None and self._thread.is_alive():
            assert self._transport is not None
            try:
                trio.from_thread.run(self._transport.aclose, trio_token=self._token)
            finally:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(timeout=10)
