"""``POST /v2/models/{model}[/versions/{version}]/infer`` as a raw ASGI handler.

The hot path, kept thin: no framework objects. Body chunks are copied straight into the
shared-memory slots of the binary inputs (the one copy: socket -> shared memory); JSON
``data`` is converted straight into its slot. Every slot taken here is either handed to the
core with the request or freed before the error answer goes out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import trio

from bridges.rest import codec
from gateway.admission import Admission, output_datatypes
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, PayloadTooLarge, Unavailable

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HEADER_LENGTH = b"inference-header-content-length"
MAX_HEADER_BYTES = 16 << 20  # the JSON part; JSON tensor data counts against max_body_bytes


class BodyTimeout(InvalidArgument):
    """The client did not send its whole body in time: 408 Request Timeout."""

    http_status = 408


class BodyReader:
    """Pulls an ASGI request body in order, with a hard limit on its total size and time.

    The time limit matters because input slots are taken (at their declared size) before
    the bytes arrive: without it a client that sends a header and then stalls would hold
    its slot, up to the whole body limit, for as long as it keeps the connection open.
    """

    def __init__(self, receive: Receive, limit: int, timeout_s: float) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout_s = timeout_s
        self._deadline = trio.current_time() + timeout_s
        self._chunk = memoryview(b"")
        self._done = False
        self.total = 0

    async def _next(self) -> bool:
        while not self._chunk and not self._done:
            message = None
            with trio.move_on_at(self._deadline):
                message = await self._receive()
            if message is None:
                raise BodyTimeout(
                    f"the request body did not arrive within {self._timeout_s:g} s "
                    f"(got {self.total} bytes)"
                )
            if message["type"] == "http.disconnect":
                raise _Disconnected()
            body = message.get("body", b"")
            self.total += len(body)
            if self.total > self._limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {self._limit} bytes")
            self._chunk = memoryview(body)
            self._done = not message.get("more_body", False)
        return bool(self._chunk)

    async def read_exactly(self, n: int, what: str) -> bytes:
        parts: list[memoryview] = []
        need = n
        while need:
            if not await self._next():
                raise InvalidArgument(
                    f"request body ended early: {what} needs {n} bytes, got {n - need}"
                )
            take = self._chunk[:need]
            self._chunk = self._chunk[len(take):]
            parts.append(take)
            need -= len(take)
        return b"".join(parts)

    async def read_into(self, dest: memoryview, what: str) -> None:
        pos = 0
        while pos < len(dest):
            if not await self._next():
                raise InvalidArgument(
                    f"request body ended early: {what} needs {len(dest)} bytes, got {pos}"
                )
            take = self._chunk[: len(dest) - pos]
            dest[pos : pos + len(take)] = take
            self._chunk = self._chunk[len(take):]
            pos += len(take)

    async def read_rest(self) -> bytes:
        parts = [bytes(self._chunk)]
        self._chunk = memoryview(b"")
        while not self._done:
            await self._next()
            parts.append(bytes(self._chunk))
            self._chunk = memoryview(b"")
        return b"".join(parts)

    async def at_end(self) -> bool:
        return not await self._next()


class _Disconnected(Exception):
    pass


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _int_header(scope: Scope, name: bytes) -> int | None:
    raw = _header(scope, name)
    if raw is None:
        return None
    # ASCII digits only: int() would also take "+12", " 12 " and "1_2", which no HTTP
    # length header may be; and past 4300 digits int() raises a ValueError of its own.
    if not raw.isdigit() or len(raw) > 20:
        raise InvalidArgument(
            f"header {name.decode()} must be a non-negative integer of at most 20 digits"
        )
    return int(raw)


async def send_json(send: Send, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    try:
        await send({
            "type": "http.response.start", "status": status, "headers": headers + (extra or []),
        })
        await send({"type": "http.response.body", "body": body})
    except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
        # The client hung up. Typical after an early error answer (sent before the request
        # body was complete): the client reads it and closes, and hypercorn's close of the
        # socket (send_eof, outside its send lock) races the end of our send. The answer
        # has gone out or no one is left to read it; either way there is nothing to do,
        # and letting it escape would log a traceback ("Error in ASGI Framework").
        pass


async def lifespan(receive: Receive, send: Send) -> None:
    """The ASGI lifespan protocol for apps with nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_error(send: Send, exc: InferoxyError) -> None:
    extra = []
    if isinstance(exc, Unavailable):
        extra.append((b"retry-after", str(exc.retry_after_s).encode()))
    await send_json(send, exc.http_status, orjson.dumps({"error": exc.message}), extra)


