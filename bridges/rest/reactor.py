"""One task for every HTTP connection that is idle or whose request arrived whole.

Why
---
A task per connection costs, per request, two trips through Trio's scheduler (the wait for
the request, the wait for its answer) and two ``epoll_ctl`` calls (Trio registers a socket
for each wait and drops it after). On one core, with wrk at 16 connections sending tiny
POSTs, an empty handler answers several times more requests from one loop over an epoll set
of its own than from a task per connection (``python -m bench.floor PORT thin|reactor``:
figures in docs/decisions/reactor.md). The request itself needs no task either: the model
server calls back when it is answered (``InferRequest.on_done``).

How
---
The server's accept loop hands each new connection to the ``Reactor``. The reactor registers
the socket once, level-triggered, in an epoll set of its own, and its Trio task waits for that
one descriptor (``trio.lowlevel.wait_readable``), then handles every ready connection in one
go: receive, feed ``http11``, and when the head is whole, the ``FastPath`` claims the route
and the whole body is already buffered (the usual case for small requests), start it. The
answer arrives later through ``reply`` and is sent at once with ``sendmsg``; what the socket
does not take is copied and sent when epoll says it is writable.

Everything else goes to the general path, a task of the server (``HttpServer._connection``)
with its timeouts and streaming bodies: a head still incomplete after a read, a body still
on its way (large binary inputs), chunked bodies, routes other than the fast one, protocol
errors. That task gives the connection back once it is idle with nothing buffered.

States of a connection held here::

    WAITING --request whole, fast route--> PENDING --answer--> (SENDING) --> WAITING
       |                                      |
       +--anything else--> general path       +--deadline--> 504, as an answer

Rules: one request at a time per connection (pipelined requests wait in the buffer, whose
growth stops reading at ``PIPELINE_BYTES``); a client that closes while its request runs has
it abandoned (``FastPath`` ``cancel``); an idle connection is closed after
``keepalive_timeout_s``, an answer the client does not read after ``send_timeout_s``;
on shutdown idle connections close at once and pending ones close after their answer
(``Connection: close``).
"""

from __future__ import annotations

import logging
import math
import select
import socket as stdsocket
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import trio

from bridges.rest.http11 import (
    Connection,
    HttpRequest,
    HttpResponse,
    ProtocolError,
    error_response,
)
from bridges.rest.send import send_response
from gateway.deadlines import DeadlineHeap, Entry

log = logging.getLogger("inferoxy.http")

Socket = stdsocket.socket

RECV_BYTES = 64 << 10
# A fast-path body up to this size that did not come whole with its head (a small request
# split across segments) is gathered here; a larger one goes to the general path, which
# receives it straight into shared memory (one copy less). 224x224x3 images (150 KB) at c=16
# gave the same throughput either way (4.0-4.3 k/s, alternating runs).
GATHER_BYTES = 64 << 10
PIPELINE_BYTES = 256 << 10  # buffered while a request runs; reading pauses beyond
SWEEP_S = 1.0  # how often idle and stuck connections are looked at
CLOSING_SWEEP_S = 0.05  # ... while shutting down

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLERR | select.EPOLLHUP


class Pending(Protocol):
    """A request started by the fast path, answered later through its ``reply``."""

    deadline: float  # trio.current_time() by which it must be answered

    def expire(self) -> None:
        """The deadline passed: give the request up; ``reply`` is called with the answer
        (``gateway.inflight.InFlight`` does this bookkeeping for the infer route)."""

    def cancel(self) -> None:
        """The client went away: give the request up; nothing is sent."""


class FastPath(Protocol):
    def target(self, request: HttpRequest) -> Any:
        """Non-None when this path serves ``request`` (what ``start`` is then given)."""

    def check(self, request: HttpRequest, target: Any) -> Any:
        """Before a body is gathered: the answer that refuses the request (an
        ``HttpResponse``), or what ``start`` is then given instead of ``target`` -- what
        was checked here is not checked again."""

    def start(self, request: HttpRequest, target: Any, body: memoryview,
              reply: Callable[[HttpResponse], None]) -> HttpResponse | Pending:
        """Answer now, or start the request; ``reply`` is then called once with its answer,
        unless it is expired or cancelled first. ``body`` is valid for this call only."""


