"""``gateway.inflight``: a submitted request gets exactly one answer, whichever comes first.

The record sits on a real ``ModelServer`` with real slabs (the bench of
``test_model_server_unit``): the model's answer, the deadline and the client leaving race, and
each test checks what reaches ``deliver`` -- the one place the REST fast path, the gRPC call
and the data-plane pool send their answer from -- and that the request's memory comes back.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import trio

from gateway.errors import DeadlineExceeded, InferoxyError, Unavailable
from gateway.inflight import InFlight, InFlightDeadlines
from gateway.request import InferRequest, RequestResult
from tests.test_model_server_unit import Bench, run, settle


class Recorded(InFlight):
    __slots__ = ("__weakref__", "answers", "values")

    def __init__(self, bench: Bench, request: InferRequest) -> None:
        bench.server.submit(request)
        super().__init__(bench.server, request)
        self.answers: list[tuple[RequestResult | None, InferoxyError | None]] = []
        self.values: list[float] = []  # the first output value of each result delivered

    def deliver(self, result: RequestResult | None, error: InferoxyError | None) -> None:
        self.answers.append((result, error))
        if result is not None:
            self.values.append(float(np.asarray(result.outputs["Y"])[0, 0]))
            result.release()


class Quiet(Recorded):
    """A record whose cancellation is not answered (the REST fast path's kind)."""

    __slots__ = ()
    ANSWERS_CANCEL = False


def test_the_models_answer_is_delivered_once_and_later_events_do_nothing() -> None:
    async def test(b: Bench) -> None:
        deadlines = InFlightDeadlines()
        r = b.request(1.0)
        rec = Recorded(b, r)
        deadlines.add(rec)
        assert len(deadlines) == 1
        await settle()
        b.answer(b.batches()[0][1])
        assert len(rec.answers) == 1
        result, error = rec.answers[0]
        assert error is None and result is not None
        assert rec.values == [2.0]
        assert r.on_done is None and r.result is None  # the cycle is broken, the result moved
        assert len(deadlines) == 0 and deadlines.pending() == []
        rec.expire()
        rec.cancel()
        deadlines.expire_due(r.deadline + 1)
        assert len(rec.answers) == 1
        assert b.inputs.slots_in_use == 0

    run(test)


def test_the_deadline_answers_with_a_timeout_and_the_late_answer_is_dropped() -> None:
    async def test(b: Bench) -> None:
        deadlines = InFlightDeadlines()
        r = b.request(1.0)
        rec = Recorded(b, r)
        deadlines.add(rec)
        await settle()
        deadlines.expire_due(r.deadline - 1)
        assert rec.answers == []
        deadlines.expire_due(r.deadline)
        assert len(rec.answers) == 1
        result, error = rec.answers[0]
        assert result is None and isinstance(error, DeadlineExceeded)
        assert len(deadlines) == 0
        b.answer(b.batches()[0][1])  # the worker answers late: nobody is told
        assert len(rec.answers) == 1
        assert b.inputs.slots_in_use == 0  # freed with the worker's answer

    run(test)


def test_the_deadline_task_expires_what_is_due() -> None:
    async def test(b: Bench) -> None:
        deadlines = InFlightDeadlines()
        r = b.request(1.0)
        r.deadline = trio.current_time() + 0.05
        rec = Recorded(b, r)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deadlines.run)
            await trio.sleep(0)
            deadlines.add(rec)  # an earlier deadline than the task waits for: it wakes
            with trio.fail_after(5):
                while not rec.answers:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert isinstance(rec.answers[0][1], DeadlineExceeded)

    run(test)


def test_a_cancelled_request_is_answered_unavailable_or_not_at_all() -> None:
    async def test(b: Bench) -> None:
        # one copy, busy with the first request: the others wait in the queue
        first = Recorded(b, b.request(0.0))
        await settle()
        answered = Recorded(b, b.request(1.0))
        quiet = Quiet(b, b.request(2.0))
        assert b.server.scheduling.queued == 2
        answered.cancel()
        quiet.cancel()
        assert len(answered.answers) == 1 and answered.answers[0][0] is None
        assert isinstance(answered.answers[0][1], Unavailable)
        assert quiet.answers == []
        assert b.server.scheduling.queued == 0  # never dispatched: taken out, slots freed
        assert b.inputs.slots_in_use == 1  # the first request's only
        answered.cancel()
        answered.expire()
        assert len(answered.answers) == 1
        b.answer(b.batches()[0][1])
        assert len(first.answers) == 1 and first.answers[0][1] is None
        assert b.inputs.slots_in_use == 0

    run(test, copies=1)


def test_an_answered_record_is_freed_without_the_cyclic_collector() -> None:
    async def test(b: Bench) -> None:
        deadlines = InFlightDeadlines()
        rec = Recorded(b, b.request(1.0))
        deadlines.add(rec)
        await settle()
        b.answer(b.batches()[0][1])
        assert len(rec.answers) == 1
        gone = trio.Event()
        weakref.finalize(rec, gone.set)
        gc.disable()
        try:
            del rec
            assert gone.is_set()
        finally:
            gc.enable()

    run(test)
