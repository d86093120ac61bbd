"""A thin HTTP/1.1 server on Trio: the socket I/O around ``bridges.rest.http11``.

Every connection is a record of one table (``bridges.rest.connections``: its phases, and which
path serves its next request) from accept to ``HttpServer._end``. Two paths borrow it: the
reactor (``bridges.rest.reactor``) while it is idle or runs a small fast request, and the task
path here, a task of the server's nursery that reads a request head, calls the handler, writes
its answer, and goes round again (keep-alive), so pipelined requests are answered in order,
until it gives the idle connection back to the reactor. Everything it holds is bounded: the
receive buffer (one ``recv`` plus one head), the time a head may take (``header_timeout_s`` ->
408 and close), the time an idle keep-alive connection is kept (``keepalive_timeout_s``), the
time an answer may take to be sent (``send_timeout_s``). Body bytes are pulled by the handler
through ``RequestBody``: once nothing is buffered they are received straight into the handler's
memory (a shared-memory slot), the one copy. A client that closes mid-request raises
``ClientGone`` in the handler, which frees what it took; nothing is answered.

Shutdown (``shutdown`` set): the listeners close, idle connections close, and requests in
flight are answered (with ``Connection: close``) before their connections close; ``serve``
returns when the last connection is gone.

After an answer that closes the connection, the socket is shut for writing and what the
client still sends is read and dropped for a moment (``LINGER_S``): closing a socket with
unread bytes makes the kernel send a reset, which can destroy the answer before the client
reads it (an early 413 while the client is still sending its body, say).

The sockets are plain non-blocking stdlib sockets driven with ``trio.lowlevel.wait_readable``
and ``wait_writable``, not ``trio.socket``: a ``trio.socket`` call that succeeds at once still
yields to the scheduler, and that twice per request showed in profiles. Here a request costs
one wait (for its first bytes), which is also its checkpoint; a head found already buffered
(pipelining) checkpoints explicitly, so a burst of pipelined requests cannot starve others.
"""

from __future__ import annotations

import errno
import logging
import socket as stdsocket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from bridges.rest.connections import Conn, Connections, Event, Gathered, give_back, move
from bridges.rest.http11 import (
    CONTINUE,
    Connection,
    HttpRequest,
    HttpResponse,
    Limits,
    ProtocolError,
    State,
    error_response,
)
from bridges.rest.reactor import RECV_BYTES, FastPath, First, Reactor
from bridges.rest.send import send_all, send_response

log = logging.getLogger("inferoxy.http")

Socket = stdsocket.socket

LINGER_S = 2.0