async def handle_infer(gateway: Gateway, scope: Scope, receive: Receive, send: Send,
                       model: str, version: str | None) -> None:
    admission: Admission | None = None
    try:
        server = gateway.model(model, version)
        gateway.ensure_accepting(server)
        limit = gateway.settings.max_body_bytes
        if _header(scope, b"content-encoding") not in (None, b"identity"):
            raise InvalidArgument("compressed request bodies are not supported")
        length = _int_header(scope, b"content-length")
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
        header_len = _int_header(scope, HEADER_LENGTH)
        body = BodyReader(receive, limit, gateway.settings.request_timeout_s)
        if header_len is None:
            raw_header = await body.read_rest()
        else:
            if header_len == 0 or header_len > MAX_HEADER_BYTES:
                raise InvalidArgument(
                    f"Inference-Header-Content-Length must be in [1, {MAX_HEADER_BYTES}]"
                )
            if length is not None and header_len > length:
                raise InvalidArgument(
                    f"Inference-Header-Content-Length {header_len} is larger than the body "
                    f"({length} bytes)"
                )
            raw_header = await body.read_exactly(
                header_len, "the JSON header (Inference-Header-Content-Length)"
            )
        try:
            parsed = codec.parse_request(raw_header, server.config, gateway.limits)
        except codec.InvalidJson as exc:
            # With binary data, a missing or wrong Inference-Header-Content-Length is what
            # makes the JSON part unparseable: say which bytes were parsed as JSON.
            if header_len is None:
                raise InvalidArgument(
                    f"{exc.message} (there is no Inference-Header-Content-Length header, so "
                    f"the whole body must be JSON)"
                ) from None
            raise InvalidArgument(
                f"the first {header_len} bytes of the body (Inference-Header-Content-Length) "
                f"are not valid JSON: {exc.detail}"
            ) from None
        if header_len is None and parsed.binary_bytes:
            raise InvalidArgument(
                "inputs use binary_data_size but the Inference-Header-Content-Length header "
                "is missing"
            )
        if length is not None and header_len is not None and length != header_len + (
            parsed.binary_bytes
        ):
            raise InvalidArgument(
                f"body is {length} bytes; the header ({header_len}) and binary inputs "
                f"({parsed.binary_bytes}) need {header_len + parsed.binary_bytes}"
            )

        admission = gateway.admission(server)
        for tensor in parsed.inputs:
            if tensor.region is not None:
                r = tensor.region
                admission.region_input(tensor.checked, r.name, r.offset, r.byte_size)
            elif tensor.binary:
                slot = admission.slot(tensor.checked)
                await body.read_into(slot.memory(tensor.nbytes), f"input {tensor.name!r}")
            else:
                slot = admission.slot(tensor.checked)
                codec.write_json_data(tensor, slot.view(tensor.dtype.name, tensor.shape))
        for o in parsed.outputs:
            if o.region is not None:
                spec = server.config.output(o.name)
                assert spec is not None
                admission.region_output(spec, o.region.name, o.region.offset,
                                        o.region.byte_size)
        if header_len is not None and not await body.at_end():
            raise InvalidArgument(
                f"request body is longer than the header and binary inputs "
                f"({header_len} + {parsed.binary_bytes} bytes)"
            )

        result = await admission.run(
            parsed.rows, parsed.parameters, parsed.timeout_us, parsed.request_id
        )
        try:
            payload, json_len = codec.encode_response(
                server.config.name, server.config.version, parsed.request_id, parsed.outputs,
                result.outputs, output_datatypes(server.config), result.in_regions,
            )
        finally:
            result.release()
    except InferoxyError as exc:
        # Free before answering, not after: a client that sees the error may retry at once,
        # and must find the memory its failed request took already given back.
        if admission is not None:
            admission.release()
        gateway.bridge_answers.answered("rest", exc.http_status)
        await send_error(send, exc)
        return
    except _Disconnected:
        return
    finally:
        if admission is not None:
            admission.release()
    gateway.bridge_answers.answered("rest", 200)
    if json_len is None:
        await send_json(send, 200, payload)
    else:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(payload)).encode()),
                (b"inference-header-content-length", str(json_len).encode()),
            ],
        })
        await send({"type": "http.response.body", "body": payload})

