"""The HTTP reactor's connection phases, over socket pairs, without a gateway.

``Reactor`` serves connections of a ``Connections`` table while they are idle or run a fast
request (the phases are tabled at the top of ``bridges/rest/connections.py``). Here its fast
path is a small recorder of the ``FastPath`` interface — the seam the infer route plugs into —
and the task path a list of what was lent to it, so each change of phase is seen as the client
sees it (what comes back on the socket, when) and in the table.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bridges.rest.connections import Conn, Connections, Gathered, Phase
from bridges.rest.http11 import Connection, HttpRequest, HttpResponse, ProtocolError
from bridges.rest.reactor import First, Reactor

FAST = "/fast"


@dataclass(frozen=True)
class Checked:
    """What ``check`` let through: ``start`` gets it instead of the target."""

    target: Any


@dataclass
class Started:
    body: bytes
    reply: Callable[[HttpResponse], None]
    deadline: float
    target: Any = None
    cancelled: bool = False
    expired: bool = False

    def expire(self) -> None:
        self.expired = True
        self.reply(HttpResponse(504, body=b"too late"))

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Recorder:
    """A fast path that claims ``/fast`` and leaves the answer to the test."""

    timeout_s: float = 30.0
    started: list[Started] = field(default_factory=list)
    checks: int = 0

    def target(self, request: HttpRequest) -> Any:
        return request.path if request.path == FAST else None

    def check(self, request: HttpRequest, target: Any) -> Any:
        self.checks += 1
        return Checked(target)

    def start(self, request: HttpRequest, target: Any, body: memoryview,
              reply: Callable[[HttpResponse], None]) -> HttpResponse | Started:
        s = Started(bytes(body), reply, trio.current_time() + self.timeout_s, target)
        self.started.append(s)
        return s

    async def finish(self, request: HttpRequest, checked: Any, body: Any) -> HttpResponse:
        raise AssertionError("the task path is played by the test")


class Bench:
    def __init__(self, fast: Recorder, keepalive_s: float = 30.0) -> None:
        self.fast = fast
        self.table = Connections(max_open=16)
        self.handed: list[tuple[Conn, First]] = []
        self.closed = 0
        self.reactor = Reactor(self.table, fast, keepalive_timeout_s=keepalive_s,
                               send_timeout_s=5.0,
                               to_task=lambda c, first: self.handed.append((c, first)),
                               linger=self.close, end=self.close)
        self.clients: list[socket.socket] = []

    def close(self, c: Conn) -> None:
        if self.table.end(c):
            self.closed += 1
            c.sock.close()

    def connect(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(5)
        c = self.table.open(ours, Connection(), trio.current_time())
        assert c is not None
        self.reactor.watch(c)
        self.clients.append(theirs)
        return theirs

    def phases(self) -> list[Phase]:
        return [c.phase for c in self.table]


def post(body: bytes = b"{}", path: str = FAST, extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
            + extra + b"\r\n" + body)


async def read_response(sock: socket.socket) -> bytes:
    """One whole response (Content-Length framed), read without blocking Trio."""
    data = b""
    with trio.fail_after(5):
        while True:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(rest) >= length:
                    return data
            await trio.lowlevel.wait_readable(sock)
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.001)


def run(test: Callable[[Bench], Awaitable[None]], fast: Recorder | None = None,
        keepalive_s: float = 30.0) -> None:
    async def main() -> None:
        bench = Bench(fast or Recorder(), keepalive_s)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bench.reactor.run)
                await test(bench)
                nursery.cancel_scope.cancel()
        finally:
            for s in bench.clients:
                s.close()
            for c, _ in bench.handed:  # lent to the task path, which the test plays
                bench.close(c)

    trio.run(main)


def test_a_fast_request_runs_then_the_connection_waits_for_the_next() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        client.sendall(post(b'{"n": 1}'))
        await until(lambda: len(b.fast.started) == 1)
        assert b.fast.started[0].body == b'{"n": 1}'
        b.fast.started[0].reply(HttpResponse(200, body=b"one"))
        first = await read_response(client)
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"one")
        client.sendall(post(b'{"n": 2}'))  # the same connection, kept alive
        await until(lambda: len(b.fast.started) == 2)
        b.fast.started[1].reply(HttpResponse(200, body=b"two"))
        assert (await read_response(client)).endswith(b"two")
        assert b.handed == [] and b.closed == 0

    run(test)


def test_pipelined_requests_run_one_at_a_time_in_order() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        client.sendall(post(b"a") + post(b"b"))
        await until(lambda: len(b.fast.started) == 1)
        await trio.sleep(0.02)
        assert len(b.fast.started) == 1  # b waits in the buffer while a runs
        b.fast.started[0].reply(HttpResponse(200, body=b"A"))
        await until(lambda: len(b.fast.started) == 2)
        assert b.fast.started[1].body == b"b"
        b.fast.started[1].reply(HttpResponse(200, body=b"B"))
        both = await read_response(client)
        while both.count(b"HTTP/1.1 200") < 2:
            both += await read_response(client)
        assert both.index(b"A") < both.index(b"B")

    run(test)


def test_a_request_past_its_deadline_is_answered_with_its_expiry() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        client.sendall(post())
        answer = await read_response(client)  # nobody replies: the deadline answers
        assert answer.startswith(b"HTTP/1.1 504") and answer.endswith(b"too late")
        assert b.fast.started[0].expired
        b.fast.started[0].reply(HttpResponse(200, body=b"late"))  # ignored now
        await trio.sleep(0.02)
        client.setblocking(False)
        try:
            assert client.recv(100) == b""  # nothing more was sent
        except BlockingIOError:
            pass

    run(test, Recorder(timeout_s=0.05))


def test_a_client_that_leaves_has_its_request_cancelled() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        client.sendall(post())
        await until(lambda: len(b.fast.started) == 1)
        client.close()
        await until(lambda: b.fast.started[0].cancelled)
        assert b.closed == 1
        b.fast.started[0].reply(HttpResponse(200))  # the late answer goes nowhere

    run(test)


def test_other_routes_and_bad_requests_go_to_the_general_path() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        client.sendall(post(path="/v2/models"))
        await until(lambda: len(b.handed) == 1)
        first = b.handed[0][1]
        assert isinstance(first, HttpRequest) and first.path == "/v2/models"
        bad = b.connect()
        bad.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        await until(lambda: len(b.handed) == 2)
        assert isinstance(b.handed[1][1], ProtocolError)
        assert b.fast.started == []

    run(test)


def test_a_body_that_comes_in_pieces_is_gathered_first() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        whole = post(b"x" * 1000)
        client.sendall(whole[:-600])
        await trio.sleep(0.02)
        assert b.fast.started == []
        client.sendall(whole[-600:])
        await until(lambda: len(b.fast.started) == 1)
        assert b.fast.started[0].body == b"x" * 1000
        # the head was checked once, before the body came, and start took what check gave
        assert b.fast.checks == 1 and b.fast.started[0].target == Checked(FAST)

    run(test)


def test_an_idle_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        with trio.fail_after(5):
            while True:  # the sweep runs every second
                await trio.lowlevel.wait_readable(client)
                if client.recv(10) == b"":
                    break
        assert b.closed == 1

    run(test, keepalive_s=0.05)


def test_shutdown_closes_idle_connections_and_answers_running_ones_with_close() -> None:
    async def test(b: Bench) -> None:
        idle, busy = b.connect(), b.connect()
        busy.sendall(post())
        await until(lambda: len(b.fast.started) == 1)
        b.table.shutdown()  # (the server does both)
        b.reactor.shutdown()
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(idle)
        assert idle.recv(10) == b""  # closed at once
        b.fast.started[0].reply(HttpResponse(200, body=b"bye"))
        answer = await read_response(busy)
        assert b"connection: close" in answer.lower() and answer.endswith(b"bye")

    run(test)


def test_the_table_shows_each_phase_as_the_request_runs() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        assert b.phases() == [Phase.IDLE]
        whole = post(b"y" * 100)
        client.sendall(whole[:-50])
        await until(lambda: b.phases() == [Phase.GATHERING])
        client.sendall(whole[-50:])
        await until(lambda: b.phases() == [Phase.RUNNING])
        b.fast.started[0].reply(HttpResponse(200, body=b"done"))
        assert (await read_response(client)).endswith(b"done")
        assert b.phases() == [Phase.IDLE]
        client.sendall(post(path="/v2/models"))  # another route: lent to the task path
        await until(lambda: b.phases() == [Phase.TASK])
        client.close()
        await trio.sleep(0.02)
        assert b.closed == 0  # the task path's to end, not the reactor's

    run(test)


def test_a_body_too_slow_to_gather_goes_to_the_task_path_with_its_checked_head() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        whole = post(b"z" * 1000)
        client.sendall(whole[:-600])
        await until(lambda: b.phases() == [Phase.GATHERING])
        await until(lambda: len(b.handed) == 1)  # after GATHER_S, at the next sweep
        c, first = b.handed[0]
        assert isinstance(first, Gathered) and first.checked == Checked(FAST)
        assert first.request.path == FAST and c.phase is Phase.TASK
        assert b.fast.checks == 1 and b.fast.started == []
        # the body bytes that did come stay buffered for the task path to read
        assert c.http.read_body(2000) == b"z" * 400

    run(test)


def test_an_answer_after_the_expiry_does_not_answer_the_next_request() -> None:
    async def test(b: Bench) -> None:
        client = b.connect()
        client.sendall(post(b"first"))
        assert (await read_response(client)).startswith(b"HTTP/1.1 504")  # expired
        b.fast.timeout_s = 30.0
        client.sendall(post(b"second"))
        await until(lambda: len(b.fast.started) == 2)
        b.fast.started[0].reply(HttpResponse(200, body=b"stale"))  # the first's, too late
        b.fast.started[1].reply(HttpResponse(200, body=b"fresh"))
        answer = await read_response(client)
        assert answer.endswith(b"fresh") and b"stale" not in answer

    run(test, Recorder(timeout_s=0.05))