class ClientGone(Exception):
    """The client closed its connection before its request was whole."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    limits: Limits = field(default_factory=Limits)
    header_timeout_s: float = 10.0  # from a head's first byte to its blank line
    keepalive_timeout_s: float = 75.0  # an idle connection is closed after this
    send_timeout_s: float = 60.0  # a client that does not read its answer is dropped
    max_connections: int = 4096  # one more is answered 503 at once and closed

# What a connection over ``max_connections`` gets, without a task or a buffer of its own.
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
         b"retry-after: 1\r\nconnection: close\r\ncontent-length: 53\r\n\r\n"
         b'{"error": "too many open connections; retry shortly"}')


async def _recv(sock: Socket, n: int) -> bytes:
    while True:
        try:
            return sock.recv(n)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _recv_into(sock: Socket, dest: memoryview) -> int:
    while True:
        try:
            return sock.recv_into(dest)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


class RequestBody:
    """The body of the request being handled, read on demand.

    ``read_into`` fills the caller's memory (0 at the end of the body), ``read`` returns bytes
    (``b""`` at the end); ``read_buffered`` returns what is already buffered without waiting
    (``None`` if nothing is). They raise ``ClientGone`` if the client closes first, and
    ``http11.ProtocolError`` if the body's framing is broken. None has a deadline of its own:
    the handler knows how long its route may wait.
    """

    __slots__ = ("_conn", "_sock")

    def __init__(self, sock: Socket, conn: Connection) -> None:
        self._sock = sock
        self._conn = conn

    @property
    def done(self) -> bool:
        return self._conn.state is not State.BODY

    @property
    def received(self) -> int:
        return self._conn.body_received

    def read_buffered(self, max_bytes: int = RECV_BYTES) -> bytes | None:
        data = self._conn.read_body(max_bytes)
        return data if data or self._conn.state is not State.BODY else None

    async def read_into(self, dest: memoryview) -> int:
        conn = self._conn
        while True:
            n = conn.read_body_into(dest)
            if n or conn.state is not State.BODY:
                return n
            span = conn.direct_span()
            if span:
                await self._continue()
                got = await _recv_into(self._sock, dest[:span] if len(dest) > span else dest)
                if not got:
                    raise ClientGone()
                conn.direct_received(got)
                return got
            await self._fill()

    async def read(self, max_bytes: int = RECV_BYTES) -> bytes:
        conn = self._conn
        while True:
            data = conn.read_body(max_bytes)
            if data or conn.state is not State.BODY:
                return data
            await self._fill()

    async def _continue(self) -> None:
        if self._conn.continue_needed():
            await send_all(self._sock, CONTINUE)

    async def _fill(self) -> None:
        await self._continue()
        data = await _recv(self._sock, RECV_BYTES)
        if not data:
            raise ClientGone()
        self._conn.feed(data)


Handler = Callable[[HttpRequest, RequestBody], Awaitable[HttpResponse]]


class HttpServer:
    """``handler`` answers every request on the task path (a task per connection while it
    runs). With ``fast``, connections wait in a ``Reactor`` between requests and the requests
    ``fast`` claims whose bodies arrive whole are served there, without a task. Either way
    every connection is a record of one table (``connections.Connections``) from accept to
    close; the paths borrow it."""

    def __init__(self, handler: Handler, config: ServerConfig | None = None,
                 fast: FastPath | None = None) -> None:
        self._handler = handler
        self._config = config or ServerConfig()
        self._fast = fast
        self._table = Connections(self._config.max_connections)
        self._reactor: Reactor | None = None
        self._nursery: trio.Nursery | None = None

    async def serve(self, listeners: list[Socket], shutdown: trio.Event, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve until ``shutdown``; reports the listeners' URLs once they accept."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._fast is not None:
                    self._reactor = Reactor(
                        self._table, self._fast,
                        keepalive_timeout_s=self._config.keepalive_timeout_s,
                        send_timeout_s=self._config.send_timeout_s, to_task=self._lend,
                        linger=self._linger_close, end=self._end)
                    nursery.start_soon(self._reactor.run)
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept, listener)
                    task_status.started(bound_urls(listeners))
                    await shutdown.wait()
                    acceptors.cancel_scope.cancel()
                _close(listeners)
                self._table.shutdown()
                if self._reactor is not None:
                    self._reactor.shutdown()
                for c in self._table:
                    if c.idle_scope is not None:
                        c.idle_scope.cancel()
        finally:
            _close(listeners)

    async def _accept(self, listener: Socket) -> None:
        while True:
            await trio.lowlevel.checkpoint()
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection (%s); retrying", exc.strerror)
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            c = self._table.open(sock, Connection(self._config.limits), trio.current_time())
            if c is None:
                _refuse(sock)
                continue
            sock.setblocking(False)
            sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
            if self._reactor is not None:
                self._reactor.watch(c)
            else:
                move(c, Event.TO_TASK)
                self._lend(c, None)

    # -- lending a connection to the task path, and ending one ---------------------------------

    def _lend(self, c: Conn, first: First) -> None:
        """The task path serves ``c`` (TASK) from ``first`` on."""
        assert self._nursery is not None
        self._nursery.start_soon(self._connection, c, first)

    def _linger_close(self, c: Conn) -> None:
        """End ``c`` (LINGERING) after an answer that closed it, without losing the answer."""
        assert self._nursery is not None
        self._nursery.start_soon(self._linger_then_end, c)

    async def _linger_then_end(self, c: Conn) -> None:
        try:
            await _linger(c.sock)
        finally:
            self._end(c)

    def _end(self, c: Conn) -> None:
        """Every accepted connection ends here, whichever path held it last."""
        if self._table.end(c):
            _close([c.sock])

    # -- the task path: a task per connection while it is lent one -----------------------------

    async def _connection(self, c: Conn, first: First) -> None:
        """Serve ``c`` (from its protocol state, ``first`` its parsed request, a late fast
        request or the error to answer) until it closes, or until it is idle and the reactor
        takes it back."""
        sock, conn = c.sock, c.http
        lent = True
        try:
            while True:
                try:
                    if isinstance(first, ProtocolError):
                        raise first
                    request = first or await self._read_head(c)
                    first = None
                except ProtocolError as exc:
                    await self._answer(sock, conn, error_response(exc.status, exc.message))
                    move(c, Event.LINGER)
                    await _linger(sock)
                    return
                if request is None:
                    return
                late = request if isinstance(request, Gathered) else None
                head = request.request if isinstance(request, Gathered) else request
                try:
                    if late is not None:  # its head checked by the fast path already
                        assert self._fast is not None
                        response = await self._fast.finish(head, late.checked,
                                                           RequestBody(sock, conn))
                    else:
                        response = await self._handler(head, RequestBody(sock, conn))
                except ClientGone:
                    return
                except ProtocolError as exc:
                    response = error_response(exc.status, exc.message)
                except Exception:
                    log.exception("error answering %s %s", head.method, head.path)
                    response = error_response(500, "internal error")
                if not await self._answer(sock, conn, response):
                    move(c, Event.LINGER)
                    await _linger(sock)
                    return
                conn.next_request()
                if give_back(self._reactor is not None, self._table.closing, conn.buffered):
                    assert self._reactor is not None
                    move(c, Event.GIVE_BACK)
                    self._reactor.watch(c)
                    lent = False
                    return
        except OSError:
            pass  # the client reset or went away mid-answer: nothing left to say
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            if lent:
                self._end(c)

    async def _read_head(self, c: Conn) -> HttpRequest | None:
        """The next request's head; None when the connection is to close quietly."""
        sock, conn = c.sock, c.http
        head_deadline: float | None = None
        waited = False
        while True:
            request = conn.next_head()
            if request is not None:
                if not waited:
                    await trio.lowlevel.checkpoint()  # pipelined: let the others run
                return request
            waited = True
            if conn.state is State.IDLE:
                if self._table.closing:
                    return None
                scope = trio.CancelScope(
                    deadline=trio.current_time() + self._config.keepalive_timeout_s)
                c.idle_scope = scope
                data = None
                try:
                    with scope:
                        # Wait first: between requests the socket is almost always empty,
                        # and a recv that fails costs a system call and an exception.
                        await trio.lowlevel.wait_readable(sock)
                        data = await _recv(sock, RECV_BYTES)
                finally:
                    c.idle_scope = None
                if data is None:
                    return None
            else:
                if head_deadline is None:
                    head_deadline = trio.current_time() + self._config.header_timeout_s
                data = None
                with trio.move_on_at(head_deadline):
                    data = await _recv(sock, RECV_BYTES)
                if data is None:
                    conn.state = State.ERROR
                    raise ProtocolError(
                        408, f"the request head did not arrive within "
                             f"{self._config.header_timeout_s:g} s")
            if not data:
                return None
            conn.feed(data)

    async def _answer(self, sock: Socket, conn: Connection, response: HttpResponse) -> bool:
        """Send the answer; True when the connection stays open.

        What the socket takes at once goes straight from the answer's buffers (borrowed ones,
        outputs in shared memory, included); the rest is copied, the borrowed buffers are
        given back, and the copy is sent within ``send_timeout_s``. Small answers to a
        reading client never wait, so they need no timer.
        """
        rest, keep = send_response(sock, conn, response)
        if rest:
            with trio.move_on_after(self._config.send_timeout_s) as scope:
                await send_all(sock, rest)
            if scope.cancelled_caught:
                return False
        return keep


