"""The server side of one HTTP/1.1 connection, I/O-free: bytes in, requests and body bytes out,
response bytes back.

Theory of operation
-------------------
The caller (``bridges.rest.server``, the Trio glue) owns the socket. It hands every byte it
receives to ``feed`` and pulls from this object:

* ``next_head()`` -> a ``HttpRequest`` (no body yet), or ``None`` while the head is incomplete;
* ``read_body_into(view)`` / ``read_body(n)`` -> body bytes already buffered (0 / ``b""`` when
  none is buffered: the caller receives more and feeds it, or, when ``direct_span()`` says
  so, receives straight into its own memory and reports the count with ``direct_received``);
* ``response(...)`` -> the bytes of the answer's head, and whether the connection stays open;
* ``next_request()`` once the answer has gone out.

The head (request line and header fields) is found by its blank line and parsed, whole, by
``httptools`` (llhttp, the C parser Node.js and uvicorn use): method, target, version, header
syntax, Content-Length and Transfer-Encoding rules (a request with both is refused: request
smuggling). The body is framed here, not by the parser, so that its bytes can be received
straight into the caller's memory (a shared-memory slot): the one copy, socket -> slot.
Content-Length bodies are counted; chunked bodies are decoded by a small state machine
(size line, data, CRLF, ..., last chunk, trailer fields, blank line).

Request side states::

    IDLE --first byte--> HEAD --blank line, parsed--> BODY --body complete--> DONE
      ^                                                                        |
      +------------------- next_request() (keep-alive) ------------------------+
    any state --protocol error--> ERROR (the caller answers ``err.status`` and closes)

Rules:

* Requests on one connection are answered one at a time, in order; pipelined requests wait
  in the buffer (never parsed ahead), so the buffer is bounded by what one ``recv`` gives
  plus one head.
* Limits: the request line (``max_request_line``, 414), the whole head (``max_header_bytes``,
  431), the number of header fields (``max_headers``, 431), a chunk-size line (400). Body size
  limits are the caller's (it knows the route).
* Keep-alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with
  ``Connection: keep-alive``. A response sent before its request's body was read whole closes
  the connection (the rest of the body cannot be told from the next request otherwise),
  unless what is left of the body is already buffered, which is then skipped.
* ``Expect: 100-continue`` (HTTP/1.1): ``continue_needed()`` is true until body bytes are
  read or an answer is given; the caller sends ``CONTINUE`` before it waits for body bytes.
* ``HEAD``: the answer's head as for GET (Content-Length included), no body.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus

import httptools
import orjson

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8 << 10  # bytes; 414 beyond
    max_header_bytes: int = 64 << 10  # the whole head; 431 beyond
    max_headers: int = 100  # header fields; 431 beyond
    max_chunk_line: int = 1 << 10  # a chunk-size line with its extensions; 400 beyond


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request: its head, and (for the plain routes) its whole body."""

    method: str
    path: str  # the target's path, still percent-encoded
    query: str  # after "?", still percent-encoded
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-case, in order
    http_version: str = "1.1"
    keep_alive: bool = True
    content_length: int | None = None  # None: chunked, or no body
    chunked: bool = False
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer. ``tail``: buffers sent after ``body`` (views of memory the answer does not
    own, such as outputs in shared memory); ``release`` is called once, when they are no
    longer needed (sent, or copied), whatever happens to the connection."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()  # Content-Length and Connection are added
    body: bytes = b""
    tail: tuple[memoryview, ...] = ()
    release: Callable[[], None] | None = None

    @property
    def length(self) -> int:
        return len(self.body) + sum(len(t) for t in self.tail)


class ProtocolError(Exception):
    """The request cannot be read: answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class State(Enum):
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    DONE = "done"
    ERROR = "error"


class _Chunk(Enum):  # where a chunked body's decoder stands
    SIZE = 0
    DATA = 1
    DATA_END = 2  # the CRLF after a chunk's data
    TRAILER = 3
    END = 4


_STATUS_LINES = {
    int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
_NO_BODY_STATUS = frozenset((204, 304))


class _Date:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._value


_DATE = _Date()


@dataclass(slots=True)
class _Head:
    """What the parser's callbacks collect for one head."""

    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    count: int = 0
    max_headers: int = 100
    complete: bool = False
    keep_alive: bool = False
    parser: httptools.HttpRequestParser | None = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        if self.count > self.max_headers:
            raise ProtocolError(431, f"more than {self.max_headers} header fields")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True
        # llhttp forgets the Connection header's verdict once the message is complete
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()


