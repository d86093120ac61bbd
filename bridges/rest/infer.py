"""``POST /v2/models/{model}[/versions/{version}]/infer``: the hot path.

Interface (data-plane processes rely on it; keep it)::

    async def handle_infer(gateway, request, body, model, version) -> HttpResponse

``request`` is the head (``http11.HttpRequest``); ``body`` pulls the body on demand
(``server.RequestBody``: ``read_into(memoryview) -> int`` and ``read(n) -> bytes``, 0 or b""
at its end, ``ClientGone`` if the client leaves). Of the gateway it uses only
``gateway.model(name, version)``, ``.ensure_accepting(server)``, ``.admission(server)``,
``.settings`` (``max_body_bytes``, ``request_timeout_s``), ``.limits`` and
``.bridge_answers`` -- the surface a data-plane process's stand-in for the gateway must offer.

Body bytes go straight into the shared-memory slots of the binary inputs (received into them
once nothing is buffered: the one copy, socket -> shared memory); JSON ``data`` is converted
straight into its slot. Every slot taken here is either handed to the core with the request or
freed before the error answer goes out. A body that stalls longer than the request timeout is
a 408, its slots freed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from bridges.rest import codec
from bridges.rest.http11 import HttpRequest, HttpResponse, ProtocolError, error_response
from bridges.rest.routes import JSON, infer_target, typed_error
from bridges.rest.server import RequestBody
from gateway.admission import Admission, output_datatypes
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, PayloadTooLarge
from gateway.inflight import InFlight
from gateway.model_server import ModelServer
from gateway.request import InferRequest, RequestResult

log = logging.getLogger("inferoxy.rest")

HEADER_LENGTH = b"inference-header-content-length"
MAX_HEADER_BYTES = 16 << 20  # the JSON part; JSON tensor data counts against max_body_bytes


class BodyTimeout(InvalidArgument):
    """The client did not send its whole body in time: 408 Request Timeout."""

    http_status = 408


class BodyReader:
    """Pulls a request body in order, with a hard limit on its total size and time.

    The time limit matters because input slots are taken (at their declared size) before
    the bytes arrive: without it a client that sends a header and then stalls would hold
    its slot, up to the whole body limit, for as long as it keeps the connection open.
    """

    def __init__(self, body: RequestBody, limit: int, timeout_s: float) -> None:
        self._body = body
        self._limit = limit
        self._timeout_s = timeout_s
        self._deadline = trio.current_time() + timeout_s
        self.total = 0

    def _timed_out(self) -> BodyTimeout:
        return BodyTimeout(
            f"the request body did not arrive within {self._timeout_s:g} s "
            f"(got {self.total} bytes)"
        )

    def _count(self, n: int) -> None:
        self.total += n
        if self.total > self._limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {self._limit} bytes")

    async def _read(self, max_bytes: int) -> bytes:
        data = self._body.read_buffered(max_bytes)  # no deadline needed for what is here
        if data is None:
            with trio.move_on_at(self._deadline):
                data = await self._body.read(max_bytes)
            if data is None:
                raise self._timed_out()
        self._count(len(data))
        return data

    async def read_exactly(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        await self.read_into(memoryview(buf), what)
        return bytes(buf)

    async def read_into(self, dest: memoryview, what: str) -> None:
        pos = 0
        while pos < len(dest):
            got = None
            with trio.move_on_at(self._deadline):
                got = await self._body.read_into(dest[pos:])
            if got is None:
                raise self._timed_out()
            if not got:
                raise InvalidArgument(
                    f"request body ended early: {what} needs {len(dest)} bytes, got {pos}"
                )
            self._count(got)
            pos += got

    async def read_rest(self) -> bytes:
        parts = []
        while data := await self._read(1 << 20):
            parts.append(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def at_end(self) -> bool:
        if self._body.done:
            return True
        return not await self._read(1)


def _int_header(request: HttpRequest, name: bytes) -> int | None:
    raw = request.header(name)
    if raw is None:
        return None
    # ASCII digits only: int() would also take "+12", " 12 " and "1_2", which no HTTP
    # length header may be; and past 4300 digits int() raises a ValueError of its own.
    if not raw.isdigit() or len(raw) > 20:
        raise InvalidArgument(
            f"header {name.decode()} must be a non-negative integer of at most 20 digits"
        )
    return int(raw)


class Head:
    """What the head alone let through: the model, and the JSON header's length (None: the
    body is JSON). Checked once per request, before any body byte is waited for."""

    __slots__ = ("header_len", "server")

    def __init__(self, server: ModelServer, header_len: int | None) -> None:
        self.server = server
        self.header_len = header_len


def check_head(gateway: Gateway, request: HttpRequest, model: str, version: str | None
               ) -> Head:
    """The model (it exists and accepts requests) and what the head alone can refuse."""
    server = gateway.model(model, version)
    gateway.ensure_accepting(server)
    limit = gateway.settings.max_body_bytes
    if request.header(b"content-encoding") not in (None, b"identity"):
        raise InvalidArgument("compressed request bodies are not supported")
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    header_len = _int_header(request, HEADER_LENGTH)
    if header_len is not None:
        if header_len == 0 or header_len > MAX_HEADER_BYTES:
            raise InvalidArgument(
                f"Inference-Header-Content-Length must be in [1, {MAX_HEADER_BYTES}]"
            )
        if length is not None and header_len > length:
            raise InvalidArgument(
                f"Inference-Header-Content-Length {header_len} is larger than the body "
                f"({length} bytes)"
            )
    return Head(server, header_len)


def _parse_header(gateway: Gateway, server: ModelServer, request: HttpRequest,
                  raw_header: bytes | memoryview, header_len: int | None) -> codec.ParsedRequest:
    """The v2 JSON header, checked against the model and against the body's length."""
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
    length = request.content_length
    if length is not None and header_len is not None and length != header_len + (
        parsed.binary_bytes
    ):
        raise InvalidArgument(
            f"body is {length} bytes; the header ({header_len}) and binary inputs "
            f"({parsed.binary_bytes}) need {header_len + parsed.binary_bytes}"
        )
    return parsed


