"""Where a model's requests wait and which copy runs them: the model server's two strategies.

``ModelServer`` (``gateway.model_server``) owns what every model shares — admission into the
core, dispatch to a copy, answers, retries, releases of output slots, statistics. What
differs between a stateless and a stateful model is only where requests wait and how a batch
and its copy are chosen, and that is this module:

* ``SingleQueue`` (stateless): one ``BatchQueue``; a batch closes when a copy is free, and
  goes to the least-loaded one (``Host.free_copy``). A copy that dies has its batches retried
  once on another copy.
* ``SequenceQueues`` (stateful): the ``SequenceTable`` pins each sequence to one copy; each
  copy has its own queue, in which a batch holds at most one request per sequence (so no
  sequence is reordered); a sequence with no free slot anywhere is *parked* until one frees.
  A copy that dies takes its sequences' state with it: their requests fail, never move.

A strategy never answers a request itself: it hands back what must fail (``Host.fail``) and
tells workers that sequences ended (``Host.end_sequences``). I/O-free but for ``trio``'s clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from gateway.batching import BatchPolicy, BatchQueue, QueueFull
from gateway.config import ModelConfig
from gateway.errors import InferoxyError, InvalidArgument, ModelError, Unavailable
from gateway.request import InferRequest
from gateway.sequences import (
    Released,
    Sequence,
    SequenceBusy,
    SequenceError,
    SequenceState,
    SequenceTable,
)
from supervisor.copy import Copy

MAX_ATTEMPTS = 2  # a stateless request is retried once when its copy dies under it

Picked = tuple[Copy, list[InferRequest]]


class Host(Protocol):
    """What a strategy may ask of its model server."""

    config: ModelConfig
    copies: list[Copy]

    def free_copy(self, now: float) -> Copy | None:
        """The least-loaded copy that may take one more batch now."""

    def running(self) -> list[InferRequest]:
        """The requests of the batches in flight."""

    def fail(self, req: InferRequest, error: InferoxyError) -> None:
        """Answer ``req`` with ``error``; its inputs are freed."""

    def end_sequences(self, released: list[Released]) -> None:
        """Tell the copies that these sequences are over."""

    def wake(self) -> None:
        """The batcher should look again."""


def _policy(config: ModelConfig) -> BatchPolicy:
    return BatchPolicy(config.max_rows, config.max_queue_delay_us, config.max_queue_size)


def _age(queue: BatchQueue[InferRequest], now: float, delay_s: float) -> float:
    head = queue.next_deadline()
    return 0.0 if head is None else max(0.0, now - (head - delay_s))


class SingleQueue:
    """Stateless models: one queue, any copy."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.queue: BatchQueue[InferRequest] = BatchQueue(_policy(host.config))

    @property
    def queued(self) -> int:
        return len(self.queue)

    def admit(self, req: InferRequest, now: float) -> bool:
        """Queue ``req`` (``QueueFull`` when full); True when a batch may be due sooner."""
        self.queue.push(req, req.rows, req.key, now)
        return self.queue.wants_look()

    def next_batch(self, now: float) -> Picked | None:
        copy = self.host.free_copy(now)
        batch = self.queue.take(now, copy is not None)
        if batch is None or copy is None:
            return None
        return copy, batch

    def next_wake(self, now: float) -> float | None:
        wake_at = self.queue.next_deadline() if self.host.free_copy(now) is not None else None
        if len(self.queue):
            paused = [c.paused_until for c in self.host.copies
                      if c.ready and c.paused_until > now]
            if paused:
                wake_at = min([*paused, wake_at] if wake_at is not None else paused)
        return wake_at

    def requeue(self, copy: Copy, requests: list[InferRequest], now: float) -> None:
        """Back at the head, in order (the copy's socket refused the batch)."""
        self.queue.push_front((r, r.rows, r.key, now) for r in requests)

    def remove(self, req: InferRequest) -> bool:
        return bool(self.queue.remove(lambda r: r is req))

    def drain(self) -> list[InferRequest]:
        """Everything still queued, taken out (shutdown)."""
        return self.queue.remove(lambda _: True)

    def batch_done(self, requests: list[InferRequest]) -> None:
        pass

    def copy_ready(self, copy: Copy) -> None:
        pass

    def copy_lost(self, copy: Copy, running: list[InferRequest], now: float) -> None:
        """Retry once, in arrival order, what the copy was running; fail the rest."""
        retry: list[InferRequest] = []
        for r in running:
            if r.attempts < MAX_ATTEMPTS:
                retry.append(r)
            else:
                self.host.fail(r, ModelError(
                    f"model {self.host.config.name!r}: its copy died while running the request"))
        if retry:
            retry.sort(key=lambda r: r.serial)
            self.queue.push_front((r, r.rows, r.key, now) for r in retry)

    def waiting_since(self, now: float) -> float:
        return _age(self.queue, now, self.host.config.max_queue_delay_us / 1e6)

    def retirable(self, copy: Copy) -> bool:
        return True

    def retiring(self, copy: Copy) -> None:
        pass


