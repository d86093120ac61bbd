"""Every open HTTP connection of one server, in one table: its phase, and which path serves
its next request. I/O-free: the record holds the socket, but nothing here touches it.

Two paths serve connections. The reactor (``bridges.rest.reactor``) waits on idle ones and
serves infer calls whose body is, or soon will be, buffered whole, without a task. The task
path (``HttpServer._connection`` in ``bridges.rest.server``) serves everything else, with
streaming bodies and timeouts. Neither keeps a connection: ``Connections`` holds each one, a
``Conn``, from accept to close; a path borrows it for a phase and every change of phase is a
lookup in ``TRANSITIONS`` (``move``; the reactor's hot path looks up the event's column,
``AFTER``, itself), so a connection is always in one phase, served by one path.

Phases and transitions (``TRANSITIONS``; ``step`` refuses any other, which is a bug)::

    phase       event         next        when
    ---------   -----------   ---------   ------------------------------------------------
    IDLE        START         RUNNING     a fast request with its whole body was started
    IDLE        GATHER        GATHERING   a fast request's head checked, its small body due
    IDLE        BLOCKED       SENDING     a refusal of the head (``check``) was not all taken
    IDLE        TO_TASK       TASK        anything else (``route``)
    GATHERING   START         RUNNING     the body came whole
    GATHERING   TO_TASK       TASK        the body is late (``sweep``): the task path reads
                                          the rest, with the head already checked
    RUNNING     ANSWERED      IDLE        the answer (perhaps given at once by ``start``)
                                          went out whole, kept alive
    RUNNING     BLOCKED       SENDING     the socket did not take it all
    SENDING     ANSWERED      IDLE        the rest went out
    TASK        GIVE_BACK     IDLE        answered, nothing buffered (``give_back``)
    IDLE, RUNNING, SENDING,
    TASK        LINGER        LINGERING   an answer that closes the connection went out
    any open    CLOSE         CLOSED      idle too long, shutdown, reset, client gone

IDLE, GATHERING, RUNNING and SENDING are the reactor's (its epoll set watches the socket);
TASK and LINGERING are a task's. A refusal of the head that went out whole leaves the
connection IDLE (the next buffered request is routed in turn).

Which path serves a request is ``route``'s decision, from the head alone: the reactor when
the fast path claims the route and the body is buffered whole (START) or small enough to
gather (GATHER, at most ``GATHER_BYTES``, no ``Expect: 100-continue``); else the task path.
A gathered body still incomplete after ``GATHER_S`` goes to the task path as a ``Gathered``
record: the request and what the fast path's ``check`` returned (for infer calls the checked
``Head``: model, availability, head limits), so nothing is looked up or checked twice. A
model stopped in the meantime is still answered once and clearly: its server refuses the
submit (503, "not serving"), as it does for a gathered body that came in time.
"""

from __future__ import annotations

import math
import socket as stdsocket
from collections.abc import Iterator
from enum import Enum, IntEnum
from typing import Any

from bridges.rest.http11 import Connection, HttpRequest

Socket = stdsocket.socket

# A fast-path body up to this size that did not come whole with its head (a small request
# split across segments) is gathered by the reactor; a larger one goes to the task path,
# which receives it straight into shared memory (one copy less). 224x224x3 images (150 KB)
# at c=16 gave the same throughput either way (4.0-4.3 k/s, alternating runs).
GATHER_BYTES = 64 << 10
GATHER_S = 1.0  # a body gathered longer than this goes to the task path, which times it


# Integer enums: they hash in C, and the reactor changes phase twice per request (a plain
# Enum's Python-level hash made that cost over a microsecond per request).
class Phase(IntEnum):
    IDLE = 0
    GATHERING = 1
    RUNNING = 2
    SENDING = 3
    TASK = 4
    LINGERING = 5
    CLOSED = 6


class Event(IntEnum):
    START = 0
    GATHER = 1
    BLOCKED = 2
    ANSWERED = 3
    TO_TASK = 4
    GIVE_BACK = 5
    LINGER = 6
    CLOSE = 7


class IllegalTransition(RuntimeError):
    """A path tried a change of phase the table does not allow (a bug, not bad input)."""


_P, _E = Phase, Event
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (_P.IDLE, _E.START): _P.RUNNING,
    (_P.IDLE, _E.GATHER): _P.GATHERING,
    (_P.IDLE, _E.BLOCKED): _P.SENDING,
    (_P.IDLE, _E.TO_TASK): _P.TASK,
    (_P.GATHERING, _E.START): _P.RUNNING,
    (_P.GATHERING, _E.TO_TASK): _P.TASK,
    (_P.RUNNING, _E.ANSWERED): _P.IDLE,
    (_P.RUNNING, _E.BLOCKED): _P.SENDING,
    (_P.SENDING, _E.ANSWERED): _P.IDLE,
    (_P.TASK, _E.GIVE_BACK): _P.IDLE,
    **{(p, _E.LINGER): _P.LINGERING for p in (_P.IDLE, _P.RUNNING, _P.SENDING, _P.TASK)},
    **{(p, _E.CLOSE): _P.CLOSED for p in Phase if p is not _P.CLOSED},
}


class _After(dict[Phase, Phase]):
    """One event's column of the table: phase -> next phase; a phase the event cannot
    happen in raises ``IllegalTransition``. (A lookup here costs the reactor ~25 ns, twice
    per request; one keyed by a (phase, event) tuple cost five times that.)"""

    def __init__(self, event: Event) -> None:
        super().__init__({p: n for (p, e), n in TRANSITIONS.items() if e is event})
        self.event = event

    def __missing__(self, phase: Phase) -> Phase:
        raise IllegalTransition(f"{self.event.name} while {phase.name}")


