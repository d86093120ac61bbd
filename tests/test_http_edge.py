"""HTTP/1.1 edge cases on the data port, over raw sockets against a real gateway.

Pipelining, slow heads (slow-loris), chunked bodies, clients that leave mid-body, the limits
on heads and bodies, HTTP/1.0 and ``Connection: close``, ``Expect: 100-continue``, malformed
request lines, unknown methods and HEAD: what a client sees, byte for byte where it matters.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_MODELS, RunningGateway, start_gateway
from tests.fuzzing import slots_in_use

HCL = "Inference-Header-Content-Length"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Raw:
    """One client connection, spoken by hand."""

    sock: socket.socket
    buf: bytes = field(default=b"")

    @classmethod
    def open(cls, gw: RunningGateway, timeout: float = 15) -> Raw:
        host, port = gw.url.rsplit(":", 1)
        return cls(socket.create_connection((host, int(port)), timeout=timeout))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return chunk

    def head(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"connection closed before a response head: {self.buf!r}"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ")[:2]
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(int(status), headers)

    def response(self, *, head_only: bool = False) -> Response:
        """The next final response (1xx skipped), its body read by Content-Length."""
        r = self.head()
        while 100 <= r.status < 200:
            r = self.head()
        if head_only:
            return r
        length = int(r.headers["content-length"])
        while len(self.buf) < length:
            assert self._more(), "connection closed mid-body"
        r.body, self.buf = self.buf[:length], self.buf[length:]
        return r

    def closed(self) -> bool:
        """True when the server closed the connection (EOF with nothing more sent)."""
        try:
            return self._more() == b"" and self.buf == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(gateway: RunningGateway) -> Iterator[Raw]:
    c = Raw.open(gateway)
    yield c
    c.close()


def image(seed: int, h: int = 2, w: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, h, w, 3), dtype=np.uint8)


def json_infer(x: np.ndarray) -> bytes:
    return orjson.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8",
                                     "shape": list(x.shape), "data": x.ravel().tolist()}]})


def binary_infer(x: np.ndarray) -> tuple[bytes, bytes]:
    header = orjson.dumps({
        "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "IMAGE", "parameters": {"binary_data": True}}],
    })
    return header, x.tobytes()


def post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/{version}", "Host: t", *extra])
            + "\r\n\r\n").encode()


def chunked(*parts: bytes) -> bytes:
    out = b""
    for i, p in enumerate(parts):
        ext = b";note=x" if i % 2 else b""  # chunk extensions are allowed and ignored
        out += f"{len(p):x}".encode() + ext + b"\r\n" + p + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def outputs(r: Response) -> np.ndarray:
    assert r.status == 200, (r.status, r.body[:300])
    if HCL.lower() in r.headers:
        n = int(r.headers[HCL.lower()])
        doc = json.loads(r.body[:n])
        out = doc["outputs"][0]
        return np.frombuffer(r.body[n:], np.uint8).reshape(out["shape"])
    out = json.loads(r.body)["outputs"][0]
    return np.array(out["data"], np.uint8).reshape(out["shape"])


def error(r: Response, status: int, fragment: str = "") -> str:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["content-type"] == "application/json"
    message = json.loads(r.body)["error"]
    assert fragment.lower() in message.lower(), message
    return str(message)


# -- keep-alive and pipelining ---------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order(conn: Raw) -> None:
    xs = [image(i) for i in range(4)]
    header, raw = binary_infer(xs[1])
    conn.send(
        post("/v2/models/stub/infer", json_infer(xs[0]))
        + get("/v2/health/live")
        + post("/v2/models/stub/infer", header + raw, f"{HCL}: {len(header)}")
        + get("/v2/models/nope")
        + post("/v2/models/stub/infer", json_infer(xs[2]))
        + post("/v2/models/stub/infer", json_infer(xs[3]))
    )
    np.testing.assert_array_equal(outputs(conn.response()), xs[0])
    assert conn.response().status == 200
    np.testing.assert_array_equal(outputs(conn.response()), xs[1])
    error(conn.response(), 404, "Request for unknown model: 'nope' is not found")
    np.testing.assert_array_equal(outputs(conn.response()), xs[2])
    np.testing.assert_array_equal(outputs(conn.response()), xs[3])
    # and the connection stays usable
    conn.send(get("/v2/health/ready"))
    assert conn.response().status == 200


def test_requests_split_at_every_byte(conn: Raw) -> None:
    x = image(7)
    request = post("/v2/models/stub/infer", json_infer(x))
    for i in range(len(request)):
        conn.send(request[i:i + 1])
    np.testing.assert_array_equal(outputs(conn.response()), x)


# -- chunked bodies --------------------------------------------------------------------------

def test_chunked_json_and_binary_bodies(conn: Raw) -> None:
    x = image(3, 40, 50)
    body = json_infer(x)
    conn.send(b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n"
              + chunked(body[:10], body[10:11], body[11:]))
    np.testing.assert_array_equal(outputs(conn.response()), x)

    header, raw = binary_infer(x)
    data = header + raw
    parts = [data[:5], data[5:len(header) + 7], data[len(header) + 7:-100], data[-100:]]
    conn.send(f"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\n"
              f"Transfer-Encoding: chunked\r\n{HCL}: {len(header)}\r\n\r\n".encode()
              + chunked(*parts))
    np.testing.assert_array_equal(outputs(conn.response()), x)
    # the connection is still in step: the next request on it works
    conn.send(get("/v2/health/live"))
    assert conn.response().status == 200


def test_broken_chunked_framing_is_400_and_closes(conn: Raw) -> None:
    conn.send(b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\n"
              b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    error(conn.response(), 400, "chunk size")
    assert conn.closed()


# -- a client that leaves mid-body frees its slot ----------------------------------------------

def _eventually(check: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_gone_mid_body_frees_its_slot(gateway: RunningGateway, framing: str) -> None:
    assert _eventually(lambda: slots_in_use(gateway) == 0)
    x = image(5, 300, 400)
    header, raw = binary_infer(x)
    c = Raw.open(gateway)
    if framing == "chunked":
        c.send(f"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\n"
               f"Transfer-Encoding: chunked\r\n{HCL}: {len(header)}\r\n\r\n".encode()
               + chunked(header, raw[:1000])[:-len(b"0\r\nX-Trailer: yes\r\n\r\n")])
    else:
        c.send(post("/v2/models/stub/infer", header + raw, f"{HCL}: {len(header)}")[:-5000])
    # the slot is taken once the JSON header is read
    assert _eventually(lambda: slots_in_use(gateway) == 1)
    c.close()
    assert _eventually(lambda: slots_in_use(gateway) == 0)
    again = Raw.open(gateway)
    again.send(post("/v2/models/stub/infer", header + raw, f"{HCL}: {len(header)}"))
    np.testing.assert_array_equal(outputs(again.response()), x)
    again.close()


# -- requests in flight: the reactor's side ---------------------------------------------------

def _slow_body(**parameters: object) -> bytes:
    doc: dict[str, object] = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                                          "data": list(range(16))}]}
    if parameters:
        doc["parameters"] = parameters
    return orjson.dumps(doc)


def test_client_gone_while_its_request_runs_is_given_up(gateway: RunningGateway) -> None:
    assert _eventually(lambda: slots_in_use(gateway) == 0)
    gone = [Raw.open(gateway) for _ in range(3)]
    for c in gone:
        c.send(post("/v2/models/slow/infer", _slow_body()))
    assert _eventually(lambda: _pending(gateway, "slow") >= 1)
    for c in gone:
        c.close()
    # their inputs are freed (queued ones at once, the running one when the model answers)
    assert _eventually(lambda: slots_in_use(gateway) == 0)
    assert _eventually(lambda: _pending(gateway, "slow") == 0)
    again = Raw.open(gateway)
    again.send(post("/v2/models/slow/infer", _slow_body()))
    r = again.response()
    assert r.status == 200
    np.testing.assert_allclose(json.loads(r.body)["outputs"][0]["data"],
                               np.arange(16) * 2 + 1)
    again.close()


def test_half_closed_client_still_gets_its_answer(gateway: RunningGateway) -> None:
    c = Raw.open(gateway)
    c.send(post("/v2/models/slow/infer", _slow_body()))
    c.sock.shutdown(socket.SHUT_WR)  # "that was all I had to say"
    r = c.response()
    assert r.status == 200
    np.testing.assert_allclose(json.loads(r.body)["outputs"][0]["data"],
                               np.arange(16) * 2 + 1)
    assert c.closed()
    c.close()


def test_request_timeout_is_504_and_the_connection_stays_usable(conn: Raw) -> None:
    conn.send(post("/v2/models/slow/infer", _slow_body(timeout=50_000)))  # 50 ms < 300 ms
    error(conn.response(), 504, "did not answer within")
    conn.send(get("/v2/health/live"))
    assert conn.response().status == 200
    conn.send(post("/v2/models/slow/infer", _slow_body()))
    assert conn.response().status == 200


def test_many_pipelined_small_requests_in_one_packet(conn: Raw) -> None:
    bodies = [json_infer(image(i)) for i in range(200)]
    conn.send(b"".join(post("/v2/models/stub/infer", b) for b in bodies)
              + get("/v2/health/ready"))
    for i in range(200):
        np.testing.assert_array_equal(outputs(conn.response()), image(i))
    assert conn.response().status == 200


@pytest.mark.parametrize(("h", "w", "pause_s"), [(100, 130, 0.05), (100, 130, 1.5),
                                                  (200, 300, 0.05)])
def test_bodies_that_arrive_in_pieces(conn: Raw, h: int, w: int, pause_s: float) -> None:
    # A small body (39 kB) is gathered by the reactor when its pieces come quickly, and
    # passed to the general path mid-way when it stalls; a large one (180 kB) is streamed
    # into its slot by the general path. Every way, the answer is the same.
    x = image(9, h, w)
    header, raw = binary_infer(x)
    message = post("/v2/models/stub/infer", header + raw, f"{HCL}: {len(header)}")
    third = len(message) // 3
    for piece in (message[:third], message[third:2 * third], message[2 * third:]):
        conn.send(piece)
        time.sleep(pause_s)
    np.testing.assert_array_equal(outputs(conn.response()), x)
    conn.send(post("/v2/models/stub/infer", json_infer(image(1))))
    np.testing.assert_array_equal(outputs(conn.response()), image(1))


def test_idle_keep_alive_connections_are_closed_after_the_timeout(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--keepalive-timeout-s", "1")
    try:
        c = Raw.open(gw)
        c.send(post("/v2/models/stub/infer", json_infer(image(1))))
        np.testing.assert_array_equal(outputs(c.response()), image(1))
        c.sock.settimeout(10)
        started = time.monotonic()
        assert c.closed()  # by the server, with nothing sent
        assert 0.5 < time.monotonic() - started < 8
        c.close()
    finally:
        status = gw.stop()
    assert status == 0, gw.log()
    assert "Traceback" not in gw.log(), gw.log()


# -- limits ----------------------------------------------------------------------------------

def test_oversized_head_is_431_and_too_long_request_line_414(gateway: RunningGateway) -> None:
    c = Raw.open(gateway)
    c.send(get("/v2/health/live", "X-Big: " + "a" * (70 << 10)))
    error(c.response(), 431, "head is larger")
    assert c.closed()
    c.close()
    c = Raw.open(gateway)
    c.send(get("/v2/health/live", *(f"X-H{i}: {i}" for i in range(150))))
    error(c.response(), 431, "header fields")
    assert c.closed()
    c.close()
    c = Raw.open(gateway)
    c.send(get("/v2/health/live?" + "q" * (10 << 10)))
    error(c.response(), 414, "request line")
    assert c.closed()
    c.close()


def test_too_large_bodies_are_413(conn: Raw, gateway: RunningGateway) -> None:
    # declared too large: answered at once, before any body byte
    conn.send(b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\n"
              b"Content-Length: 300000000\r\n\r\n")
    error(conn.response(), 413, "exceeds the limit")
    assert conn.closed()
    # a control route takes small bodies only
    c = Raw.open(gateway)
    c.send(post("/v2/repository/index", b" " * (2 << 20)))
    error(c.response(), 413, "exceeds the limit")
    c.close()


# -- HTTP/1.0, Connection: close, Expect: 100-continue -----------------------------------------

def test_http_1_0_closes_unless_asked_to_keep_alive(gateway: RunningGateway) -> None:
    c = Raw.open(gateway)
    c.send(get("/v2/health/live", version="1.0"))
    r = c.response()
    assert r.status == 200 and r.headers["connection"] == "close"
    assert c.closed()
    c.close()
    c = Raw.open(gateway)
    c.send(get("/v2", "Connection: keep-alive", version="1.0"))
    r = c.response()
    assert r.status == 200 and r.headers["connection"] == "keep-alive"
    assert json.loads(r.body)["name"] == "inferoxy"
    c.send(get("/v2/health/live", version="1.0"))
    assert c.response().status == 200
    assert c.closed()
    c.close()


def test_connection_close(conn: Raw) -> None:
    x = image(9)
    conn.send(post("/v2/models/stub/infer", json_infer(x), "Connection: close"))
    r = conn.response()
    assert r.headers["connection"] == "close"
    np.testing.assert_array_equal(outputs(r), x)
    assert conn.closed()


def test_expect_100_continue(conn: Raw, gateway: RunningGateway) -> None:
    x = image(11)
    body = json_infer(x)
    conn.send(f"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\n"
              f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    interim = conn.head()
    assert interim.status == 100
    conn.send(body)
    np.testing.assert_array_equal(outputs(conn.response()), x)
    # refused before the body is wanted: the final answer comes at once, no 100
    c = Raw.open(gateway)
    c.send(f"POST /v2/models/nope/infer HTTP/1.1\r\nHost: t\r\n"
           f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    r = c.head()
    assert r.status == 404
    c.close()


# -- malformed requests, methods, HEAD, / ------------------------------------------------------

@pytest.mark.parametrize("request_line", [
    b"GET\r\n\r\n",
    b"GET /v2 HTTP/1.1 extra\r\n\r\n",
    b"GET /v2 HTTX/1.1\r\n\r\n",
    b"GET /v2 HTTP/1.1\r\nNo-Colon\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain port
])
def test_bad_request_line_is_400(gateway: RunningGateway, request_line: bytes) -> None:
    c = Raw.open(gateway)
    c.send(request_line)
    r = c.response()
    assert r.status in (400, 501), r
    error(r, r.status)
    assert c.closed()
    c.close()


def test_unknown_and_disallowed_methods(gateway: RunningGateway) -> None:
    c = Raw.open(gateway)
    c.send(get("/v2", method="BREW"))
    error(c.response(), 501, "method")
    assert c.closed()
    c.close()
    c = Raw.open(gateway)
    c.send(get("/v2", method="DELETE") + get("/v2/models/stub/infer"))
    r = c.response()
    error(r, 405, "not allowed")
    assert r.headers["allow"] == "GET, HEAD"
    r = c.response()
    error(r, 405)
    assert r.headers["allow"] == "POST"
    c.send(get("/v2/no/such/thing"))
    error(c.response(), 404)
    c.close()


def test_head_answers_like_get_without_a_body(conn: Raw) -> None:
    conn.send(get("/v2/models/stub"))
    full = conn.response()
    conn.send(get("/v2/models/stub", method="HEAD") + get("/v2/health/live"))
    r = conn.response(head_only=True)
    assert r.status == 200
    assert int(r.headers["content-length"]) == len(full.body) > 0
    # no body followed: the next bytes are the next response
    assert conn.response().status == 200


def test_root_redirects_to_the_status_page(conn: Raw, gateway: RunningGateway) -> None:
    conn.send(get("/"))
    r = conn.response()
    assert r.status == 302
    assert r.headers["location"] == gateway.admin_url + "/"


# -- slow heads (slow-loris) -------------------------------------------------------------------

def test_slow_heads_get_408_and_are_closed(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--header-timeout-s", "1")
    try:
        stalled, trickle, idle = Raw.open(gw), Raw.open(gw), Raw.open(gw)
        stalled.send(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n")
        # one byte every 0.2 s: the deadline runs from the first byte, it is not renewed
        started = time.monotonic()
        for b in b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Slow: yes":
            trickle.send(bytes([b]))
            if time.monotonic() - started > 3:
                break
            time.sleep(0.2)
        for c in (stalled, trickle):
            error(c.response(), 408, "did not arrive within 1 s")
            assert c.closed()
            c.close()
        # an idle keep-alive connection (no byte of a next request) is not a slow head
        idle.send(get("/v2/health/live"))
        assert idle.response().status == 200
        time.sleep(1.5)
        idle.send(get("/v2/health/live"))
        assert idle.response().status == 200
        idle.close()
    finally:
        status = gw.stop()
    assert status == 0, gw.log()
    assert "Traceback" not in gw.log(), gw.log()


# -- shutdown ----------------------------------------------------------------------------------

def test_shutdown_answers_in_flight_requests_then_closes(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS)
    try:
        idle, busy = Raw.open(gw), Raw.open(gw)
        idle.send(get("/v2/health/live"))
        assert idle.response().status == 200  # now an idle keep-alive connection
        x = np.arange(16, dtype=np.float32)
        body = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                                         "data": x.tolist()}]})
        busy.send(post("/v2/models/slow/infer", body))  # 300 ms of "GPU"
        # SIGTERM once the request is in the model's hands
        assert _eventually(lambda: _pending(gw, "slow") >= 1)
        gw.process.send_signal(signal.SIGTERM)  # drain
        r = busy.response()
        assert r.status == 200
        np.testing.assert_allclose(json.loads(r.body)["outputs"][0]["data"], x * 2 + 1)
        # then both connections end (the gateway exits; nothing is reset before its answer)
        assert busy.closed()
        assert idle.closed()
        idle.close()
        busy.close()
        assert gw.process.wait(timeout=30) == 0
    finally:
        gw.cleanup()
    assert "Traceback" not in gw.log(), gw.log()


def _pending(gw: RunningGateway, model: str) -> float:
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "nv_inference_pending_request_count":
            return sum(s.value for s in family.samples if s.labels.get("model") == model)
    return 0.0


def test_connections_over_the_limit_are_answered_503(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--max-connections", "2")
    held = [Raw.open(gw), Raw.open(gw)]
    try:
        for c in held:  # both served, and kept open
            c.send(get("/v2/health/live"))
            assert c.response().status == 200
        extra = Raw.open(gw)
        r = extra.response()  # answered at once, before it says anything
        assert r.status == 503 and r.headers["retry-after"] == "1"
        assert b"too many open connections" in r.body
        assert extra.closed()
        extra.close()
        held.pop().close()  # a place frees up: a new connection is served
        assert _eventually(lambda: _live_on_new_connection(gw))
        for c in held:  # the held connection was never disturbed
            c.send(get("/v2/health/live"))
            assert c.response().status == 200
    finally:
        for c in held:
            c.close()
        gw.stop()
        gw.cleanup()


def _live_on_new_connection(gw: RunningGateway) -> bool:
    c = Raw.open(gw)
    try:
        c.send(get("/v2/health/live"))
        return c.response().status == 200
    except (AssertionError, OSError):
        return False
    finally:
        c.close()
