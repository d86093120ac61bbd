"""Sequences of a stateful model: which copy holds which sequence. I/O-free.

Theory of operation
-------------------
A stateful model keeps per-sequence state inside a copy (a video's running statistics, a
tracker), so every request of a sequence must reach the same copy, in the order sent. A
sequence is opened by a request carrying ``sequence_start``; it *reserves* one of the
``slots`` of a copy (``max_sequences_per_copy``; 1 means the copy is the client's alone, as
in the original Inferoxy). It keeps its slot until

* a request carrying ``sequence_end`` has been answered (reason ``ended``),
* it has been idle longer than ``max_sequence_idle_us`` (reason ``evicted``),
* its copy died (reason ``copy_died``), or the client's stream closed (``closed``),

and the worker is told each time (``on_sequence_end(id, reason)``) so it can drop the state.

A start that finds no free slot waits in a bounded FIFO; slots are handed out in arrival
order as they free up. A request for a sequence that is not open is refused with the reason
when the table still remembers it (evicted, copy died: a bounded memory of recent ends),
else as unknown.

Release is idempotent and bound to one *incarnation*: every open creates a new ``Sequence``
object, and ``release`` takes that object, not the id. A late release of an old incarnation
(a cancelled request racing an end, an eviction racing a new start under the same id) never
frees a slot twice or ends another client's sequence.

    event \\ state      (none)          WAITING           OPEN              RELEASED
    start              open | wait     (restart: error)  restart = end+open open | wait
    request            error           error             route to copy     error (reason)
    end answered       -               -                 RELEASED(ended)   -
    idle / copy died   -               -                 RELEASED(reason)  -
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

SequenceId = int | str  # as the client sent it


class SequenceState(enum.Enum):
    WAITING = "waiting"
    OPEN = "open"
    RELEASED = "released"


class SequenceError(Exception):
    """A request that does not fit its sequence's state; the message is for the client."""


class SequenceBusy(SequenceError):
    """No copy can take another sequence and the wait queue is full."""


@dataclass(eq=False, slots=True)
class Sequence:
    id: SequenceId
    state: SequenceState = SequenceState.WAITING
    copy: int | None = None
    last_used: float = 0.0
    reason: str = ""  # why it was released


@dataclass(frozen=True, slots=True)
class Released:
    """A slot given back: tell ``copy``'s worker that ``sequence`` ended for ``reason``."""

    sequence: Sequence
    copy: int
    reason: str