def _admit(gateway: Gateway, request: HttpRequest, head: Head, raw_header: bytes | memoryview
           ) -> tuple[codec.ParsedRequest, Admission, list[tuple[memoryview, codec.InputTensor]]]:
    """The JSON header parsed and checked, and a home for every tensor (``_place_inputs``):
    what follows the head on both paths. The admission is the caller's once returned."""
    server = head.server
    parsed = _parse_header(gateway, server, request, raw_header, head.header_len)
    admission = gateway.admission(server)
    try:
        return parsed, admission, _place_inputs(server, parsed, admission)
    except BaseException:
        admission.release()
        raise


def _place_inputs(server: ModelServer, parsed: codec.ParsedRequest, admission: Admission
                  ) -> list[tuple[memoryview, codec.InputTensor]]:
    """A home for every input and output: client regions resolved, JSON data written into
    its slot; the slots of the binary inputs, in body order, for the caller to fill."""
    binary = []
    for tensor in parsed.inputs:
        if tensor.region is not None:
            r = tensor.region
            admission.region_input(tensor.checked, r.name, r.offset, r.byte_size)
        elif tensor.binary:
            binary.append((admission.slot(tensor.checked).memory(tensor.nbytes), tensor))
        else:
            slot = admission.slot(tensor.checked)
            if tensor.checked.bytes_limits is not None:  # BYTES: already in its wire form
                slot.memory(tensor.nbytes)[:] = tensor.data
            else:
                codec.write_json_data(tensor, slot.view(tensor.dtype, tensor.shape))
    _region_outputs(server, parsed, admission)
    return binary


def _region_outputs(server: ModelServer, parsed: codec.ParsedRequest,
                    admission: Admission) -> None:
    for o in parsed.outputs:
        if o.region is not None:
            spec = server.config.output(o.name)
            assert spec is not None
            admission.region_output(spec, o.region.name, o.region.offset, o.region.byte_size)


def _answer(gateway: Gateway, server: ModelServer, parsed: codec.ParsedRequest,
            result: RequestResult) -> HttpResponse:
    """The 200 answer; it owns ``result`` from here (released once sent)."""
    try:
        header, blobs = codec.encode_response(
            server.config.name, server.config.version, parsed.request_id, parsed.outputs,
            result.outputs, output_datatypes(server.config), result.in_regions,
            server.config.batched,
        )
    except BaseException:
        result.release()
        raise
    gateway.bridge_answers.answered("rest", 200)
    if not blobs:
        result.release()
        return HttpResponse(200, JSON, header)
    # Binary outputs go out from the worker's shared memory (the server releases them once
    # sent, or once it has copied what the socket did not take at once).
    return HttpResponse(200, (
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(header)).encode()),
    ), header, tail=tuple(blobs), release=result.release)


def _refused(gateway: Gateway, exc: InferoxyError) -> HttpResponse:
    gateway.bridge_answers.answered("rest", exc.http_status)
    return typed_error(exc)


async def handle_infer(gateway: Gateway, request: HttpRequest, request_body: RequestBody,
                       model: str, version: str | None) -> HttpResponse:
    try:
        head = check_head(gateway, request, model, version)
    except InferoxyError as exc:
        return _refused(gateway, exc)
    return await stream_infer(gateway, request, request_body, head)


