"""One model's serving loop: its batcher task, and the batches in flight.

Where requests wait and which copy runs a batch is the model's scheduling strategy
(``gateway.scheduling``: one queue for a stateless model, a queue per copy with the sequence
table for a stateful one). The batcher task is the Trio adapter over it: it sleeps until a
request arrives, a copy frees up or the oldest request's delay runs out, then sends the
batch the strategy closed to its copy. Results arrive through ``on_result`` / ``on_error``
(called by the inbox task), copies come and go through ``on_copy_ready`` / ``on_copy_lost``
(called by the supervisor). Every request gets exactly one answer: a result, or a typed error.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trio

from gateway import wakeup
from gateway.batching import QueueFull
from gateway.config import ModelConfig
from gateway.errors import (
    DeadlineExceeded,
    InferoxyError,
    InvalidArgument,
    ModelError,
    Unavailable,
)
from gateway.loadboard import LoadBoard
from gateway.request import BatchOutputs, InferRequest, RequestResult
from gateway.scheduling import Scheduling, SequenceQueues, SingleQueue
from gateway.sequences import Released, Sequence, SequenceState, SequenceTable
from gateway.stats import ModelStats
from shm.bytes_tensor import BytesLimits, decode
from shm.datatypes import BYTES, numpy_dtype
from shm.descriptor import BYTES_DTYPE, Descriptor
from shm.messages import (
    NOT_PLACED,
    Batch,
    BatchItem,
    Error,
    Release,
    Reply,
    Result,
    SequenceEnd,
    ToWorker,
)
from shm.segment import SegmentCache
from shm.slab import SlabAllocator
from supervisor.copy import Copy

log = logging.getLogger("inferoxy.model")

# While a copy runs a batch the next one grows in the queue. A data-plane process, one of
# several producers feeding the same copies, keeps one more waiting at each copy: the copy
# runs the batches waiting from every producer as one predict (worker.merge), so batching
# that the producers split is joined again where it counts, and the copy never idles
# through a producer's round trip.
MAX_INFLIGHT_PER_COPY = 1
MAX_INFLIGHT_PER_COPY_SHARED = 2
SEND_RETRY_S = 0.002  # a copy whose socket refused a batch is tried again after this
RELEASE_HOLD_S = 0.005  # output slots a copy may reuse are said with its next batch, or then
RELEASE_HOLD_MAX = 64  # ... or once this many are waiting

_batch_ids = itertools.count(1)
_OBJECT = np.dtype(object)  # a BYTES output, decoded
_ANY_SIZE = BytesLimits(max_elements=1 << 62, max_element_bytes=1 << 62)  # the model's own


def output_dtype(datatype: str) -> np.dtype:
    """The numpy dtype a declared output arrives as (BYTES: an object array of bytes)."""
    return _OBJECT if datatype == BYTES else numpy_dtype(datatype)


def bytes_output(wire: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """A BYTES output of a batch as an object array (``None``: all of it went to regions).
    One copy of each element; ``BytesTensorError`` (a ValueError) if its form is broken."""
    return None if wire is None else decode(wire, shape, _ANY_SIZE)


@dataclass(eq=False, slots=True)
class InflightBatch:
    copy: Copy
    requests: list[InferRequest]
    sent_ns: int


def _item(r: InferRequest) -> BatchItem:
    return BatchItem(r.request_id, r.rows, r.inputs, r.region_inputs, r.output_targets,
                     r.sequence)


class ModelServer:
    def __init__(
        self,
        config: ModelConfig,
        send: Callable[[int, ToWorker], bool],
        slab: SlabAllocator,
        cache: SegmentCache,
        max_inflight_per_copy: int = MAX_INFLIGHT_PER_COPY,
        board: LoadBoard | None = None,
        reply: Reply | None = None,
    ) -> None:
        self.config = config
        self.max_inflight_per_copy = max_inflight_per_copy
        self.board = board  # every producer's outstanding batches per copy (gateway.loadboard)
        self.versions: tuple[str, ...] = (config.version,)  # of its model, set by the gateway
        self._send = send
        self._reply = reply  # where copies answer this producer (None: the gateway's inbox)
        self._slab = slab
        self._cache = cache
        self.copies: list[Copy] = []
        # where requests wait and which copy runs them (gateway.scheduling)
        self.scheduling: Scheduling = (SingleQueue(self) if config.stateless
                                       else SequenceQueues(self))
        self.inflight: dict[int, InflightBatch] = {}
        self.stats = ModelStats()
        self.closed = False  # stopped for good: a request that still finds it is refused
        self._wake = trio.Event()
        self._sleep: trio.CancelScope | None = None  # the batcher's wait, while it waits
        self._out_dtypes = {t.name: output_dtype(t.datatype) for t in config.outputs}

    # -- state seen by bridges -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(c.ready for c in self.copies)

    @property
    def pending(self) -> int:
        return self.scheduling.queued + sum(len(b.requests) for b in self.inflight.values())

    @property
    def sequences(self) -> SequenceTable | None:
        """A stateful model's sequence table (None: stateless)."""
        scheduling = self.scheduling
        return scheduling.sequences if isinstance(scheduling, SequenceQueues) else None

    def waiting_since(self, now: float) -> float:
        """How long the oldest request that no copy has taken yet has waited (0: none)."""
        return self.scheduling.waiting_since(now)

    def retirable(self, copy: Copy) -> bool:
        """May autoscaling take ``copy`` away now (a stateful copy: not while it holds a
        sequence)?"""
        return self.scheduling.retirable(copy)

    def on_copy_retiring(self, copy: Copy) -> None:
        """``copy`` is going (autoscaling): nothing new is to be given to it."""
        self.scheduling.retiring(copy)

    def is_open(self, seq_id: int | str) -> bool:
        """Whether a sequence of this (stateful) model is open."""
        scheduling = self.scheduling
        return isinstance(scheduling, SequenceQueues) and scheduling.is_open(seq_id)

    def close_sequence(self, seq: Sequence, reason: str = "closed") -> None:
        """End a stream's own incarnation from outside a request (its socket closed)."""
        scheduling = self.scheduling
        if isinstance(scheduling, SequenceQueues) and seq.state is not SequenceState.RELEASED:
            scheduling.release(seq, reason)

    # -- what the scheduling strategy asks (gateway.scheduling.Host) ---------------------------

    def running(self) -> list[InferRequest]:
        return [r for flight in self.inflight.values() for r in flight.requests]

    def fail(self, req: InferRequest, error: InferoxyError) -> None:
        self._free_inputs(req)
        if not req.abandoned:
            self._finish(req, error=error)

    def end_sequences(self, released: list[Released]) -> None:
        for r in released:
            self._send(r.copy, SequenceEnd(r.sequence.id, r.reason))
            log.info("sequence %r of model %s released from copy %d (%s)",
                     r.sequence.id, self.config.name, r.copy, r.reason)

    def wake(self) -> None:
        self._wake.set()

    # -- requests ----------------------------------------------------------------------------

    def submit(self, req: InferRequest) -> None:
        """Queue a request; its input slots now belong to the core. Raises when full."""
        if self.closed or not self.copies:
            raise Unavailable(f"model {self.config.name!r} version {self.config.version} is "
                              f"not serving (it was stopped or has no copies)")
        req.enqueued_ns = time.perf_counter_ns()
        now = trio.current_time()
        try:
            due = self.scheduling.admit(req, now)
        except QueueFull as exc:
            self.stats.record_failure("rejected", 0)
            raise Unavailable(f"model {self.config.name!r} is overloaded: {exc}") from None
        except Unavailable:
            self.stats.record_failure("rejected", 0)
            raise
        # Waking the batcher for every request cost a trip through the scheduler each;
        # it is asleep until the oldest request's deadline, which a later one cannot move.
        if due:
            # A batch due now on a free copy goes at once, from here: at low load (one
            # request in flight) the trip through the batcher task was a scheduler pass
            # and an epoll round per request.
            picked = self.scheduling.next_batch(now)
            if picked is not None:
                self._dispatch(*picked)
            else:
                self._wake.set()

    async def wait(self, req: InferRequest) -> RequestResult:
        """Wait for the answer; on deadline or cancellation the request is abandoned safely."""
        try:
            with trio.move_on_at(req.deadline):
                await req.done.wait()
        finally:
            if not req.done.is_set():  # deadline passed, or the client went away
                self._abandon(req)
        if req.result is not None:
            return req.result
        if req.error is not None:
            raise req.error
        raise self._timed_out(req)

    def expire(self, req: InferRequest) -> DeadlineExceeded:
        """``wait`` without a task (``InferRequest.on_done`` callers): the deadline passed,
        the request is abandoned; the error to answer with."""
        self._abandon(req)
        return self._timed_out(req)

    def cancel(self, req: InferRequest) -> None:
        """``wait`` without a task: the client went away; no answer is due."""
        self._abandon(req)

    def _timed_out(self, req: InferRequest) -> DeadlineExceeded:
        elapsed = time.perf_counter_ns() - req.enqueued_ns
        self.stats.latency.observe(elapsed)
        self.stats.record_failure("timeout", elapsed)
        self._log_failure(req, "timeout", "no answer within the request's timeout")
        return DeadlineExceeded(
            f"model {self.config.name!r} did not answer within the request's timeout"
        )

    def _abandon(self, req: InferRequest) -> None:
        req.abandoned = True
        if self.scheduling.remove(req):  # never dispatched: its slots are ours
            self._free_inputs(req)
        # in flight: the worker may still read the inputs; on_result/on_error frees them.

    def _free_inputs(self, req: InferRequest) -> None:
        slots, req.slots = req.slots, []
        for slot in slots:
            self._slab.free(slot)
        if req.on_inputs_freed is not None:
            notify, req.on_inputs_freed = req.on_inputs_freed, None
            notify()

    def _finish(self, req: InferRequest, *, result: RequestResult | None = None,
                error: InferoxyError | None = None) -> None:
        elapsed = time.perf_counter_ns() - req.enqueued_ns
        self.stats.latency.observe(elapsed)
        if error is not None:
            req.error = error
            reason = {ModelError: "model_error", Unavailable: "unavailable"}.get(
                type(error), "other")
            self.stats.record_failure(reason, elapsed)
            self._log_failure(req, reason, str(error))
        else:
            req.result = result
            self.stats.success.add(elapsed)
        req.done.set()
        if req.on_done is not None:
            req.on_done(req)

    def fail_request(self, req: InferRequest, error: InferoxyError) -> None:
        """Answer a request taken out of the queue with ``error``; its inputs are freed."""
        self._free_inputs(req)
        self._finish(req, error=error)

    def _log_failure(self, req: InferRequest, reason: str, message: str) -> None:
        """One line per failed request: its id, model and reason, never tensor data."""
        log.warning("request %r to %s version %s failed (%s): %s", req.request_id,
                    self.config.name, self.config.version, reason,
                    message.splitlines()[0][:300] if message else "")

    # -- the batcher task ------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            self._flush_releases(now)
            picked = self.scheduling.next_batch(now)
            if picked is not None:
                self._dispatch(*picked)
                await trio.lowlevel.checkpoint()
                continue
            wake_at = self.scheduling.next_wake(now)
            if wake_at is not None:
                wakeup.wake_at(wake_at)  # epoll alone would round the wait up to whole ms
            held = [c.releases_since + RELEASE_HOLD_S for c in self.copies if c.releases]
            if held:
                wake_at = min([*held, wake_at] if wake_at is not None else held)
            with trio.move_on_at(wake_at if wake_at is not None else float("inf")) as sleep:
                self._sleep = sleep
                await self._wake.wait()
            self._sleep = None
            self._wake = trio.Event()

    def free_copy(self, now: float) -> Copy | None:
        best: Copy | None = None
        best_key: tuple[int, float] = (0, 0.0)
        most = self.max_inflight_per_copy
        board = self.board
        for c in self.copies:
            if c.ready and c.outstanding < most and c.paused_until <= now:
                # The least loaded first: every producer's batches there when there are
                # several producers (the board), else this one's own (the same number).
                key = (board.load(c.id) if board is not None and board.rows > 1
                       else c.outstanding, c.last_dispatch)
                if best is None or key < best_key:
                    best, best_key = c, key
        return best

    def _set_outstanding(self, copy: Copy, n: int) -> None:
        """``copy.outstanding``, and this producer's cell of the load board with it."""
        if self.board is not None and n != copy.outstanding:
            self.board.add(copy.id, n - copy.outstanding)
        copy.outstanding = n

    def _dispatch(self, copy: Copy, batch: list[InferRequest]) -> None:
        batch_id = next(_batch_ids)
        now_ns = time.perf_counter_ns()
        releases, copy.releases = copy.releases, []
        message = Batch(
            batch_id, [_item(r) for r in batch], batch[0].parameters,
            # stateless: the copy may run it with other producers' batches
            self.config.max_rows if self.config.stateless else None,
            self._reply, releases)
        if not self._send(copy.id, message):
            copy.releases[:0] = releases  # still to be said
            # Not connected yet (HELLO can overtake the worker's connect) or not reading:
            # keep the batch at the head and try this copy again shortly. A worker that
            # never reads is caught by the supervisor's watchdog.
            log.debug("copy %d of %s is not taking batches yet", copy.id, self.config.name)
            self.scheduling.requeue(copy, batch, trio.current_time())
            copy.paused_until = trio.current_time() + SEND_RETRY_S
            return
        self._set_outstanding(copy, copy.outstanding + 1)
        copy.last_dispatch = trio.current_time()
        self.inflight[batch_id] = InflightBatch(copy, batch, now_ns)
        for r in batch:
            r.attempts += 1
            r.dispatched_ns = now_ns
            self.stats.queue.add(now_ns - r.enqueued_ns)
            self.stats.queue_delay.observe(now_ns - r.enqueued_ns)

    # -- answers from workers ----------------------------------------------------------------

    def on_result(self, copy: Copy, result: Result) -> None:
        flight = self.inflight.pop(result.id, None)
        if flight is None or flight.copy is not copy:
            # A late answer for a batch already retried elsewhere: let the worker reuse its slots.
            self._release_outputs(copy, result)
            return
        self._copy_answered(copy)
        requests = flight.requests
        rows = sum(r.rows for r in requests)
        try:
            arrays, shapes = self._output_views(result.outputs, rows)
        except ModelError as exc:
            self._release_outputs(copy, result)
            self._fail_batch(requests, exc)
            self._batch_done(requests)
            return
        for r in requests:
            self._free_inputs(r)
        self.stats.record_batch(len(requests), rows, result.timing)
        item_errors = result.item_errors
        live = [r for i, r in enumerate(requests) if not r.abandoned and i not in item_errors]
        outputs = BatchOutputs(arrays, len(live), lambda: self._release_outputs(copy, result))
        if not live:
            outputs.arrays = {}
            self._release_outputs(copy, result)
        row = 0
        for i, r in enumerate(requests):
            rows_of = slice(row, row + r.rows)
            row += r.rows
            if r.abandoned:
                continue
            if i in item_errors:
                self._finish(r, error=InvalidArgument(item_errors[i]))
                continue
            mine = {n: a[rows_of] for n, a in arrays.items() if n not in r.output_targets}
            in_regions = {n: (r.rows, *shapes[n][1:]) for n in r.output_targets}
            self._finish(r, result=RequestResult(mine, outputs, in_regions))
        self._batch_done(requests)

    def on_error(self, copy: Copy, error: Error) -> None:
        flight = self.inflight.pop(error.id, None)
        if flight is None or flight.copy is not copy:
            return
        self._copy_answered(copy)
        self._fail_batch(flight.requests,
                         ModelError(f"model {self.config.name!r}: {error.message}"))
        self._batch_done(flight.requests)

    def _batch_done(self, requests: list[InferRequest]) -> None:
        """A batch was answered, one way or another (stateful models release sequences)."""
        self.scheduling.batch_done(requests)

    def _copy_answered(self, copy: Copy) -> None:
        self._set_outstanding(copy, max(0, copy.outstanding - 1))
        self._wake.set()

    def _fail_batch(self, requests: list[InferRequest], error: InferoxyError) -> None:
        for r in requests:
            self._free_inputs(r)
            if not r.abandoned:
                self._finish(r, error=error)

    def _output_views(
        self, raw: dict[str, Descriptor], rows: int
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
        """Views of the outputs the worker placed in its slab, and every output's shape.

        An output that every request of the batch sent to its own region has no slab copy:
        the worker reports only its dtype and shape (segment ``None``).
        """
        if self.config.decoupled:
            return self._decoupled_views(raw, rows)
        arrays: dict[str, np.ndarray] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for spec in self.config.outputs:
            if spec.name not in raw:
                raise ModelError(f"model {self.config.name!r} did not return output {spec.name!r}")
            try:
                desc = raw[spec.name]
                placed = desc.segment != NOT_PLACED
                dtype = np.dtype(desc.dtype)
                shape = desc.shape
                view = self._cache.view(desc) if placed else None
                if desc.dtype == BYTES_DTYPE:  # decoded now: requests take their rows
                    dtype, view = _OBJECT, bytes_output(view, shape)
            except (ValueError, TypeError, AssertionError, OSError, IndexError) as exc:
                raise ModelError(
                    f"model {self.config.name!r}: output {spec.name!r} is unreadable"
                ) from exc
            if dtype != self._out_dtypes[spec.name]:
                raise ModelError(
                    f"model {self.config.name!r}: output {spec.name!r} is {dtype}, "
                    f"declared {spec.datatype}"
                )
            if not shape or shape[0] != rows or not spec.accepts(tuple(shape[1:])):
                raise ModelError(
                    f"model {self.config.name!r}: output {spec.name!r} has shape "
                    f"{list(shape)}, declared [{rows}, {', '.join(map(str, spec.shape))}]"
                )
            shapes[spec.name] = shape
            if view is not None:
                arrays[spec.name] = view
        return arrays, shapes

    def _decoupled_views(
        self, raw: dict[str, Descriptor], rows: int
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
        """A decoupled model's outputs: ``[rows, responses, *declared]`` each (the worker
        stacked the responses); none at all when it gave no response."""
        name = self.config.name
        arrays: dict[str, np.ndarray] = {}
        if not raw:  # no response: empty outputs of the declared types
            for spec in self.config.outputs:
                dims = [max(d, 0) for d in spec.shape]
                arrays[spec.name] = np.empty((rows, 0, *dims), self._out_dtypes[spec.name])
            return arrays, {n: a.shape for n, a in arrays.items()}
        for spec in self.config.outputs:
            desc = raw.get(spec.name)
            try:
                if desc is None or desc.segment == NOT_PLACED:
                    raise ValueError("no slab holds it")
                view = self._cache.view(desc)
                if desc.dtype == BYTES_DTYPE:
                    view = decode(view, desc.shape, _ANY_SIZE)
            except (ValueError, TypeError, AssertionError, OSError, IndexError) as exc:
                raise ModelError(f"model {name!r}: output {spec.name!r} is missing or "
                                 f"unreadable") from exc
            if (view.dtype != self._out_dtypes[spec.name] or view.ndim < 2
                    or view.shape[0] != rows or not spec.accepts(view.shape[2:])):
                raise ModelError(
                    f"model {name!r}: output {spec.name!r} of each response is "
                    f"{view.dtype} {list(view.shape[2:])}, declared {spec.datatype} "
                    f"{list(spec.shape)}")
            arrays[spec.name] = view
        return arrays, {n: a.shape for n, a in arrays.items()}

    def _release_outputs(self, copy: Copy, result: Result) -> None:
        """The copy may reuse the output slots of ``result``. Said with the next batch sent to
        it (one message less per batch), or on its own after ``RELEASE_HOLD_S``."""
        slots = result.slots()
        if not slots:
            return
        if not copy.releases:
            copy.releases_since = now = trio.current_time()
            sleep = self._sleep
            if sleep is not None and sleep.deadline > now + RELEASE_HOLD_S:
                sleep.deadline = now + RELEASE_HOLD_S  # no wake-up now, one on time
        copy.releases.extend(slots)
        if len(copy.releases) >= RELEASE_HOLD_MAX:
            self._send_releases(copy)

    def _send_releases(self, copy: Copy) -> None:
        slots, copy.releases = copy.releases, []
        self._send(copy.id, Release(slots))

    def _flush_releases(self, now: float) -> None:
        for copy in self.copies:
            if copy.releases and now >= copy.releases_since + RELEASE_HOLD_S:
                self._send_releases(copy)

    # -- copies --------------------------------------------------------------------------------

    def on_copy_ready(self, copy: Copy) -> None:
        copy.releases.clear()  # slots of a process that is gone
        self._set_outstanding(copy, 0)
        copy.paused_until = 0.0
        self.scheduling.copy_ready(copy)
        self._wake.set()

    def on_copy_lost(self, copy: Copy) -> None:
        """The copy's process is gone: what it was running is retried or failed, as the
        scheduling strategy says (stateless: once elsewhere; stateful: failed)."""
        copy.releases.clear()
        running: list[InferRequest] = []
        for bid in [b for b, f in self.inflight.items() if f.copy is copy]:
            for r in self.inflight.pop(bid).requests:
                if r.abandoned:
                    self._free_inputs(r)
                else:
                    running.append(r)
        if running:
            log.warning("copy %d of %s died with %d request(s) running",
                        copy.id, self.config.name, len(running))
        self.scheduling.copy_lost(copy, running, trio.current_time())
        self._set_outstanding(copy, 0)
        self._wake.set()

    def fail_all(self, error: InferoxyError) -> None:
        """Shutdown: answer everything still waiting."""
        for r in self.scheduling.drain():
            self.fail(r, error)
        for flight in list(self.inflight.values()):
            self._fail_batch(flight.requests, error)
        self.inflight.clear()