@dataclass(slots=True)
class SequenceTable:
    slots_per_copy: int
    max_idle_s: float
    max_waiting: int
    remember: int = 4096  # released ids remembered, for clear errors
    _open: dict[SequenceId, Sequence] = field(default_factory=dict)
    _by_copy: dict[int, set[SequenceId]] = field(default_factory=dict)
    _waiting: deque[Sequence] = field(default_factory=deque)
    _gone: OrderedDict[SequenceId, str] = field(default_factory=OrderedDict)

    # -- copies ------------------------------------------------------------------------------

    def add_copy(self, copy: int) -> None:
        """A copy can take sequences (``take_assigned`` then hands waiting ones its slots)."""
        self._by_copy.setdefault(copy, set())

    def remove_copy(self, copy: int, reason: str = "copy_died") -> list[Released]:
        """The copy is gone: every sequence on it is released (the worker's state is lost)."""
        ids = self._by_copy.pop(copy, set())
        released = [self._release(self._open[i], reason) for i in list(ids) if i in self._open]
        return [r for r in released if r is not None]

    def free_slots(self, copy: int) -> int:
        held = self._by_copy.get(copy)
        return -1 if held is None else self.slots_per_copy - len(held)

    # -- requests ----------------------------------------------------------------------------

    def start(self, seq_id: SequenceId, now: float) -> tuple[Sequence, list[Released]]:
        """Open a sequence (a request with ``sequence_start``).

        Returns the new incarnation (OPEN with a copy, or WAITING) and, when the id was
        already open, the release of the old incarnation (reason ``restarted``).
        """
        released: list[Released] = []
        old = self._open.get(seq_id)
        if old is not None:
            if old.state is SequenceState.WAITING:
                raise SequenceError(f"sequence {seq_id!r} is already waiting for a copy")
            r = self._release(old, "restarted")
            if r is not None:
                released.append(r)
        seq = Sequence(seq_id, last_used=now)
        self._gone.pop(seq_id, None)
        copy = self._least_loaded()
        if copy is not None:
            self._open_on(seq, copy)
        else:
            if len(self._waiting) >= self.max_waiting:
                raise SequenceBusy(
                    f"every copy is serving its limit of sequences and {self.max_waiting} "
                    f"more are waiting"
                )
            self._waiting.append(seq)
        self._open[seq_id] = seq
        return seq, released

    def lookup(self, seq_id: SequenceId, now: float) -> Sequence:
        """The sequence a follow-up request belongs to; ``SequenceError`` if not open."""
        seq = self._open.get(seq_id)
        if seq is None:
            reason = self._gone.get(seq_id)
            if reason is None:
                raise SequenceError(
                    f"unknown sequence {seq_id!r}: its first request must set sequence_start"
                )
            raise SequenceError(f"sequence {seq_id!r} is over ({_explain(reason)})")
        seq.last_used = now
        return seq

    def release(self, seq: Sequence, reason: str) -> Released | None:
        """End an incarnation; None when it was already released (idempotent)."""
        if self._open.get(seq.id) is not seq:
            return None
        return self._release(seq, reason)

    def touch(self, seq: Sequence, now: float) -> None:
        seq.last_used = now

    def evict_idle(self, now: float, busy: Iterable[Sequence] = ()) -> list[Released]:
        """Release OPEN sequences idle longer than the limit, except ``busy`` ones."""
        if self.max_idle_s <= 0:
            return []
        skip = set(map(id, busy))
        out = []
        for seq in list(self._open.values()):
            if (seq.state is SequenceState.OPEN and id(seq) not in skip
                    and now - seq.last_used > self.max_idle_s):
                r = self._release(seq, "evicted")
                if r is not None:
                    out.append(r)
        return out

    def take_assigned(self) -> list[Sequence]:
        """Waiting sequences that got a slot since the last call (already OPEN)."""
        return self._assign_waiting()

    @property
    def open_count(self) -> int:
        return sum(1 for s in self._open.values() if s.state is SequenceState.OPEN)

    @property
    def live_count(self) -> int:
        """Sequences open or waiting for a copy."""
        return len(self._open)

    def is_live(self, seq_id: SequenceId) -> bool:
        return seq_id in self._open

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    # -- internals ---------------------------------------------------------------------------

    def _least_loaded(self) -> int | None:
        best: int | None = None
        for copy, held in self._by_copy.items():
            if len(held) < self.slots_per_copy and (
                best is None or len(held) < len(self._by_copy[best])
            ):
                best = copy
        return best

    def _open_on(self, seq: Sequence, copy: int) -> None:
        seq.state = SequenceState.OPEN
        seq.copy = copy
        self._by_copy[copy].add(seq.id)

    def _release(self, seq: Sequence, reason: str) -> Released | None:
        if seq.state is SequenceState.RELEASED:
            return None
        was_open = seq.state is SequenceState.OPEN
        seq.state = SequenceState.RELEASED
        seq.reason = reason
        if self._open.get(seq.id) is seq:
            del self._open[seq.id]
        if reason != "restarted":
            self._gone[seq.id] = reason
            while len(self._gone) > self.remember:
                self._gone.popitem(last=False)
        if not was_open:
            try:
                self._waiting.remove(seq)
            except ValueError:
                pass
            return None
        assert seq.copy is not None
        self._by_copy.get(seq.copy, set()).discard(seq.id)
        return Released(seq, seq.copy, reason)

    def _assign_waiting(self) -> list[Sequence]:
        assigned = []
        while self._waiting:
            copy = self._least_loaded()
            if copy is None:
                break
            seq = self._waiting.popleft()
            self._open_on(seq, copy)
            assigned.append(seq)
        return assigned


def _explain(reason: str) -> str:
    return {
        "ended": "it ended",
        "evicted": "it was released after idling longer than max_sequence_idle_us",
        "copy_died": "the model copy holding its state died",
        "closed": "its stream was closed",
        "cancelled": "its last request was cancelled",
    }.get(reason, reason)
