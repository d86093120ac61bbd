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
The server's accept loop lends each new connection to the ``Reactor`` (``watch``), which
registers the socket once, level-triggered, in an epoll set of its own, and its Trio task waits
for that one descriptor (``trio.lowlevel.wait_readable``), then handles every ready connection
in one go: receive, feed ``http11``, and when the head is whole, the ``FastPath`` claims the
route and the whole body is already buffered (the usual case for small requests), start it. The
answer arrives later through ``reply`` and is sent at once with ``sendmsg``; what the socket
does not take is copied and sent when epoll says it is writable.

Everything else goes to the task path (``HttpServer._connection``) with its timeouts and
streaming bodies: a head still incomplete after a read, a body still on its way past
``connections.GATHER_BYTES`` or ``GATHER_S``, chunked bodies, routes other than the fast one,
protocol errors. The reactor keeps no connection of its own: it borrows them from the
server's ``connections.Connections`` table, whose phases (the table at the top of
``bridges/rest/connections.py``) say which path holds each; ``route`` decides where each
request goes. The task path gives a connection back (``watch``) once it is idle with
nothing buffered.

Rules: one request at a time per connection (pipelined requests wait in the buffer, whose
growth stops reading at ``PIPELINE_BYTES``); a request past its deadline is answered with
its expiry (``Pending.expire``); a client that closes while its request runs has it
abandoned (``Pending.cancel``); an idle connection is closed after ``keepalive_timeout_s``,
an answer the client does not read after ``send_timeout_s``; on shutdown idle connections
close at once and running ones close after their answer (``Connection: close``).
"""

from __future__ import annotations

import logging
import math
import select
import socket as stdsocket
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import trio

from bridges.rest.connections import (
    AFTER,
    REACTOR_PHASES,
    Conn,
    Connections,
    Event,
    Gathered,
    Phase,
    Route,
    Sweep,
    move,
    route,
    sweep,
)
from bridges.rest.http11 import HttpRequest, HttpResponse, ProtocolError, error_response
from bridges.rest.send import send_response
from gateway.deadlines import DeadlineHeap

if TYPE_CHECKING:
    from bridges.rest.server import RequestBody

log = logging.getLogger("inferoxy.http")

Socket = stdsocket.socket

RECV_BYTES = 64 << 10
PIPELINE_BYTES = 256 << 10  # buffered while a request runs; reading pauses beyond
SWEEP_S = 1.0  # how often idle and stuck connections are looked at
CLOSING_SWEEP_S = 0.05  # ... while shutting down

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLERR | select.EPOLLHUP

# The phases and events of the hot path, as globals (a class attribute costs a lookup more).
_IDLE, _GATHERING, _RUNNING = Phase.IDLE, Phase.GATHERING, Phase.RUNNING
_GATHER, _BLOCKED = Event.GATHER, Event.BLOCKED
_TO_TASK, _LINGER = Event.TO_TASK, Event.LINGER
_ROUTE_TASK = Route.TASK
_AFTER_START, _AFTER_ANSWERED = AFTER[Event.START], AFTER[Event.ANSWERED]

# What the task path is handed: the parsed request, the protocol error to answer, a fast
# request whose body was late (its head checked), or None (a head in pieces).
First = HttpRequest | ProtocolError | Gathered | None


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
        ``HttpResponse``), or what ``start`` (or ``finish``) is then given instead of
        ``target`` -- what was checked here is not checked again."""

    def start(self, request: HttpRequest, target: Any, body: memoryview,
              reply: Callable[[HttpResponse], None]) -> HttpResponse | Pending:
        """Answer now, or start the request; ``reply`` is then called once with its answer,
        unless it is expired or cancelled first. ``body`` is valid for this call only."""

    async def finish(self, request: HttpRequest, checked: Any, body: RequestBody
                     ) -> HttpResponse:
        """On the task path: a request whose body was too late to gather, ``checked`` what
        ``check`` returned for it; the rest of the body is read from ``body``."""


