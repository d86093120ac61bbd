"""One submitted request until its one answer: the record every task-less bridge keeps.

The REST reactor's fast path, the gRPC service and the control process's side of the
data-plane processes all submit a request (``Admission.submit``) and answer it later from a
callback, without a task. ``InFlight`` is that record: whichever of the three comes first --
the model server's answer (``done``, installed as ``InferRequest.on_done``), the deadline
(``expire``) or the client leaving (``cancel``) -- settles it, and only that one reaches
``deliver``. Settling drops the deadline entry and breaks the cycle request -> on_done ->
record -> request, so an answered request is freed by reference counts, not by the cyclic
collector. ``deliver`` owns the result: it releases it once the answer no longer needs it.

``InFlightDeadlines`` (a Trio adapter over ``gateway.deadlines``) is the one task that expires
the records of a bridge that has no loop of its own to keep them (gRPC, data-plane pool); the
reactor keeps its connections' deadlines in its own loop and calls ``expire`` itself.
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import trio

from gateway.deadlines import DeadlineHeap, Entry
from gateway.errors import InferoxyError, Unavailable
from gateway.request import InferRequest, RequestResult


class Abandons(Protocol):
    """What of the model server a record needs (``ModelServer`` offers it)."""

    def expire(self, req: InferRequest) -> InferoxyError:
        """The deadline passed: abandon ``req``; the error to answer with."""

    def cancel(self, req: InferRequest) -> None:
        """The client went away: abandon ``req``."""


CANCELLED = "the request was cancelled"


class InFlight:
    """A submitted request; subclasses say how its one answer goes out (``deliver``)."""

    __slots__ = ("_heap", "answered", "entry", "request", "server")

    # Whether a cancelled request is still answered (with 503 UNAVAILABLE): the gRPC call and
    # the data-plane pool answer it (their peers free what they hold by the answer); a closed
    # HTTP connection has nobody to answer.
    ANSWERS_CANCEL: ClassVar[bool] = True

    def __init__(self, server: Abandons, request: InferRequest) -> None:
        self.server = server
        self.request = request
        self.answered = False
        self.entry: Entry | None = None
        self._heap: DeadlineHeap[InFlight] | None = None
        request.on_done = self.done

    def deliver(self, result: RequestResult | None, error: InferoxyError | None) -> None:
        """The one answer: ``result`` or ``error``. Never raises; owns ``result``."""
        raise NotImplementedError

    def done(self, req: InferRequest) -> None:
        """``on_done``: runs inside the model server's answer handling."""
        if self.answered:
            return
        result, req.result = req.result, None
        self._settle()
        self.deliver(result, req.error)

    def expire(self) -> None:
        """The deadline passed first: abandon the request, answer with the server's error."""
        if not self._settled():
            error = self.server.expire(self.request)
            self._settle()
            self.deliver(None, error)

    def cancel(self) -> None:
        """The client went away (or the bridge stops): abandon the request."""
        if not self._settled():
            self.server.cancel(self.request)
            self._settle()
            if self.ANSWERS_CANCEL:
                self.deliver(None, Unavailable(CANCELLED))

    def _settled(self) -> bool:
        return self.answered or self.request.done.is_set()

    def _settle(self) -> None:
        self.answered = True
        self.request.on_done = None
        if self.entry is not None:
            assert self._heap is not None
            self._heap.discard(self.entry)
            self.entry = None


class InFlightDeadlines:
    """The records in flight by deadline, and the task (``run``) that expires them."""

    def __init__(self) -> None:
        self._heap: DeadlineHeap[InFlight] = DeadlineHeap()
        self._wake = trio.Event()

    def __len__(self) -> int:
        return self._heap.live

    def add(self, item: InFlight) -> None:
        deadline = item.request.deadline
        first = self._heap.next_deadline()
        if first is None or deadline < first:
            self._wake.set()
        item._heap = self._heap
        item.entry = self._heap.push(deadline, item)

    def pending(self) -> list[InFlight]:
        return self._heap.items()

    def expire_due(self, now: float) -> None:
        for item in self._heap.due(now):
            item.entry = None  # (popped)
            item.expire()

    async def run(self) -> None:
        while True:
            self.expire_due(trio.current_time())
            first = self._heap.next_deadline()
            with trio.move_on_at(first if first is not None else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