class _Conn:
    __slots__ = ("conn", "entry", "eof", "fd", "gathering", "last", "out", "out_keep",
                 "paused", "pending", "send_deadline", "sock", "watching")

    def __init__(self, sock: Socket, conn: Connection, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.conn = conn
        self.last = now  # when it last did something (for the keep-alive timeout)
        self.pending: Pending | None = None
        self.entry: Entry | None = None  # the pending request's place among the deadlines
        # (request, target, since): a fast request whose body is still arriving
        self.gathering: tuple[HttpRequest, Any, float] | None = None
        self.out: bytes = b""  # what the socket did not take of the answer
        self.out_keep = False
        self.send_deadline = math.inf
        self.eof = False  # the client shut its side: answer what runs, then close
        self.paused = False  # input not watched (pipelined bytes over the limit, or EOF)
        self.watching = _IN


class Reactor:
    """The connections of one ``HttpServer`` while they wait or run a fast request.

    The server owns every connection's end: the reactor never closes a socket itself.
    ``handoff(sock, conn, first)`` gives a connection to the general path (``first``: the
    request whose head was parsed, or the protocol error to answer); ``close_after(sock)``
    ends a connection after an answer that closes it (lingering, as the general path does);
    ``close(sock)`` ends one at once (idle, reset, or its client gone).
    """

    def __init__(self, fast: FastPath, *, keepalive_timeout_s: float, send_timeout_s: float,
                 handoff: Callable[[Socket, Connection, HttpRequest | ProtocolError | None],
                                   None],
                 close_after: Callable[[Socket], None], close: Callable[[Socket], None]
                 ) -> None:
        self._fast = fast
        self._keepalive_s = keepalive_timeout_s
        self._send_timeout_s = send_timeout_s
        self._handoff_to = handoff
        self._close_after = close_after
        self._close_now = close
        self._ep = select.epoll()
        self._conns: dict[int, _Conn] = {}
        self._deadlines: DeadlineHeap[_Conn] = DeadlineHeap()
        self._closing = False
        self._next_sweep = 0.0

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until shutdown has closed every connection held here."""
        ep = self._ep
        try:
            while not (self._closing and not self._conns):
                first = self._deadlines.next_deadline()
                wake = self._next_sweep if first is None else min(first, self._next_sweep)
                with trio.move_on_at(wake):
                    await trio.lowlevel.wait_readable(ep)
                for fd, events in ep.poll(0):
                    c = self._conns.get(fd)
                    if c is not None:
                        self._event(c, events)
                now = trio.current_time()
                for c in self._deadlines.due(now):
                    self._expire(c)
                if now >= self._next_sweep:
                    self._sweep(now)
        finally:
            for c in list(self._conns.values()):
                self._close(c)
            trio.lowlevel.notify_closing(ep)
            ep.close()

    def adopt(self, sock: Socket, conn: Connection) -> None:
        """Hold ``sock`` (non-blocking, connected), idle with nothing buffered."""
        c = _Conn(sock, conn, trio.current_time())
        if self._closing:
            conn.closing = True
        self._conns[c.fd] = c
        self._ep.register(c.fd, _IN)

    def shutdown(self) -> None:
        """Close idle connections now, the others after their answers; ``run`` then ends."""
        self._closing = True
        self._next_sweep = 0.0  # sweep at the next wake-up
        for c in self._conns.values():
            c.conn.closing = True

    # -- events ------------------------------------------------------------------------------

    def _event(self, c: _Conn, events: int) -> None:
        try:
            if events & _OUT and c.out:
                self._flush(c)
            elif events & _IN and not c.paused:
                self._readable(c)
            elif events & _GONE:  # reset, or both sides shut: nobody to answer
                self._close(c)
        except Exception:
            log.exception("HTTP connection failed")
            self._close(c)

    def _readable(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(max(RECV_BYTES, c.conn.body_missing()))
        except BlockingIOError:
            return
        except OSError:
            self._close(c)
            return
        if not data:
            if c.pending is None and not c.out:
                self._close(c)  # a body cut short included: nothing was taken for it yet
            else:  # half-closed: the answer may still be read
                c.eof = True
                self._pause(c)
            return
        c.last = trio.current_time()
        c.conn.feed(data)
        if c.pending is None and not c.out:
            self._advance(c)
        elif c.conn.buffered > PIPELINE_BYTES:
            self._pause(c)

    def _advance(self, c: _Conn) -> None:
        """Serve the requests buffered on an idle connection until one has to wait."""
        conn = c.conn
        while True:
            if c.gathering is not None:
                request, target, _ = c.gathering
                body = conn.take_body()
                if body is None:
                    return  # more to come
                c.gathering = None
            else:
                try:
                    head = conn.next_head()
                except ProtocolError as exc:
                    self._handoff(c, exc)
                    return
                if head is None:
                    if conn.buffered:  # a head in pieces: the general path times it
                        self._handoff(c, None)
                    elif c.paused and not c.eof:
                        self._resume(c)
                    return
                request = head
                target = self._fast.target(request)
                body = conn.take_body() if target is not None else None
                if body is None:
                    if (target is not None and request.content_length is not None
                            and request.content_length <= GATHER_BYTES
                            and request.header(b"expect") is None):
                        checked = self._fast.check(request, target)
                        if not isinstance(checked, HttpResponse):
                            c.gathering = (request, checked, trio.current_time())
                            return
                        if not self._send(c, checked):  # (closes: the body was not read)
                            return
                        continue
                    self._handoff(c, request)
                    return
            try:
                outcome = self._fast.start(request, target, body, partial(self._reply, c))
            except Exception:
                log.exception("error answering %s %s", request.method, request.path)
                outcome = error_response(500, "internal error")
            if isinstance(outcome, HttpResponse):
                if not self._send(c, outcome):
                    return
                continue
            c.pending = outcome
            c.entry = self._deadlines.push(outcome.deadline, c)
            return

    def _reply(self, c: _Conn, response: HttpResponse) -> None:
        """The fast path's answer (called from the model server's callback: never raises)."""
        if c.pending is None or self._conns.get(c.fd) is not c:
            if response.release is not None:  # closed, or expired, meanwhile
                response.release()
            return
        self._answer(c, response)

    def _expire(self, c: _Conn) -> None:
        """``c``'s request reached its deadline unanswered."""
        if c.pending is not None and self._conns.get(c.fd) is c:
            c.entry = None  # (popped)
            c.pending.expire()  # its answer comes through ``_reply``

    def _answer(self, c: _Conn, response: HttpResponse) -> None:
        self._settle(c)
        try:
            if self._send(c, response):
                self._advance(c)
        except Exception:
            log.exception("HTTP connection failed")
            self._close(c)

    def _settle(self, c: _Conn) -> None:
        """``c`` has no request running any more."""
        c.pending = None
        if c.entry is not None:
            self._deadlines.discard(c.entry)
            c.entry = None

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + (CLOSING_SWEEP_S if self._closing else SWEEP_S)
        idle_before = now - self._keepalive_s
        for c in list(self._conns.values()):
            if c.out:
                if now > c.send_deadline:
                    self._close(c)  # the client does not read its answer
            elif c.gathering is not None:
                if c.gathering[2] < now - SWEEP_S:  # a slow body: the general path times it
                    request = c.gathering[0]
                    c.gathering = None
                    self._handoff(c, request)
            elif c.pending is None and (self._closing or c.last < idle_before):
                self._close(c)

    # -- answers -----------------------------------------------------------------------------

    def _send(self, c: _Conn, response: HttpResponse) -> bool:
        """Send ``response``; True when it went out whole and the next request may be read."""
        c.last = trio.current_time()
        try:
            rest, keep = send_response(c.sock, c.conn, response)
        except OSError:
            self._close(c)
            return False
        if rest:
            c.out, c.out_keep = rest, keep
            c.send_deadline = c.last + self._send_timeout_s
            self._watch(c, _OUT)
            return False
        return self._sent(c, keep)

    def _flush(self, c: _Conn) -> None:
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(c)
            return
        c.out = c.out[sent:]
        if c.out:
            return
        c.send_deadline = math.inf
        self._watch(c, 0 if c.paused else _IN)
        if self._sent(c, c.out_keep):
            self._advance(c)

    def _sent(self, c: _Conn, keep: bool) -> bool:
        if not keep:
            self._forget(c)
            self._close_after(c.sock)  # lingers, so the answer is not lost to a reset
            return False
        c.conn.next_request()
        if c.eof:
            self._close(c)
            return False
        return True

    # -- bookkeeping -------------------------------------------------------------------------

    def _handoff(self, c: _Conn, first: HttpRequest | ProtocolError | None) -> None:
        self._forget(c)
        self._handoff_to(c.sock, c.conn, first)

    def _pause(self, c: _Conn) -> None:
        c.paused = True
        self._watch(c, c.watching & ~_IN)

    def _resume(self, c: _Conn) -> None:
        c.paused = False
        self._watch(c, c.watching | _IN)

    def _watch(self, c: _Conn, events: int) -> None:
        if events != c.watching:
            c.watching = events
            self._ep.modify(c.fd, events)

    def _forget(self, c: _Conn) -> None:
        """Stop holding ``c`` (its socket stays open)."""
        if self._conns.get(c.fd) is c:
            del self._conns[c.fd]
            self._ep.unregister(c.fd)

    def _close(self, c: _Conn) -> None:
        if self._conns.get(c.fd) is not c:
            return
        self._forget(c)
        if c.pending is not None:
            pending = c.pending
            self._settle(c)
            pending.cancel()
        self._close_now(c.sock)
