"""The batching policy: an I/O-free queue that decides when a batch closes.

Theory of operation
-------------------
Requests wait in one FIFO per model. Each has a number of *rows* (its batch dimension) and a
*key*: requests batch together only when their keys are equal (same per-item shapes and
parameters), because a batch is one array per input. A batch is formed from the oldest
request and every later request with the same key, in arrival order, while the rows fit
``max_batch_size``; requests with other keys keep their places.

A batch closes — ``take(now, copy_free)`` returns it — only when a copy is free to run it,
and then when one of these holds:

* it is full (``max_batch_size`` rows), or
* the oldest request has waited ``max_queue_delay_us`` (0 = never hold a request back).

While every copy is busy nothing closes, and the queue grows into bigger batches by itself;
this is what makes batching pay when the model is the bottleneck. ``next_deadline`` tells the
adapter when the delay of the oldest request runs out, so it can sleep until then.

Requests may also belong to a *group* (a sequence of a stateful model): a batch holds at
most one request of a group, and once a group's request is passed over (other key, already
in the batch) every later request of that group is passed over too — a group is never
reordered.

The queue is bounded: ``push`` raises ``QueueFull`` past ``max_queue_size`` requests. Retries
(``push_front``) may exceed the bound — they were admitted once and must not be lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    pass


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    rows: int
    key: Hashable
    since: float
    group: Hashable | None = None


class BatchQueue(Generic[T]):
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._entries: deque[_Entry[T]] = deque()
        self.rows = 0  # of every queued request, whatever its key

    def wants_look(self) -> bool:
        """After a ``push``: may a batch be due sooner than the adapter was told? Only when
        this is the oldest request (a new deadline) or the queue holds a full batch's rows;
        otherwise the adapter's wake-up for the oldest request's deadline still stands."""
        return len(self._entries) == 1 or self.rows >= self.policy.max_batch_size

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, item: T, rows: int, key: Hashable, now: float,
             group: Hashable | None = None) -> None:
        if len(self._entries) >= self.policy.max_queue_size:
            raise QueueFull(f"queue is full ({self.policy.max_queue_size} requests)")
        if not 1 <= rows <= self.policy.max_batch_size:
            raise ValueError(f"rows must be in [1, {self.policy.max_batch_size}], got {rows}")
        self._entries.append(_Entry(item, rows, key, now, group))
        self.rows += rows

    def push_front(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Put ``(item, rows, key, since[, group])`` back at the head, in the given order
        (retries of a lost batch)."""
        for entry in reversed(list(items)):
            e = _Entry(*entry)
            self._entries.appendleft(e)
            self.rows += e.rows

    def items(self) -> list[T]:
        return [e.item for e in self._entries]

    def next_deadline(self) -> float | None:
        """When the oldest request's delay runs out (None: queue empty)."""
        if not self._entries:
            return None
        return self._entries[0].since + self.policy.max_queue_delay_us / 1e6

    def _candidates(self) -> tuple[list[int], int]:
        head = self._entries[0]
        picked, rows = [], 0
        taken: set[Hashable] = set()
        passed: set[Hashable] = set()  # groups with a request left behind: keep their order
        for i, e in enumerate(self._entries):
            g = e.group
            if g is not None and (g in taken or g in passed):
                passed.add(g)
                continue
            if e.key != head.key:
                if g is not None:
                    passed.add(g)
                continue
            if rows + e.rows > self.policy.max_batch_size:
                break  # never skip ahead within a key: that would reorder it
            picked.append(i)
            rows += e.rows
            if g is not None:
                taken.add(g)
            if rows == self.policy.max_batch_size:
                break
        return picked, rows

    def take(self, now: float, copy_free: bool) -> list[T] | None:
        """The batch to run now, or None to keep waiting."""
        if not self._entries or not copy_free:
            return None
        picked, rows = self._candidates()
        deadline = self.next_deadline()
        assert deadline is not None
        if rows < self.policy.max_batch_size and now < deadline:
            return None
        self.rows -= rows
        if picked[-1] == len(picked) - 1:  # the common case: a prefix of the queue
            return [self._entries.popleft().item for _ in picked]
        chosen = set(picked)
        batch = [self._entries[i].item for i in picked]
        self._entries = deque(e for i, e in enumerate(self._entries) if i not in chosen)
        return batch

    def remove(self, pred: Callable[[T], bool]) -> list[T]:
        """Drop and return the queued items for which ``pred`` holds (cancelled, expired)."""
        gone = [e for e in self._entries if pred(e.item)]
        if gone:
            self._entries = deque(e for e in self._entries if not pred(e.item))
            self.rows -= sum(e.rows for e in gone)
        return [e.item for e in gone]
