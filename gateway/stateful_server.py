"""Serving a stateful model: sequences pinned to copies (``gateway.sequences``), in order.

The Trio adapter over ``SequenceTable``. Each copy has its own queue; a request joins the
queue of the copy its sequence holds (or is parked until a waiting sequence gets a slot).
A batch is formed per copy with at most one request per sequence (``BatchQueue`` groups),
so frames of different sequences share a batch and no sequence is ever reordered. The worker
is told when a sequence ends without a request to say so (idle eviction, a cancelled end, a
closed stream). A copy that dies takes its sequences' state with it: their requests fail
clearly and are never retried elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from gateway.batching import BatchPolicy, BatchQueue, QueueFull
from gateway.errors import InvalidArgument, ModelError, Unavailable
from gateway.model_server import ModelServer
from gateway.request import InferRequest
from gateway.sequences import (
    Released,
    Sequence,
    SequenceBusy,
    SequenceError,
    SequenceState,
    SequenceTable,
)
from shm import wire
from supervisor.copy import Copy

log = logging.getLogger("inferoxy.sequences")


class StatefulModelServer(ModelServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        self.sequences = SequenceTable(
            slots_per_copy=c.max_sequences_per_copy,
            max_idle_s=c.max_sequence_idle_us / 1e6,
            max_waiting=c.max_queue_size,
        )
        self._policy = BatchPolicy(c.max_rows, c.max_queue_delay_us, c.max_queue_size)
        self._queues: dict[int, BatchQueue[InferRequest]] = {}
        self._parked: dict[Sequence, deque[InferRequest]] = {}
        self._queued = 0
        # Live sequences of every stateful model of the gateway, and their limit (the
        # gateway sets both; alone, a server counts its own and has no limit).
        self.live_sequences: Callable[[], int] = lambda: self.sequences.live_count
        self.max_live_sequences: int | None = None

    @property
    def pending(self) -> int:
        parked = sum(len(q) for q in self._parked.values())
        return parked + sum(len(q) for q in self._queues.values()) + sum(
            len(b.requests) for b in self.inflight.values()
        )

    def waiting_since(self, now: float) -> float:
        """The oldest wait among the copies' queues and the requests of sequences parked for a
        slot: a sequence with no copy to hold it is what more copies would serve."""
        ages = [0.0]
        delay_s = self.config.max_queue_delay_us / 1e6
        for queue in self._queues.values():
            head = queue.next_deadline()
            if head is not None:
                ages.append(now - (head - delay_s))
        now_ns = time.perf_counter_ns()
        ages += [(now_ns - parked[0].enqueued_ns) / 1e9 for parked in self._parked.values()
                 if parked]
        return max(ages)

    def retirable(self, copy: Copy) -> bool:
        """A copy holding sequences keeps them: their state lives in it. Only an empty one
        may go (scaling down never ends a client's sequence)."""
        free = self.sequences.free_slots(copy.id)
        return free in (-1, self.sequences.slots_per_copy)  # -1: never took a sequence

    def on_copy_retiring(self, copy: Copy) -> None:
        self._notify(self.sequences.remove_copy(copy.id, "scaled_down"))

    # -- requests ----------------------------------------------------------------------------

    def submit(self, req: InferRequest) -> None:
        name = self.config.name
        if req.sequence is None:
            raise InvalidArgument(
                f"model {name!r} is stateful: every request needs parameters.sequence_id "
                f"(and sequence_start on a sequence's first request)"
            )
        if self.closed or not self.copies:
            raise Unavailable(f"model {name!r} is not serving (it was stopped or has no copies)")
        if self.pending >= self.config.max_queue_size:
            self.stats.record_failure("rejected", 0)
            raise Unavailable(f"model {name!r} is overloaded: queue is full")
        now = trio.current_time()
        limit = self.max_live_sequences
        if (req.sequence.start and limit is not None
                and not self.sequences.is_live(req.sequence.id)
                and self.live_sequences() >= limit):
            self.stats.record_failure("rejected", 0)
            raise Unavailable(f"the server has {limit} live sequences, its limit "
                              f"(--max-live-sequences); end one or retry later")
        try:
            if req.sequence.start:
                seq, released = self.sequences.start(req.sequence.id, now)
                self._notify(released)
            else:
                seq = self.sequences.lookup(req.sequence.id, now)
        except SequenceBusy as exc:
            self.stats.record_failure("rejected", 0)
            raise Unavailable(f"model {name!r}: {exc}") from None
        except SequenceError as exc:
            raise InvalidArgument(f"model {name!r}: {exc}") from None
        if req.seq_expect is not None and seq is not req.seq_expect:
            raise InvalidArgument(
                f"model {name!r}: sequence {req.sequence.id!r} was restarted by another "
                f"client; this stream's sequence is over"
            )
        req.seq = seq
        req.enqueued_ns = time.perf_counter_ns()
        if seq.state is SequenceState.WAITING:
            self._parked.setdefault(seq, deque()).append(req)
        else:
            self._enqueue(req)
        self._wake.set()

    def _enqueue(self, req: InferRequest) -> None:
        seq = req.seq
        assert seq is not None and seq.copy is not None
        queue = self._queues.setdefault(seq.copy, BatchQueue(self._policy))
        try:
            queue.push(req, req.rows, req.key, trio.current_time(), group=id(seq))
        except QueueFull:  # bounded above by pending; a copy's share cannot exceed it
            queue.push_front([(req, req.rows, req.key, trio.current_time(), id(seq))])

    def _abandon(self, req: InferRequest) -> None:
        req.abandoned = True
        seq = req.seq
        removed = False
        if seq is not None and seq in self._parked:
            parked = self._parked[seq]
            if req in parked:
                parked.remove(req)
                removed = True
        if not removed and seq is not None and seq.copy in self._queues:
            removed = bool(self._queues[seq.copy].remove(lambda r: r is req))
        if removed:
            self._free_inputs(req)
            if req.sequence is not None and req.sequence.end:
                # The end never reached the model: end the sequence now, and tell the worker.
                self._release(seq, "cancelled")

    # -- batching per copy -------------------------------------------------------------------

    def _next_batch(self, now: float) -> tuple[Copy, list[InferRequest]] | None:
        self._expire_idle(now)
        for copy in self.copies:
            queue = self._queues.get(copy.id)
            if queue is None or not len(queue):
                continue
            free = copy.ready and copy.outstanding < 1 and copy.paused_until <= now
            batch = queue.take(now, free)
            if batch is not None:
                return copy, batch
        return None

    def _next_wake(self, now: float) -> float | None:
        times = []
        for copy in self.copies:
            queue = self._queues.get(copy.id)
            if queue is not None and len(queue) and copy.ready and copy.outstanding < 1:
                deadline = queue.next_deadline()
                if deadline is not None:
                    times.append(max(deadline, copy.paused_until))
        if self.sequences.open_count and self.sequences.max_idle_s > 0:
            times.append(now + max(0.01, self.sequences.max_idle_s / 4))
        return min(times) if times else None

    def _requeue(self, copy: Copy, requests: list[InferRequest]) -> None:
        queue = self._queues.setdefault(copy.id, BatchQueue(self._policy))
        queue.push_front(
            (r, r.rows, r.key, trio.current_time(), id(r.seq)) for r in requests
        )

    def _expire_idle(self, now: float) -> None:
        busy = [r.seq for q in self._queues.values() for r in q.items()]
        busy += [r.seq for f in self.inflight.values() for r in f.requests]
        self._notify(self.sequences.evict_idle(now, busy))
        self._unpark()

    # -- answers and ends ----------------------------------------------------------------------

    def _batch_done(self, requests: list[InferRequest]) -> None:
        for r in requests:
            if r.sequence is not None and r.sequence.end and r.seq is not None:
                # The worker saw the end with the batch and dropped the state itself.
                self.sequences.release(r.seq, "ended")
            elif r.seq is not None:
                self.sequences.touch(r.seq, trio.current_time())
        self._unpark()

    def close_sequence(self, seq: Sequence, reason: str = "closed") -> None:
        """End a stream's own incarnation from outside a request (its socket closed)."""
        if seq.state is not SequenceState.RELEASED:
            self._release(seq, reason)

    def is_open(self, seq_id: int | str) -> bool:
        try:
            self.sequences.lookup(seq_id, trio.current_time())
        except SequenceError:
            return False
        return True

    def _release(self, seq: Sequence, reason: str) -> None:
        released = self.sequences.release(seq, reason)
        self._notify([released] if released else [])
        for r in self._parked.pop(seq, ()):  # a waiting sequence's parked requests
            self._free_inputs(r)
            self._finish(r, error=InvalidArgument(f"sequence {seq.id!r} was closed"))
        self._unpark()

    def _notify(self, released: list[Released]) -> None:
        for r in released:
            self._send(r.copy, wire.SEQUENCE_END, {"sequence_id": r.sequence.id,
                                                   "reason": r.reason})
            log.info("sequence %r of model %s released from copy %d (%s)",
                     r.sequence.id, self.config.name, r.copy, r.reason)

    def _unpark(self) -> None:
        # Wake the batcher only when a request moved: this runs inside the batcher's own
        # loop (``_next_batch``), where an unconditional wake-up spins it.
        moved = False
        for seq in self.sequences.take_assigned():
            for r in self._parked.pop(seq, ()):
                self._enqueue(r)
                moved = True
        if moved:
            self._wake.set()

    # -- copies --------------------------------------------------------------------------------

    def on_copy_ready(self, copy: Copy) -> None:
        super().on_copy_ready(copy)
        self.sequences.add_copy(copy.id)
        self._unpark()

    def on_copy_lost(self, copy: Copy) -> None:
        """The copy died with its sequences' state: their requests fail, never move."""
        error = ModelError(
            f"model {self.config.name!r}: the copy holding this sequence's state died; "
            f"start the sequence again"
        )
        for bid in [b for b, f in self.inflight.items() if f.copy is copy]:
            self._fail_batch(self.inflight.pop(bid).requests, error)
        queue = self._queues.pop(copy.id, None)
        if queue is not None:
            self._fail_batch(queue.remove(lambda _: True), error)
        self.sequences.remove_copy(copy.id)  # nothing to tell: the worker is gone
        self._set_outstanding(copy, 0)
        self._wake.set()

    def fail_all(self, error: Any) -> None:
        for queue in self._queues.values():
            self._fail_batch(queue.remove(lambda _: True), error)
        for parked in self._parked.values():
            self._fail_batch(list(parked), error)
        self._parked.clear()
        super().fail_all(error)