class SequenceQueues:
    """Stateful models: sequences pinned to copies, a queue per copy, parked sequences."""

    def __init__(self, host: Host) -> None:
        self.host = host
        c = host.config
        self.sequences = SequenceTable(
            slots_per_copy=c.max_sequences_per_copy,
            max_idle_s=c.max_sequence_idle_us / 1e6,
            max_waiting=c.max_queue_size,
        )
        self._policy = _policy(c)
        self._queues: dict[int, BatchQueue[InferRequest]] = {}
        self._parked: dict[Sequence, deque[InferRequest]] = {}
        self._parked_at: dict[Sequence, float] = {}  # when a parked sequence began to wait
        # Live sequences of every stateful model of the gateway, and their limit (the
        # gateway sets both; alone, a model counts its own and has no limit).
        self.live_sequences: Callable[[], int] = lambda: self.sequences.live_count
        self.max_live_sequences: int | None = None

    @property
    def queued(self) -> int:
        return (sum(len(q) for q in self._parked.values())
                + sum(len(q) for q in self._queues.values()))

    def admit(self, req: InferRequest, now: float) -> bool:
        """Join the queue of the copy holding ``req``'s sequence, or park until a copy has a
        slot for it. Refuses what the sequence table refuses (``Unavailable`` when it is a
        matter of capacity, ``QueueFull`` past ``max_queue_size`` with what runs)."""
        name = self.host.config.name
        if req.sequence is None:
            raise InvalidArgument(
                f"model {name!r} is stateful: every request needs parameters.sequence_id "
                f"(and sequence_start on a sequence's first request)")
        if self.queued + len(self.host.running()) >= self.host.config.max_queue_size:
            raise QueueFull("queue is full")
        limit = self.max_live_sequences
        if (req.sequence.start and limit is not None
                and not self.sequences.is_live(req.sequence.id)
                and self.live_sequences() >= limit):
            raise Unavailable(f"the server has {limit} live sequences, its limit "
                              f"(--max-live-sequences); end one or retry later")
        try:
            if req.sequence.start:
                seq, released = self.sequences.start(req.sequence.id, now)
                self.host.end_sequences(released)
            else:
                seq = self.sequences.lookup(req.sequence.id, now)
        except SequenceBusy as exc:
            raise Unavailable(f"model {name!r}: {exc}") from None
        except SequenceError as exc:
            raise InvalidArgument(f"model {name!r}: {exc}") from None
        if req.seq_expect is not None and seq is not req.seq_expect:
            raise InvalidArgument(
                f"model {name!r}: sequence {req.sequence.id!r} was restarted by another "
                f"client; this stream's sequence is over")
        req.seq = seq
        if seq.state is SequenceState.WAITING:
            self._parked_at.setdefault(seq, now)
            self._parked.setdefault(seq, deque()).append(req)
        else:
            self._enqueue(req, now)
        return True

    def _enqueue(self, req: InferRequest, now: float) -> None:
        seq = req.seq
        assert seq is not None and seq.copy is not None
        queue = self._queues.setdefault(seq.copy, BatchQueue(self._policy))
        try:
            queue.push(req, req.rows, req.key, now, group=id(seq))
        except QueueFull:  # bounded above by the server's pending; a copy's share cannot pass
            queue.push_front([(req, req.rows, req.key, now, id(seq))])

    def next_batch(self, now: float) -> Picked | None:
        self._expire_idle(now)
        for copy in self.host.copies:
            queue = self._queues.get(copy.id)
            if queue is None or not len(queue):
                continue
            free = copy.ready and copy.outstanding < 1 and copy.paused_until <= now
            batch = queue.take(now, free)
            if batch is not None:
                return copy, batch
        return None

    def next_wake(self, now: float) -> float | None:
        times = []
        for copy in self.host.copies:
            queue = self._queues.get(copy.id)
            if queue is not None and len(queue) and copy.ready and copy.outstanding < 1:
                deadline = queue.next_deadline()
                if deadline is not None:
                    times.append(max(deadline, copy.paused_until))
        if self.sequences.open_count and self.sequences.max_idle_s > 0:
            times.append(now + max(0.01, self.sequences.max_idle_s / 4))
        return min(times) if times else None

    def requeue(self, copy: Copy, requests: list[InferRequest], now: float) -> None:
        queue = self._queues.setdefault(copy.id, BatchQueue(self._policy))
        queue.push_front((r, r.rows, r.key, now, id(r.seq)) for r in requests)

    def remove(self, req: InferRequest) -> bool:
        """Take an abandoned request out; a cancelled end ends its sequence now."""
        seq = req.seq
        removed = False
        if seq is not None and seq in self._parked:
            parked = self._parked[seq]
            if req in parked:
                parked.remove(req)
                removed = True
        if not removed and seq is not None and seq.copy in self._queues:
            removed = bool(self._queues[seq.copy].remove(lambda r: r is req))
        if removed and seq is not None and req.sequence is not None and req.sequence.end:
            # The end never reached the model: end the sequence now, and tell the worker.
            self.release(seq, "cancelled")
        return removed

    def drain(self) -> list[InferRequest]:
        gone = [r for q in self._queues.values() for r in q.remove(lambda _: True)]
        gone += [r for parked in self._parked.values() for r in parked]
        self._parked.clear()
        self._parked_at.clear()
        return gone

    def _expire_idle(self, now: float) -> None:
        busy = [r.seq for q in self._queues.values() for r in q.items()]
        busy += [r.seq for r in self.host.running()]
        self.host.end_sequences(self.sequences.evict_idle(now, busy))
        self._unpark(now)

    def batch_done(self, requests: list[InferRequest]) -> None:
        now = trio.current_time()
        for r in requests:
            if r.sequence is not None and r.sequence.end and r.seq is not None:
                # The worker saw the end with the batch and dropped the state itself.
                self.sequences.release(r.seq, "ended")
            elif r.seq is not None:
                self.sequences.touch(r.seq, now)
        self._unpark(now)

    def release(self, seq: Sequence, reason: str) -> None:
        """End ``seq`` (tell its copy); its parked requests fail."""
        released = self.sequences.release(seq, reason)
        self.host.end_sequences([released] if released else [])
        self._parked_at.pop(seq, None)
        for r in self._parked.pop(seq, ()):
            self.host.fail(r, InvalidArgument(f"sequence {seq.id!r} was closed"))
        self._unpark(trio.current_time())

    def is_open(self, seq_id: int | str) -> bool:
        try:
            self.sequences.lookup(seq_id, trio.current_time())
        except SequenceError:
            return False
        return True

    def _unpark(self, now: float) -> None:
        # Wake the batcher only when a request moved: this runs inside the batcher's own
        # loop (``next_batch``), where an unconditional wake-up spins it.
        moved = False
        for seq in self.sequences.take_assigned():
            self._parked_at.pop(seq, None)
            for r in self._parked.pop(seq, ()):
                self._enqueue(r, now)
                moved = True
        if moved:
            self.host.wake()

    def copy_ready(self, copy: Copy) -> None:
        self.sequences.add_copy(copy.id)
        self._unpark(trio.current_time())

    def copy_lost(self, copy: Copy, running: list[InferRequest], now: float) -> None:
        """The copy died with its sequences' state: their requests fail, never move."""
        error = ModelError(
            f"model {self.host.config.name!r}: the copy holding this sequence's state died; "
            f"start the sequence again")
        queue = self._queues.pop(copy.id, None)
        for r in [*running, *(queue.remove(lambda _: True) if queue is not None else [])]:
            self.host.fail(r, error)
        self.sequences.remove_copy(copy.id)  # nothing to tell: the worker is gone

    def waiting_since(self, now: float) -> float:
        """The oldest wait among the copies' queues and the requests of sequences parked for
        a slot: a sequence with no copy to hold it is what more copies would serve."""
        delay_s = self.host.config.max_queue_delay_us / 1e6
        ages = [0.0, *(_age(q, now, delay_s) for q in self._queues.values())]
        ages += [now - self._parked_at[seq] for seq, parked in self._parked.items()
                 if parked and seq in self._parked_at]
        return max(ages)

    def retirable(self, copy: Copy) -> bool:
        """A copy holding sequences keeps them: their state lives in it. Only an empty one
        may go (scaling down never ends a client's sequence)."""
        free = self.sequences.free_slots(copy.id)
        return free in (-1, self.sequences.slots_per_copy)  # -1: never took a sequence

    def retiring(self, copy: Copy) -> None:
        self.host.end_sequences(self.sequences.remove_copy(copy.id, "scaled_down"))


Scheduling = SingleQueue | SequenceQueues