class Connection:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.state = State.IDLE
        self._buf = b""
        self._pos = 0  # bytes of _buf consumed
        self._scan = 0  # where the search for the head's end resumes
        self.request: HttpRequest | None = None
        self._continue = False
        self._left = 0  # body bytes left: of the whole body, or of the current chunk
        self._chunk = _Chunk.END
        self._trailer_bytes = 0
        self.body_received = 0
        self.closing = False  # the server is shutting down: no keep-alive

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos:] + data
            self._scan -= self._pos
        else:
            self._buf = data
            self._scan = 0
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_head(self) -> HttpRequest | None:
        """The next request's head once it is complete; None while more bytes are needed."""
        assert self.state in (State.IDLE, State.HEAD), self.state
        buf, pos = self._buf, self._pos
        # RFC 9112 2.2: ignore at least one empty line before a request line.
        while buf.startswith(b"\r\n", pos):
            pos += 2
        self._pos = pos
        if pos == len(buf):
            return None
        self.state = State.HEAD
        end = buf.find(b"\r\n\r\n", max(self._scan, pos))
        if end < 0:
            self._scan = max(pos, len(buf) - 3)
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0 and len(buf) - pos > self.limits.max_request_line:
                self._fail(414, "the request line is too long")
            if len(buf) - pos > self.limits.max_header_bytes:
                self._fail(431, f"the request head is larger than "
                                f"{self.limits.max_header_bytes} bytes")
            return None
        end += 4
        if end - pos > self.limits.max_header_bytes:
            self._fail(431, f"the request head is larger than {self.limits.max_header_bytes} "
                            f"bytes")
        if buf.find(b"\r\n", pos) - pos > self.limits.max_request_line:
            self._fail(414, "the request line is too long")
        self._pos = self._scan = end
        return self._parse(memoryview(buf)[pos:end])

    def _parse(self, head_bytes: memoryview) -> HttpRequest:
        collected = _Head(max_headers=self.limits.max_headers)
        parser = collected.parser = httptools.HttpRequestParser(collected)
        try:
            parser.feed_data(head_bytes)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here: the request is answered as a plain one
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, ProtocolError):
                self._fail(cause.status, cause.message)
            self._fail(400, "malformed request head")
        except httptools.HttpParserInvalidMethodError:
            self._fail(501, "unknown request method")
        except httptools.HttpParserInvalidURLError:
            self._fail(400, "malformed request target")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed request head ({_reason(exc)})")
        finally:
            collected.parser = None  # no reference cycle: freed at once
        if not collected.complete:
            self._fail(400, "malformed request head")
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(505, f"HTTP/{version} is not supported; use HTTP/1.1")
        headers = tuple(collected.headers)
        content_length: int | None = None
        chunked = False
        expect = None
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)  # llhttp checked digits and duplicates
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    self._fail(501, "only the chunked transfer coding is supported")
                chunked = True
            elif name == b"expect":
                expect = value.strip().lower()
        if chunked and version == "1.0":
            self._fail(400, "chunked bodies need HTTP/1.1")
        path, query = _split_target(collected.url)
        request = HttpRequest(
            method=method, path=path, query=query, headers=headers, http_version=version,
            keep_alive=collected.keep_alive, content_length=content_length,
            chunked=chunked,
        )
        self.request = request
        self.body_received = 0
        if chunked:
            self.state = State.BODY
            self._chunk = _Chunk.SIZE
            self._left = 0
            self._trailer_bytes = 0
        elif content_length:
            self.state = State.BODY
            self._left = content_length
        else:
            self.state = State.DONE
        self._continue = (self.state is State.BODY and version == "1.1"
                          and expect == b"100-continue")
        return request

    def _fail(self, status: int, message: str) -> None:
        self.state = State.ERROR
        raise ProtocolError(status, message)

    # -- the body ------------------------------------------------------------------------

    @property
    def body_done(self) -> bool:
        return self.state is State.DONE

    def continue_needed(self) -> bool:
        """True once per request, before the first wait for body bytes that the client may
        hold back until it sees ``100 Continue``."""
        if self._continue and self.state is State.BODY:
            self._continue = False
            return True
        return False

    def direct_span(self) -> int:
        """How many body bytes the caller may receive straight into its own memory now (only
        when nothing is buffered: bytes must be consumed in order)."""
        if self.state is not State.BODY or self._pos < len(self._buf):
            return 0
        if self.request is not None and self.request.chunked:
            return self._left if self._chunk is _Chunk.DATA else 0
        return self._left

    def direct_received(self, n: int) -> None:
        assert 0 < n <= self.direct_span()
        self._consumed_data(n)

    def body_missing(self) -> int:
        """Bytes of a Content-Length body not yet buffered (0 when whole, or not framed so)."""
        if self.state is not State.BODY or self.request is None or self.request.chunked:
            return 0
        return max(0, self._left - (len(self._buf) - self._pos))

    def take_body(self) -> memoryview | None:
        """The whole body, consumed, when all of it is buffered (Content-Length framing; no
        body: empty); None otherwise. A view of the receive buffer: no copy."""
        if self.state is State.DONE:
            return memoryview(b"")
        if (self.state is not State.BODY or self.request is None or self.request.chunked
                or len(self._buf) - self._pos < self._left):
            return None
        n = self._left
        view = memoryview(self._buf)[self._pos:self._pos + n]
        self._pos += n
        self._consumed_data(n)
        return view

    def read_body_into(self, dest: memoryview) -> int:
        """Copy buffered body bytes into ``dest``; 0 when none is buffered (or at the end)."""
        done = 0
        while done < len(dest) and self._advance():
            take = min(self._left, len(dest) - done, len(self._buf) - self._pos)
            dest[done:done + take] = memoryview(self._buf)[self._pos:self._pos + take]
            self._pos += take
            done += take
            self._consumed_data(take)
        return done

    def read_body(self, max_bytes: int = 1 << 20) -> bytes:
        """Buffered body bytes (at most ``max_bytes``); ``b""`` when none (or at the end)."""
        if not self._advance():
            return b""
        take = min(self._left, max_bytes, len(self._buf) - self._pos)
        data = self._buf[self._pos:self._pos + take]
        self._pos += take
        self._consumed_data(take)
        return data

    def discard_buffered_body(self) -> None:
        """Skip the body bytes already buffered (an answer that did not read them)."""
        while self.state is State.BODY and self._advance():
            take = min(self._left, len(self._buf) - self._pos)
            self._pos += take
            self._consumed_data(take)

    def _consumed_data(self, n: int) -> None:
        self.body_received += n
        self._left -= n
        self._continue = False
        if self._left == 0:
            if self.request is not None and self.request.chunked:
                self._chunk = _Chunk.DATA_END
            else:
                self.state = State.DONE

    def _advance(self) -> bool:
        """Step the chunked decoder over framing; True when data bytes are buffered."""
        if self.state is not State.BODY:
            return False
        if self.request is None or not self.request.chunked:
            return self._pos < len(self._buf)
        buf = self._buf
        while True:
            if self._chunk is _Chunk.DATA:
                return self._pos < len(buf)
            if self._chunk is _Chunk.DATA_END:
                if len(buf) - self._pos < 2:
                    return False
                if not buf.startswith(b"\r\n", self._pos):
                    self._fail(400, "malformed chunked body: no CRLF after a chunk's data")
                self._pos += 2
                self._chunk = _Chunk.SIZE
                continue
            end = buf.find(b"\r\n", self._pos)
            if self._chunk is _Chunk.SIZE:
                limit = self.limits.max_chunk_line
                if end < 0:
                    if len(buf) - self._pos > limit:
                        self._fail(400, "malformed chunked body: chunk-size line too long")
                    return False
                if end - self._pos > limit:
                    self._fail(400, "malformed chunked body: chunk-size line too long")
                size_text = buf[self._pos:end].split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 15 or not _is_hex(size_text):
                    self._fail(400, "malformed chunked body: bad chunk size")
                self._pos = end + 2
                self._left = int(size_text, 16)
                self._chunk = _Chunk.DATA if self._left else _Chunk.TRAILER
                continue
            # TRAILER: fields we ignore, up to a blank line, bounded like a head.
            limit = self.limits.max_header_bytes
            if end < 0:
                if self._trailer_bytes + len(buf) - self._pos > limit:
                    self._fail(431, "chunked body trailer fields too large")
                return False
            self._trailer_bytes += end + 2 - self._pos
            if self._trailer_bytes > limit:
                self._fail(431, "chunked body trailer fields too large")
            blank = end == self._pos
            self._pos = end + 2
            if blank:
                self._chunk = _Chunk.END
                self.state = State.DONE
                return False

    # -- output --------------------------------------------------------------------------

    def response(self, response: HttpResponse, *, close: bool = False
                 ) -> tuple[bytes, bool]:
        """The head of ``response`` to send (its body follows unless the request was HEAD,
        the caller sends it), and whether the connection stays open after it."""
        request = self.request
        self._continue = False
        if self.state is State.BODY:
            self.discard_buffered_body()
        keep = (request is not None and request.keep_alive and self.state is State.DONE
                and not close and not self.closing)
        parts = [_STATUS_LINES.get(response.status)
                 or f"HTTP/1.1 {response.status} Unknown\r\n".encode(), _DATE.header()]
        for name, value in response.headers:
            parts += (name, b": ", value, b"\r\n")
        if response.status not in _NO_BODY_STATUS:
            parts += (b"content-length: ", str(response.length).encode(), b"\r\n")
        if not keep:
            parts.append(b"connection: close\r\n")
        elif request is not None and request.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not keep:
            self.state = State.ERROR  # nothing more is read from this connection
        return b"".join(parts), keep

    def sends_body(self) -> bool:
        return self.request is None or self.request.method != "HEAD"

    def next_request(self) -> None:
        """The answer went out and the connection stays open: on to the next request."""
        assert self.state is State.DONE, self.state
        self.state = State.IDLE
        self.request = None
        self._scan = self._pos


def error_response(status: int, message: str,
                   headers: tuple[tuple[bytes, bytes], ...] = ()) -> HttpResponse:
    return HttpResponse(status, ((b"content-type", b"application/json"), *headers),
                        orjson.dumps({"error": message}))


def _split_target(url: bytes) -> tuple[str, str]:
    if not url.startswith(b"/"):
        if url == b"*":
            return "*", ""
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError(400, "malformed request target") from None
        path = parsed.path or b"/"
        return path.decode("latin-1"), (parsed.query or b"").decode("latin-1")
    path, _, query = url.partition(b"?")
    return path.decode("latin-1"), query.decode("latin-1")


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _is_hex(text: bytes) -> bool:
    return all(c in _HEX for c in text)


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(":", 1)[-1].strip()[:80] or "parse error"