class Reactor:
    """The connections of one ``HttpServer`` while they wait or run a fast request.

    It borrows them from ``table`` (``watch`` lends one, idle with nothing buffered) and
    never closes a socket itself: ``to_task(c, first)`` lends a connection to the task path,
    ``linger(c)`` ends one after an answer that closes it (lingering, so the answer is not
    lost to a reset), ``end(c)`` ends one at once (idle, reset, or its client gone).
    """

    def __init__(self, table: Connections, fast: FastPath, *, keepalive_timeout_s: float,
                 send_timeout_s: float, to_task: Callable[[Conn, First], None],
                 linger: Callable[[Conn], None], end: Callable[[Conn], None]) -> None:
        self._table = table
        self._fast = fast
        self._keepalive_s = keepalive_timeout_s
        self._send_timeout_s = send_timeout_s
        self._to_task = to_task
        self._linger = linger
        self._end = end
        self._ep = select.epoll()
        self._deadlines: DeadlineHeap[Conn] = DeadlineHeap()
        self._next_sweep = 0.0

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until shutdown has closed every connection of the table."""
        ep = self._ep
        table = self._table
        by_fd = table.by_fd
        try:
            while not (table.closing and not by_fd):
                first = self._deadlines.next_deadline()
                wake = self._next_sweep if first is None else min(first, self._next_sweep)
                with trio.move_on_at(wake):
                    await trio.lowlevel.wait_readable(ep)
                for fd, events in ep.poll(0):
                    c = by_fd.get(fd)
                    if c is not None and c.phase in REACTOR_PHASES:
                        self._event(c, events)
                now = trio.current_time()
                for c in self._deadlines.due(now):
                    self._expire(c)
                if now >= self._next_sweep:
                    self._sweep(now)
        finally:
            for c in table:
                self._close(c)
            trio.lowlevel.notify_closing(ep)
            ep.close()

    def watch(self, c: Conn) -> None:
        """Serve ``c`` (IDLE, non-blocking, connected, nothing buffered) from now on."""
        c.last = trio.current_time()
        c.eof = c.paused = False
        c.watching = _IN
        self._ep.register(c.fd, _IN)

    def shutdown(self) -> None:
        """Close idle connections now, the others after their answers; ``run`` then ends
        (once the table is empty: the task path's connections close on their own)."""
        self._next_sweep = 0.0  # sweep at the next wake-up

    # -- events ------------------------------------------------------------------------------

    def _event(self, c: Conn, events: int) -> None:
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

    def _readable(self, c: Conn) -> None:
        try:
            data = c.sock.recv(max(RECV_BYTES, c.http.body_missing()))
        except BlockingIOError:
            return
        except OSError:
            self._close(c)
            return
        phase = c.phase
        if not data:
            if phase is _IDLE or phase is _GATHERING:
                self._close(c)  # a body cut short included: nothing was taken for it yet
            else:  # half-closed: the answer may still be read
                c.eof = True
                self._pause(c)
            return
        c.last = trio.current_time()
        c.http.feed(data)
        if phase is _IDLE or phase is _GATHERING:
            self._advance(c)
        elif c.http.buffered > PIPELINE_BYTES:
            self._pause(c)

    def _advance(self, c: Conn) -> None:
        """Serve the requests buffered on an IDLE (or GATHERING) connection until one has
        to wait."""
        http = c.http
        fast = self._fast
        while True:
            if c.gathering is not None:
                gathered = c.gathering
                body = http.take_body()
                if body is None:
                    return  # more to come
                c.gathering = None
                request, target = gathered.request, gathered.checked
            else:
                try:
                    head = http.next_head()
                except ProtocolError as exc:
                    self._hand_over(c, exc)
                    return
                if head is None:
                    if http.buffered:  # a head in pieces: the task path times it
                        self._hand_over(c, None)
                    elif c.paused and not c.eof:
                        self._resume(c)
                    return
                request = head
                target = fast.target(request)
                body = http.take_body() if target is not None else None
                if body is None:  # (claimed with its body whole, a request starts at once)
                    if route(target is not None, False, request) is _ROUTE_TASK:
                        self._hand_over(c, request)
                        return
                    checked = fast.check(request, target)
                    if not isinstance(checked, HttpResponse):
                        c.gathering = Gathered(request, checked, trio.current_time())
                        move(c, _GATHER)
                        return
                    if not self._send(c, checked):  # (closes: the body was not read)
                        return
                    continue
            c.phase = _AFTER_START[c.phase]  # (``move``, inlined)
            c.serial += 1
            try:
                outcome = fast.start(request, target, body,
                                     partial(self._reply, c, c.serial))
            except Exception:
                log.exception("error answering %s %s", request.method, request.path)
                outcome = error_response(500, "internal error")
            if isinstance(outcome, HttpResponse):  # answered at once (a refusal, say)
                if not self._send(c, outcome):
                    return
                continue
            c.pending = outcome
            c.entry = self._deadlines.push(outcome.deadline, c)
            return

    def _reply(self, c: Conn, serial: int, response: HttpResponse) -> None:
        """The fast path's answer (called from the model server's callback: never raises)."""
        if c.pending is None or c.serial != serial or c.phase is not _RUNNING:
            if response.release is not None:  # closed, or expired, meanwhile
                response.release()
            return
        self._answer(c, response)

    def _expire(self, c: Conn) -> None:
        """``c``'s request reached its deadline unanswered."""
        if c.pending is not None and c.phase is _RUNNING:
            c.entry = None  # (popped)
            c.pending.expire()  # its answer comes through ``_reply``

    def _answer(self, c: Conn, response: HttpResponse) -> None:
        self._settle(c)
        try:
            if self._send(c, response):
                self._advance(c)
        except Exception:
            log.exception("HTTP connection failed")
            self._close(c)

    def _settle(self, c: Conn) -> None:
        """``c`` has no request running any more."""
        c.pending = None
        if c.entry is not None:
            self._deadlines.discard(c.entry)
            c.entry = None

    def _sweep(self, now: float) -> None:
        table = self._table
        self._next_sweep = now + (CLOSING_SWEEP_S if table.closing else SWEEP_S)
        for c in table:
            if c.phase not in REACTOR_PHASES:
                continue  # the task path's
            what = sweep(c, now, self._keepalive_s, table.closing)
            if what is Sweep.CLOSE:
                self._close(c)
            elif what is Sweep.TO_TASK:  # a slow body: the task path reads and times it
                gathered = c.gathering
                c.gathering = None
                self._hand_over(c, gathered)

    # -- answers -----------------------------------------------------------------------------

    def _send(self, c: Conn, response: HttpResponse) -> bool:
        """Send ``response`` (IDLE or RUNNING); True when it went out whole and the next
        request may be read (``c`` is IDLE again)."""
        c.last = trio.current_time()
        try:
            rest, keep = send_response(c.sock, c.http, response)
        except OSError:
            self._close(c)
            return False
        if rest:
            c.out, c.out_keep = rest, keep
            c.send_deadline = c.last + self._send_timeout_s
            move(c, _BLOCKED)
            self._watch(c, _OUT)
            return False
        return self._sent(c, keep)

    def _flush(self, c: Conn) -> None:
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

    def _sent(self, c: Conn, keep: bool) -> bool:
        if not keep:
            self._release(c)
            move(c, _LINGER)
            self._linger(c)
            return False
        if c.phase is not _IDLE:
            c.phase = _AFTER_ANSWERED[c.phase]  # (``move``, inlined)
        c.http.next_request()
        if c.eof:
            self._close(c)
            return False
        return True

    # -- bookkeeping -------------------------------------------------------------------------

    def _hand_over(self, c: Conn, first: First) -> None:
        self._release(c)
        move(c, _TO_TASK)
        self._to_task(c, first)

    def _pause(self, c: Conn) -> None:
        c.paused = True
        self._watch(c, c.watching & ~_IN)

    def _resume(self, c: Conn) -> None:
        c.paused = False
        self._watch(c, c.watching | _IN)

    def _watch(self, c: Conn, events: int) -> None:
        if events != c.watching:
            c.watching = events
            self._ep.modify(c.fd, events)

    def _release(self, c: Conn) -> None:
        """Stop watching ``c`` (its socket stays open)."""
        c.watching = 0
        self._ep.unregister(c.fd)

    def _close(self, c: Conn) -> None:
        if c.phase not in REACTOR_PHASES:
            return  # the task path's, or closed already
        self._release(c)
        if c.pending is not None:
            pending = c.pending
            self._settle(c)
            pending.cancel()
        c.gathering = None
        self._end(c)
