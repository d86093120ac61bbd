"""The WebSocket bridge: one connection is one stream (a sequence, for stateful models).

``ws://host:port/v2/models/{model}[/versions/{v}]/stream[?sequence_id=...]``. Frames and
replies are specified in ``docs/protocols/websocket.md`` (parsed by ``frames``). The reader
task admits each frame in arrival order (synchronously up to the queue, so a sequence keeps
its order) and hands it to the writer through a channel of ``ws_max_inflight`` places: when
that many frames are in flight the reader stops reading, and TCP pushes back on the client.
The writer answers in order. Closing the socket ends the sequence (the worker is told,
reason ``closed``).
"""

from __future__ import annotations

import logging
import re
import uuid
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from trio_websocket import serve_websocket as _serve_websocket

from gateway.admission import Admission, InputChecker, output_datatypes, refuse_unsupported
from gateway.core import Gateway
from gateway.errors import Conflict, InferoxyError, InvalidArgument
from gateway.model_server import ModelServer
from gateway.request import InferRequest
from gateway.stats import BridgeCounters
from inferoxy.protocol.errors import FrameError
from inferoxy.protocol.websocket import Frame, encode_reply, parse_frame

log = logging.getLogger("inferoxy.websocket")

STREAM_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/stream$")
Pending = tuple[str, InferRequest | InferoxyError]


def _admit(gateway: Gateway, server: ModelServer, frame: Frame,
           parameters: dict[str, Any], incarnation: Any) -> InferRequest:
    """Check and queue one parsed frame; raises InferoxyError."""
    frame_id = frame.header.get("id", "")
    params = {**frame.header.get("parameters", {}), **parameters}
    admission: Admission = gateway.admission(server)
    try:
        checker = InputChecker(server.config, gateway.limits)
        pos = 0
        for i, raw in enumerate(frame.header["inputs"]):
            if not isinstance(raw, dict):
                raise InvalidArgument(f"inputs[{i}] must be an object")
            checked = checker.check(f"inputs[{i}]", raw.get("name"), raw.get("datatype"),
                                    raw.get("shape"))
            chunk = frame.payload[pos : pos + checked.nbytes]
            if len(chunk) < checked.nbytes:
                raise InvalidArgument(
                    f"frame ended early: input {checked.spec.name!r} needs {checked.nbytes} "
                    f"bytes, {len(chunk)} left"
                )
            admission.slot(checked).memory(checked.nbytes)[:] = chunk  # the one copy
            pos += checked.nbytes
        if pos != len(frame.payload):
            raise InvalidArgument(
                f"frame is longer than its inputs: {len(frame.payload) - pos} bytes left over"
            )
        rows = checker.finish()
        return admission.submit(rows, params, None, frame_id, incarnation)
    except BaseException:
        admission.release()
        raise


def _error_reply(frame_id: str, exc: InferoxyError) -> bytes:
    return encode_reply({"id": frame_id, "error": exc.message, "code": exc.http_status})


async def _writer(ws: WebSocketConnection, server: ModelServer,
                  pending: trio.MemoryReceiveChannel[Pending], answers: BridgeCounters) -> None:
    """Answers frames in order; keeps draining (and freeing) after the client is gone."""
    datatypes = output_datatypes(server.config)
    closed = False
    async for frame_id, item in pending:
        if isinstance(item, InferoxyError):
            answers.answered("ws", item.http_status)
            reply = _error_reply(frame_id, item)
        else:
            try:
                result = await server.wait(item)
            except InferoxyError as exc:
                answers.answered("ws", exc.http_status)
                reply = _error_reply(frame_id, exc)
            else:
                answers.answered("ws", 200)
                try:
                    outputs = [(n, a) for n, a in result.outputs.items()]
                    skip = 0 if server.config.batched else 1  # the gateway's leading 1
                    reply = encode_reply(
                        {"id": frame_id, "outputs": [
                            {"name": n, "datatype": datatypes[n], "shape": list(a.shape[skip:])}
                            for n, a in outputs]},
                        [a for _, a in outputs],
                    )
                finally:
                    result.release()
        if not closed:
            try:
                await ws.send_message(reply)
            except ConnectionClosed:
                closed = True


async def _stream(gateway: Gateway, max_inflight: int, request: WebSocketRequest) -> None:
    url = urlsplit(request.path)
    match = STREAM_PATH.match(url.path)
    try:
        if match is None:
            raise InvalidArgument(
                "connect to /v2/models/{model}[/versions/{version}]/stream"
            )
        server = gateway.model(match[1], match[2])
        gateway.ensure_accepting(server)
        refuse_unsupported(server.config, "WebSocket")  # before the stream opens
        seq_id: str = parse_qs(url.query).get("sequence_id", [""])[0] or f"ws-{uuid.uuid4().hex}"
        if server.is_open(seq_id):
            raise Conflict(f"sequence {seq_id!r} is already streaming on another connection")
    except InferoxyError as exc:
        await request.reject(exc.http_status, extra_headers=[(b"content-type",
                             b"application/json")], body=orjson.dumps({"error": exc.message}))
        return
    ws = await request.accept()
    stateful = server.sequences is not None
    incarnation: Any = None  # this stream's own sequence, once its first frame is queued
    ended = False
    send, receive = trio.open_memory_channel[Pending](max_inflight)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_writer, ws, server, receive, gateway.bridge_answers)
            async with send:
                while True:
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed:
                        break
                    params: dict[str, Any] = {}
                    if stateful:
                        params = {"sequence_id": seq_id,
                                  "sequence_start": incarnation is None}
                    frame_id = ""  # until the frame's header is read
                    try:
                        try:
                            frame = parse_frame(message,
                                                gateway.settings.max_frame_header_bytes)
                        except FrameError as exc:  # the client's mistake: a 400 reply
                            raise InvalidArgument(exc.message) from None
                        frame_id = frame.header.get("id", "")
                        if stateful:
                            params["sequence_end"] = frame.header.get("end") is True
                        req = _admit(gateway, server, frame, params, incarnation)
                        incarnation = incarnation or req.seq
                        ended = ended or bool(params.get("sequence_end"))
                        await send.send((frame_id, req))
                    except InferoxyError as exc:  # the stream goes on; the reply says why
                        await send.send((frame_id, exc))
    finally:
        if stateful and incarnation is not None and not ended:
            server.close_sequence(incarnation, "closed")


async def serve_websocket(gateway: Gateway, host: str, port: int, shutdown: trio.Event, *,
                          task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
                          ) -> None:
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(partial(
            _serve_websocket, partial(_stream, gateway, gateway.settings.ws_max_inflight),
            host, port, None, handler_nursery=nursery,
            max_message_size=gateway.settings.max_body_bytes, receive_buffer_size=1 << 16,
        ))
        task_status.started([f"ws://{host}:{listener.port}"])
        await shutdown.wait()
        nursery.cancel_scope.cancel()