async def stream_infer(gateway: Gateway, request: HttpRequest, request_body: RequestBody,
                       head: Head) -> HttpResponse:
    """The request after its head was checked: the body read into its slots as it comes,
    then submitted and waited for. A model stopped since ``head`` was checked is refused by
    its server at submit (503, "not serving"), so the check need not be repeated."""
    admission: Admission | None = None
    server, header_len = head.server, head.header_len
    try:
        body = BodyReader(request_body, gateway.settings.max_body_bytes,
                          gateway.settings.request_timeout_s)
        if header_len is None:
            raw_header = await body.read_rest()
        else:
            raw_header = await body.read_exactly(
                header_len, "the JSON header (Inference-Header-Content-Length)"
            )
        parsed, admission, binary = _admit(gateway, request, head, raw_header)
        for memory, tensor in binary:
            await body.read_into(memory, f"input {tensor.name!r}")
        if header_len is not None and not await body.at_end():
            raise InvalidArgument(
                f"request body is longer than the header and binary inputs "
                f"({header_len} + {parsed.binary_bytes} bytes)"
            )

        result = await admission.run(
            parsed.rows, parsed.parameters, parsed.timeout_us, parsed.request_id
        )
    except ProtocolError as exc:  # the body's framing is broken: answered, then closed
        if admission is not None:
            admission.release()
        gateway.bridge_answers.answered("rest", exc.status)
        raise
    except InferoxyError as exc:
        # Free before answering, not after: a client that sees the error may retry at once,
        # and must find the memory its failed request took already given back.
        if admission is not None:
            admission.release()
        return _refused(gateway, exc)
    finally:
        if admission is not None:
            admission.release()  # ClientGone and cancellation too
    return _answer(gateway, server, parsed, result)


# -- the same route without a task: for requests whose body arrived whole --------------------

class FastInfer:
    """``bridges.rest.reactor.FastPath`` for infer calls: the request is checked, its tensors
    written into their slots and submitted at once, and the answer is built by the model
    server's callback (``InferRequest.on_done``) — no task, no wait. Same checks, same
    answers, same one copy (receive buffer -> slot) as ``handle_infer``."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def target(self, request: HttpRequest) -> tuple[str, str | None] | None:
        return infer_target(request)

    def check(self, request: HttpRequest, target: tuple[str, str | None]
              ) -> HttpResponse | Head:
        """Before a body is gathered: the refusal, or the checked head ``start`` then takes
        (so the checks run once)."""
        try:
            return check_head(self._gateway, request, *target)
        except InferoxyError as exc:
            return _refused(self._gateway, exc)

    async def finish(self, request: HttpRequest, checked: Head, body: RequestBody
                     ) -> HttpResponse:
        """A request whose body was too late to gather, on the task path: ``checked`` is
        its head as ``check`` passed it, so the model is neither looked up nor checked again
        (``stream_infer``)."""
        return await stream_infer(self._gateway, request, body, checked)

    def start(self, request: HttpRequest, target: tuple[str, str | None] | Head,
              body: memoryview, reply: Callable[[HttpResponse], None]
              ) -> HttpResponse | PendingInfer:
        gateway = self._gateway
        admission: Admission | None = None
        try:
            head = target if isinstance(target, Head) else check_head(gateway, request, *target)
            header_len = head.header_len
            raw_header = body if header_len is None else body[:header_len]
            parsed, admission, binary = _admit(gateway, request, head, raw_header)
            # The lengths add up (``_parse_header``): binary inputs follow the header in order.
            at = len(body) if header_len is None else header_len
            for memory, tensor in binary:
                memory[:] = body[at:at + tensor.nbytes]
                at += tensor.nbytes
            submitted = admission.submit(
                parsed.rows, parsed.parameters, parsed.timeout_us, parsed.request_id
            )
        except InferoxyError as exc:
            if admission is not None:
                admission.release()
            return _refused(gateway, exc)
        except BaseException:
            if admission is not None:
                admission.release()
            raise
        return PendingInfer(gateway, head.server, parsed, submitted, reply)


class PendingInfer(InFlight):
    """A submitted request whose answer goes to ``reply`` once (result, error or timeout);
    the bookkeeping is ``gateway.inflight.InFlight``'s. A cancelled one is not answered:
    its connection is gone."""

    __slots__ = ("_gateway", "_model", "_parsed", "_reply", "deadline")

    ANSWERS_CANCEL = False

    def __init__(self, gateway: Gateway, server: ModelServer, parsed: codec.ParsedRequest,
                 request: InferRequest, reply: Callable[[HttpResponse], None]) -> None:
        super().__init__(server, request)
        self._gateway = gateway
        self._model = server  # (``server``, typed as the model server the answer needs)
        self._parsed = parsed
        self._reply = reply
        self.deadline = request.deadline

    def deliver(self, result: RequestResult | None, error: InferoxyError | None) -> None:
        gateway = self._gateway
        try:
            if error is not None:
                response = _refused(gateway, error)
            else:
                assert result is not None
                response = _answer(gateway, self._model, self._parsed, result)
        except InferoxyError as exc:
            response = _refused(gateway, exc)
        except Exception:
            log.exception("cannot encode the answer to request %r", self.request.request_id)
            response = error_response(500, "internal error")
        self._reply(response)
