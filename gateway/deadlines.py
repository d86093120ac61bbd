"""Requests in flight by deadline, I/O-free: for bridges that answer without a task per
request (the HTTP reactor, the gRPC service) and so keep every deadline in one place.

``push`` returns an entry; ``discard(entry)`` drops the item at once when it is answered
(its entry stays in the heap, holding only the deadline, until it surfaces or the heap is
rebuilt), so an answered request is freed by reference counting and never lives on for the
cyclic collector to promote and walk. ``due(now)`` pops the items whose deadline passed.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Entry = list[Any]  # [deadline, serial, item or None once discarded]


class DeadlineHeap(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._serials = itertools.count()
        self.live = 0

    def __len__(self) -> int:
        """Entries held, discarded ones not yet dropped included (bounded by 4 x ``live``)."""
        return len(self._heap)

    def push(self, deadline: float, item: T) -> Entry:
        entry: Entry = [deadline, next(self._serials), item]
        heapq.heappush(self._heap, entry)
        self.live += 1
        if len(self._heap) > 64 and len(self._heap) > 4 * self.live:
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
        return entry

    def discard(self, entry: Entry) -> None:
        """The item was answered (idempotent)."""
        if entry[2] is not None:
            entry[2] = None
            self.live -= 1

    def next_deadline(self) -> float | None:
        """The earliest deadline in the heap (perhaps of a discarded item: a spare wake-up)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[T]:
        """Pop the live items whose deadline is ``now`` or earlier."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if item is not None:
                self.live -= 1
                out.append(item)
        return out

    def items(self) -> list[T]:
        return [e[2] for e in self._heap if e[2] is not None]