async def _linger(sock: Socket) -> None:
    """Shut the socket for writing, then drop what the client still sends, briefly."""
    try:
        sock.shutdown(stdsocket.SHUT_WR)
        with trio.move_on_after(LINGER_S):
            while await _recv(sock, RECV_BYTES):
                pass
    except OSError:
        pass


def _refuse(sock: Socket) -> None:
    """Answer 503 on a connection over the limit, as far as the socket takes it, and close."""
    try:
        sock.setblocking(False)
        sock.send(_BUSY)
        sock.shutdown(stdsocket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _close(socks: list[Socket]) -> None:
    for sock in socks:
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()


async def open_listeners(host: str, port: int, *, reuse_port: bool = False,
                         backlog: int = 1024) -> list[Socket]:
    """Listening sockets for ``host:port`` (every address it resolves to).

    ``reuse_port`` sets SO_REUSEPORT, so several processes can listen on the same port and
    the kernel spreads connections between them.
    """
    infos = await trio.socket.getaddrinfo(host or None, port, type=stdsocket.SOCK_STREAM,
                                          flags=stdsocket.AI_PASSIVE)
    listeners: list[Socket] = []
    seen = set()
    try:
        for family, kind, proto, _, addr in infos:
            if addr in seen:
                continue
            seen.add(addr)
            sock = stdsocket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setblocking(False)
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
            if family == stdsocket.AF_INET6:
                sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
    except BaseException:
        _close(listeners)
        raise
    return listeners


def bound_urls(listeners: list[Socket]) -> list[str]:
    urls = []
    for sock in listeners:
        host, port = sock.getsockname()[:2]
        urls.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return urls
