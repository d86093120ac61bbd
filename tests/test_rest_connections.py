"""The HTTP connection table: its phases and decisions (I/O-free, in microseconds), then the
one behaviour they change that a client sees end to end -- a small infer body that comes
too slowly to gather is finished by the task path with the head the reactor already
checked, and still gets one answer: the right one, or a clear refusal if the model was
unloaded meanwhile.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridges.rest.connections import (
    GATHER_BYTES,
    GATHER_S,
    REACTOR_PHASES,
    TRANSITIONS,
    Conn,
    Connections,
    Event,
    Gathered,
    IllegalTransition,
    Phase,
    Route,
    Sweep,
    give_back,
    move,
    route,
    step,
    sweep,
)
from bridges.rest.http11 import Connection, HttpRequest
from tests.conftest import TEST_MODELS, RunningGateway, start_gateway

# -- the table, I/O-free -----------------------------------------------------------------------


def request(length: int | None = 10, *headers: tuple[bytes, bytes]) -> HttpRequest:
    return HttpRequest(method="POST", path="/v2/models/m/infer", query="",
                       headers=tuple(headers), content_length=length)


@pytest.fixture
def pair() -> Iterator[socket.socket]:
    ours, theirs = socket.socketpair()
    yield ours
    ours.close()
    theirs.close()


def test_every_transition_in_the_table_and_no_other() -> None:
    for phase in Phase:
        for event in Event:
            if (phase, event) in TRANSITIONS:
                assert step(phase, event) is TRANSITIONS[phase, event]
            else:
                with pytest.raises(IllegalTransition, match=event.name):
                    step(phase, event)
    # the ways through that the paths take
    assert step(Phase.IDLE, Event.START) is Phase.RUNNING
    assert step(Phase.RUNNING, Event.ANSWERED) is Phase.IDLE
    assert step(Phase.GATHERING, Event.TO_TASK) is Phase.TASK
    assert step(Phase.TASK, Event.GIVE_BACK) is Phase.IDLE
    assert step(Phase.SENDING, Event.LINGER) is Phase.LINGERING
    # closed is final; a running request is never handed to the task path
    assert all(step(p, Event.CLOSE) is Phase.CLOSED for p in Phase if p is not Phase.CLOSED)
    with pytest.raises(IllegalTransition):
        step(Phase.CLOSED, Event.CLOSE)
    with pytest.raises(IllegalTransition):
        step(Phase.RUNNING, Event.TO_TASK)
    with pytest.raises(IllegalTransition):
        step(Phase.GATHERING, Event.GATHER)


def test_the_docstring_table_lists_every_transition() -> None:
    import bridges.rest.connections as module

    doc = module.__doc__ or ""
    for (phase, event), after in TRANSITIONS.items():
        if event is Event.CLOSE or event is Event.LINGER:
            continue  # listed once for every phase
        assert any(phase.name in line and event.name in line and after.name in line
                   for line in doc.splitlines()), (phase, event, after)


def test_route_decides_the_path_from_the_head() -> None:
    assert route(False, True, request()) is Route.TASK  # not the fast route
    assert route(True, True, request()) is Route.START  # whole: started at once
    assert route(True, False, request(GATHER_BYTES)) is Route.GATHER
    assert route(True, False, request(GATHER_BYTES + 1)) is Route.TASK  # streamed
    assert route(True, False, request(None)) is Route.TASK  # chunked
    assert route(True, False, request(10, (b"expect", b"100-continue"))) is Route.TASK


def test_the_task_path_gives_back_only_an_idle_connection_with_nothing_buffered() -> None:
    assert give_back(reactor=True, closing=False, buffered=0)
    assert not give_back(reactor=True, closing=False, buffered=1)  # pipelined: keep reading
    assert not give_back(reactor=True, closing=True, buffered=0)
    assert not give_back(reactor=False, closing=False, buffered=0)


def test_sweep(pair: socket.socket) -> None:
    c = Conn(pair, Connection(), now=100.0)
    assert sweep(c, 100.0 + 5, keepalive_s=10, closing=False) is Sweep.KEEP
    assert sweep(c, 100.0 + 11, keepalive_s=10, closing=False) is Sweep.CLOSE  # idle too long
    assert sweep(c, 100.0, keepalive_s=10, closing=True) is Sweep.CLOSE  # shutting down
    c.phase = Phase.RUNNING  # a running request is never swept (its deadline answers it)
    assert sweep(c, 1e9, keepalive_s=10, closing=True) is Sweep.KEEP
    c.phase, c.send_deadline = Phase.SENDING, 120.0
    assert sweep(c, 119.0, keepalive_s=10, closing=True) is Sweep.KEEP
    assert sweep(c, 121.0, keepalive_s=10, closing=False) is Sweep.CLOSE  # not read
    c.phase, c.gathering = Phase.GATHERING, Gathered(request(), "checked", since=200.0)
    assert sweep(c, 200.0 + GATHER_S / 2, keepalive_s=0.1, closing=False) is Sweep.KEEP
    assert sweep(c, 200.0 + GATHER_S * 1.5, keepalive_s=10, closing=False) is Sweep.TO_TASK


def test_the_table_holds_each_connection_from_open_to_end() -> None:
    table = Connections(max_open=2)
    socks = [socket.socketpair() for _ in range(3)]
    try:
        a = table.open(socks[0][0], Connection(), 0.0)
        b = table.open(socks[1][0], Connection(), 0.0)
        assert a is not None and b is not None and len(table) == 2
        assert table.open(socks[2][0], Connection(), 0.0) is None  # over the limit
        assert a.phase is Phase.IDLE and a.phase in REACTOR_PHASES
        move(a, Event.TO_TASK)
        assert a.phase is Phase.TASK and a.phase not in REACTOR_PHASES
        table.shutdown()
        assert table.closing and a.http.closing and b.http.closing
        assert table.end(a) and not table.end(a)  # the socket is closed once
        assert a.phase is Phase.CLOSED and list(table) == [b]
        c = table.open(socks[2][0], Connection(), 0.0)
        assert c is not None and c.http.closing  # opened while closing: no keep-alive
    finally:
        for x, y in socks:
            x.close()
            y.close()


# -- end to end: a slow small body ---------------------------------------------------------------


def _send_slowly(sock: socket.socket, message: bytes, first: int, pause_s: float) -> None:
    """The head and ``first`` body bytes, then -- after ``pause_s``, long enough for the
    reactor to give the body up -- the rest in three pieces."""
    head_end = message.index(b"\r\n\r\n") + 4
    sock.sendall(message[:head_end + first])
    time.sleep(pause_s)
    rest = message[head_end + first:]
    third = max(1, len(rest) // 3)
    for i in range(0, len(rest), third):
        sock.sendall(rest[i:i + third])
        time.sleep(0.05)


def _responses(sock: socket.socket, settle_s: float = 0.3
               ) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Every response on ``sock`` until it is quiet for ``settle_s`` (Content-Length framed):
    status, headers (lower-case names) and body."""
    sock.settimeout(settle_s)
    data = b""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if data:
                break
            continue
        if not chunk:
            break
        data += chunk
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, head
        lines = head.split(b"\r\n")
        fields = {k.strip().lower(): v.strip()
                  for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(fields[b"content-length"])
        assert len(data) >= length, (head, len(data))
        out.append((int(lines[0].split()[1]), fields, data[:length]))
        data = data[length:]
    return out


def _rest_answers(gw: RunningGateway) -> Counter[str]:
    """The gateway's count of REST infer answers, by status class."""
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "inferoxy_bridge_responses":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels["bridge"] == "rest":
                    counts[s.labels["status_class"]] += int(s.value)
    return counts


def _infer(x: np.ndarray) -> bytes:
    body = orjson.dumps({"inputs": [{"name": "IMAGE", "datatype": "UINT8",
                                     "shape": list(x.shape), "data": x.ravel().tolist()}]})
    return (b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _binary_infer(x: np.ndarray) -> bytes:
    header = orjson.dumps({
        "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "IMAGE", "parameters": {"binary_data": True}}],
    })
    return (b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: t\r\nContent-Length: "
            + str(len(header) + x.nbytes).encode() + b"\r\nInference-Header-Content-Length: "
            + str(len(header)).encode() + b"\r\n\r\n" + header + x.tobytes())


def _binary_output(body: bytes, header_len: int) -> np.ndarray:
    out = json.loads(body[:header_len])["outputs"][0]
    return np.frombuffer(body[header_len:], np.uint8).reshape(out["shape"])


LATE_S = 2 * GATHER_S + 0.3  # past the gathering limit, whichever sweep notices it


def test_a_slow_small_body_gets_the_right_answer_once(gateway: RunningGateway) -> None:
    x = np.random.default_rng(3).integers(0, 256, (1, 20, 20, 3), dtype=np.uint8)
    before = _rest_answers(gateway)
    host, port = gateway.url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        _send_slowly(sock, _infer(x), first=40, pause_s=LATE_S)
        (status, _, body), = _responses(sock)  # one answer, nothing after it
        assert status == 200, body[:300]
        out = json.loads(body)["outputs"][0]
        np.testing.assert_array_equal(np.array(out["data"], np.uint8).reshape(out["shape"]), x)
        # the connection went back to the reactor: the next request is served as usual
        sock.sendall(_infer(x[:, :2]))
        (status, _, body), = _responses(sock)
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 2, 20, 3]
    after = _rest_answers(gateway)
    assert after - before == Counter({"2xx": 2})


@pytest.mark.parametrize("first", [30, 300], ids=["in-the-json-header", "in-the-tensor"])
def test_a_slow_small_binary_body_gets_the_right_answer_once(gateway: RunningGateway,
                                                             first: int) -> None:
    # The late body is finished by the task path: its JSON header read from what the reactor
    # had buffered and what follows, the tensor received into its slot.
    x = np.random.default_rng(first).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    before = _rest_answers(gateway)
    host, port = gateway.url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        _send_slowly(sock, _binary_infer(x), first=first, pause_s=LATE_S)
        (status, fields, body), = _responses(sock)  # one answer, nothing after it
        assert status == 200, body[:300]
        out = _binary_output(body, int(fields[b"inference-header-content-length"]))
        np.testing.assert_array_equal(out, x)
    assert _rest_answers(gateway) - before == Counter({"2xx": 1})


def test_a_model_unloaded_while_its_body_comes_gets_one_clear_refusal(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS)
    try:
        host, port = gw.url.rsplit(":", 1)
        x = np.zeros((1, 4, 4, 3), np.uint8)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            message = _infer(x)
            head_end = message.index(b"\r\n\r\n") + 4
            sock.sendall(message[:head_end + 20])  # the head passes its checks now
            started = time.monotonic()
            unload = urllib.request.Request(f"{gw.http}/v2/repository/models/stub/unload",
                                            data=b"", method="POST")
            with urllib.request.urlopen(unload, timeout=30) as r:
                assert r.status == 200  # returns once the model's server is stopped
            time.sleep(max(0.0, LATE_S - (time.monotonic() - started)))
            sock.sendall(message[head_end + 20:])
            (status, _, body), = _responses(sock)  # one answer, nothing after it
            assert status == 503, body
            assert "not serving" in json.loads(body)["error"]
            # a new request for it is refused at its head, on the same connection
            sock.sendall(message)
            (status, _, body), = _responses(sock)
            assert status in (400, 404) and "stub" in json.loads(body)["error"], body
        assert _rest_answers(gw) == Counter({"5xx": 1, "4xx": 1})
    finally:
        status = gw.stop()
        gw.cleanup()
    assert status == 0, gw.log()
    assert "Traceback" not in gw.log(), gw.log()