AFTER = {event: _After(event) for event in Event}

REACTOR_PHASES = frozenset({Phase.IDLE, Phase.GATHERING, Phase.RUNNING, Phase.SENDING})


def step(phase: Phase, event: Event) -> Phase:
    """The phase after ``event``; raises ``IllegalTransition`` for any pair not in the table."""
    return AFTER[event][phase]


def move(c: Conn, event: Event) -> None:
    """``c`` to the phase after ``event`` (the reactor's hot path inlines this lookup)."""
    c.phase = AFTER[event][c.phase]


class Route(Enum):
    START = "start"  # the reactor starts it now
    GATHER = "gather"  # the reactor gathers its body first
    TASK = "task"  # the task path serves it


# (as globals: an Enum's class attribute costs ~0.1 us on each request)
_ROUTE_START, _ROUTE_GATHER, _ROUTE_TASK = Route.START, Route.GATHER, Route.TASK


def route(claimed: bool, body_whole: bool, request: HttpRequest) -> Route:
    """Which path serves ``request``: ``claimed`` when the fast path serves its route,
    ``body_whole`` when its body is buffered whole. (A claimed request with its body whole
    always starts at once: the reactor asks only about the others.)"""
    if not claimed:
        return _ROUTE_TASK
    if body_whole:
        return _ROUTE_START
    length = request.content_length
    if length is not None and length <= GATHER_BYTES and request.header(b"expect") is None:
        return _ROUTE_GATHER
    return _ROUTE_TASK  # chunked, large (streamed into its slots), or 100-continue


def give_back(reactor: bool, closing: bool, buffered: int) -> bool:
    """After the task path answered and kept the connection: whether the reactor takes it
    back (idle, nothing buffered) rather than the task reading the next request itself."""
    return reactor and not closing and not buffered


class Sweep(Enum):
    KEEP = "keep"
    CLOSE = "close"
    TO_TASK = "to_task"


def sweep(c: Conn, now: float, keepalive_s: float, closing: bool) -> Sweep:
    """What the reactor's periodic look does with ``c`` (one of its phases)."""
    if c.phase is Phase.SENDING:
        return Sweep.CLOSE if now > c.send_deadline else Sweep.KEEP  # the client won't read
    if c.phase is Phase.GATHERING:
        assert c.gathering is not None
        return Sweep.TO_TASK if now - c.gathering.since > GATHER_S else Sweep.KEEP
    if c.phase is Phase.IDLE and (closing or now - c.last > keepalive_s):
        return Sweep.CLOSE
    return Sweep.KEEP


class Gathered:
    """A fast request whose body is on its way: the head, what ``check`` returned for it,
    and since when (``trio.current_time()``)."""

    __slots__ = ("checked", "request", "since")

    def __init__(self, request: HttpRequest, checked: Any, since: float) -> None:
        self.request = request
        self.checked = checked
        self.since = since


class Conn:
    """One open connection: its socket, its protocol state (``http``), its phase, and what
    the path serving it keeps there (the record outlives every hand-over)."""

    __slots__ = ("entry", "eof", "fd", "gathering", "http", "idle_scope", "last", "out",
                 "out_keep", "paused", "pending", "phase", "send_deadline", "serial", "sock",
                 "watching")

    def __init__(self, sock: Socket, http: Connection, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.http = http
        self.phase = Phase.IDLE
        self.last = now  # when it last did something (for the keep-alive timeout)
        # -- the reactor's
        self.pending: Any = None  # the fast request running (``reactor.Pending``)
        self.serial = 0  # counts fast requests, so a stale answer is told from a new one's
        self.entry: Any = None  # the pending request's place among the deadlines
        self.gathering: Gathered | None = None
        self.out = b""  # what the socket did not take of the answer
        self.out_keep = False
        self.send_deadline = math.inf
        self.eof = False  # the client shut its side: answer what runs, then close
        self.paused = False  # input not watched (pipelined bytes over the limit, or EOF)
        self.watching = 0  # the epoll events registered (0: not registered)
        # -- the task path's
        self.idle_scope: Any = None  # its wait for the next request (cancelled on shutdown)


class Connections:
    """The table: every connection from accept (``open``) to close (``end``)."""

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self.by_fd: dict[int, Conn] = {}
        self.closing = False

    def __len__(self) -> int:
        return len(self.by_fd)

    def __iter__(self) -> Iterator[Conn]:
        """A snapshot: the caller may close connections as it goes."""
        return iter(list(self.by_fd.values()))

    def open(self, sock: Socket, http: Connection, now: float) -> Conn | None:
        """A record for a new connection, IDLE; None when ``max_open`` are open already."""
        if len(self.by_fd) >= self.max_open:
            return None
        c = Conn(sock, http, now)
        http.closing = self.closing
        self.by_fd[c.fd] = c
        return c

    def end(self, c: Conn) -> bool:
        """``c`` closes: True the first time (the caller then closes the socket)."""
        if c.phase is Phase.CLOSED:
            return False
        c.phase = Phase.CLOSED
        if self.by_fd.get(c.fd) is c:
            del self.by_fd[c.fd]
        return True

    def shutdown(self) -> None:
        """No keep-alive from now on: every answer still to come closes its connection."""
        self.closing = True
        for c in self.by_fd.values():
            c.http.closing = True
