"""The I/O-free HTTP/1.1 connection (``bridges.rest.http11``), without sockets.

Bytes go in split at every possible place; heads, bodies and keep-alive decisions come out.
The socket side is tested against a real gateway in ``tests/test_http_edge.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.rest.http11 import (
    Connection,
    HttpRequest,
    HttpResponse,
    Limits,
    ProtocolError,
    State,
)


def feed_all(conn: Connection, data: bytes, cuts: list[int]) -> list[bytes]:
    """Feed ``data`` in pieces cut at ``cuts``; return each request's path and body."""
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out: list[bytes] = []
    body = bytearray()
    request: HttpRequest | None = None
    for piece in pieces:
        conn.feed(piece)
        while True:
            if request is None:
                request = conn.next_head()
                if request is None:
                    break
                body = bytearray()
            # alternate the two ways of reading a body
            if len(out) % 2:
                chunk = conn.read_body(7)
                n = len(chunk)
                body += chunk
            else:
                dest = bytearray(5)
                n = conn.read_body_into(memoryview(dest))
                body += dest[:n]
            if conn.body_done:
                out.append(request.path.encode() + b" " + bytes(body))
                conn.response(HttpResponse(200))
                conn.next_request()
                request = None
                continue
            if not n:  # nothing more buffered that is body: receive more
                break
    return out


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in sizes:
        part = body[pos:pos + size]
        if not part:
            break
        out += f"{len(part):X};ext=1\r\n".encode() + part + b"\r\n"
        pos += len(part)
    if pos < len(body):
        out += f"{len(body) - pos:x}\r\n".encode() + body[pos:] + b"\r\n"
    return out + b"0\r\nTrailer-Field: x\r\n\r\n"


@settings(max_examples=150, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=60), min_size=1, max_size=4),
    framing=st.lists(st.booleans(), min_size=4, max_size=4),
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    data=st.data(),
)
def test_pipelined_bodies_survive_any_split(bodies: list[bytes], framing: list[bool],
                                            sizes: list[int], data: st.DataObject) -> None:
    wire = b""
    for i, body in enumerate(bodies):
        if framing[i]:
            wire += (f"POST /r{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + chunked(body, sizes))
        else:
            wire += f"POST /r{i} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=8))))
    got = feed_all(Connection(), wire, [c for c in cuts if 0 < c < len(wire)])
    assert got == [f"/r{i} ".encode() + b for i, b in enumerate(bodies)]


def test_direct_span_lets_the_caller_receive_into_its_own_memory() -> None:
    conn = Connection()
    conn.feed(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert conn.next_head() is not None
    dest = bytearray(10)
    assert conn.direct_span() == 0  # bytes are buffered: they come first
    assert conn.read_body_into(memoryview(dest)) == 3
    assert conn.direct_span() == 7
    dest[3:10] = b"defghij"  # what a recv_into would have written
    conn.direct_received(7)
    assert conn.body_done and bytes(dest) == b"abcdefghij"


def test_chunked_direct_span_is_the_current_chunk_only() -> None:
    conn = Connection()
    conn.feed(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n")
    assert conn.next_head() is not None
    assert conn.read_body_into(memoryview(bytearray(8))) == 0
    assert conn.direct_span() == 8
    conn.direct_received(8)
    assert conn.direct_span() == 0 and not conn.body_done
    conn.feed(b"\r\n0\r\n\r\n")
    assert conn.read_body(10) == b"" and conn.body_done


@pytest.mark.parametrize(("head", "keep"), [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive(head: bytes, keep: bool) -> None:
    conn = Connection()
    conn.feed(head)
    assert conn.next_head() is not None
    wire, kept = conn.response(HttpResponse(200, body=b"ok"))
    assert kept is keep
    assert (b"connection: close" in wire) is (not keep)
    assert b"content-length: 2\r\n" in wire


def test_an_answer_before_the_body_closes_unless_the_rest_is_buffered() -> None:
    conn = Connection()
    conn.feed(b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert conn.next_head() is not None
    assert conn.response(HttpResponse(404))[1] is False  # two body bytes never came
    conn = Connection()
    conn.feed(b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET /y HTTP/1.1\r\n\r\n")
    assert conn.next_head() is not None
    assert conn.response(HttpResponse(404))[1] is True  # skipped: the next request is intact
    conn.next_request()
    nxt = conn.next_head()
    assert nxt is not None and nxt.path == "/y"


def test_head_and_expect_continue() -> None:
    conn = Connection()
    conn.feed(b"HEAD /v2 HTTP/1.1\r\n\r\n")
    assert conn.next_head() is not None
    wire, _ = conn.response(HttpResponse(200, body=b"12345"))
    assert b"content-length: 5\r\n" in wire and not conn.sends_body()
    conn = Connection()
    conn.feed(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert conn.next_head() is not None
    assert conn.continue_needed() and not conn.continue_needed()  # once


@pytest.mark.parametrize(("wire", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"BREW / HTTP/1.1\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),  # chunked not last
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n", 400),
])
def test_bad_heads(wire: bytes, status: int) -> None:
    conn = Connection()
    conn.feed(wire)
    with pytest.raises(ProtocolError) as exc:
        conn.next_head()
    assert exc.value.status == status
    assert conn.state is State.ERROR


def test_a_head_that_never_ends_is_refused_once_over_the_limit() -> None:
    conn = Connection(Limits(max_header_bytes=1000))
    conn.feed(b"GET / HTTP/1.1\r\n")
    assert conn.next_head() is None
    for _ in range(200):
        conn.feed(b"X: y\r\n")
        try:
            assert conn.next_head() is None
        except ProtocolError as exc:
            assert exc.status == 431
            return
    raise AssertionError("no 431")


@pytest.mark.parametrize("body", [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabXY0\r\n\r\n",
                                  b"2" * 2000])
def test_broken_chunked_framing(body: bytes) -> None:
    conn = Connection()
    conn.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert conn.next_head() is not None
    with pytest.raises(ProtocolError) as exc:
        conn.read_body(100)
        conn.read_body(100)
    assert exc.value.status == 400
