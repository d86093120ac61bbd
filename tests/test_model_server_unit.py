"""``ModelServer`` without processes or sockets: dispatch, answers, retries, refusals.

The server is driven as the gateway drives it — ``submit`` from a bridge, ``on_result`` /
``on_copy_lost`` from the worker link — with real slabs in shared memory (inputs in one, a
"worker's" outputs in another) and a ``send`` that records the batches instead of writing
them to a socket. Each test runs in milliseconds; the end-to-end tests with real workers
stay beside these.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import trio

from gateway.config import parse_model
from gateway.errors import InvalidArgument, ModelError, Unavailable
from gateway.model_server import ModelServer
from gateway.request import InferRequest
from shm.messages import (
    Batch,
    Result,
    SequenceRef,
    ToWorker,
    decode_from_worker,
    decode_to_worker,
    encode,
)
from shm.segment import SegmentCache
from shm.slab import SlabAllocator
from supervisor.copy import Copy
from supervisor.lifecycle import CopyState
from supervisor.placement import CPU

ROW = 2  # FP32 values per row


class Bench:
    """One server, its copies, its slabs, and every message it sent."""

    def __init__(self, *, batch: int = 4, queue: int = 8, stateless: bool = True,
                 copies: int = 2, refuse_sends: int = 0) -> None:
        self.config = parse_model("m", {
            "entrypoint": "examples.models.stub:Identity", "batch_size": batch,
            "max_queue_delay_us": 0, "max_queue_size": queue, "stateless": stateless,
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [ROW]}],
            "outputs": [{"name": "Y", "datatype": "FP32", "shape": [ROW]}],
        })
        tag = f"ifxu-{os.getpid()}-{id(self) & 0xFFFF:x}"
        self.inputs = SlabAllocator(f"{tag}-in", limit_bytes=1 << 20, segment_bytes=1 << 16)
        self.outputs = SlabAllocator(f"{tag}-out", limit_bytes=1 << 20, segment_bytes=1 << 16)
        self.sent: list[tuple[int, ToWorker]] = []  # as the worker decodes them
        self.refuse_sends = refuse_sends
        self.server = ModelServer(self.config, self.send, self.inputs, SegmentCache())
        self.worker_cache = SegmentCache()
        for i in range(copies):
            copy = Copy(i + 1, "m", CPU, state=CopyState.READY)
            self.server.copies.append(copy)
            self.server.on_copy_ready(copy)  # as the supervisor says it

    def send(self, copy_id: int, message: ToWorker) -> bool:
        if isinstance(message, Batch) and self.refuse_sends > 0:
            self.refuse_sends -= 1
            return False
        self.sent.append((copy_id, decode_to_worker(encode(message))))  # through the wire
        return True

    def batches(self) -> list[tuple[int, Batch]]:
        return [(cid, m) for cid, m in self.sent if isinstance(m, Batch)]

    def request(self, value: float, rows: int = 1,
                sequence: SequenceRef | None = None) -> InferRequest:
        slot = self.inputs.allocate(rows * ROW * 4)
        slot.view("float32", (rows, ROW))[:] = value
        return InferRequest("m", "1", {"X": slot.descriptor("float32", (rows, ROW))}, [slot],
                            rows, ("k",), {}, trio.current_time() + 30, sequence=sequence)

    def answer(self, batch: Batch, *, rows: int | None = None,
               item_errors: dict[int, str] | None = None) -> None:
        """What an identity model's worker sends back for ``batch`` (values + 1)."""
        copy = next(c for c in self.server.copies if c.id == self.copy_of(batch))
        n = rows if rows is not None else batch.rows
        slot = self.outputs.allocate(max(n, 1) * ROW * 4)
        out = slot.view("float32", (n, ROW))
        at = 0
        for item in batch.items:
            held = self.worker_cache.view(item.inputs["X"])
            take = min(held.shape[0], n - at)
            out[at:at + take] = held[:take] + 1  # what the worker reads: the request's slot
            at += take
        result = Result(copy.id, batch.id, {"Y": slot.descriptor("float32", (n, ROW))},
                        item_errors=item_errors or {})
        message = decode_from_worker(encode(result))
        assert isinstance(message, Result)
        self.server.on_result(copy, message)

    def copy_of(self, batch: Batch) -> int:
        return next(cid for cid, body in self.batches() if body is batch)

    def close(self) -> None:
        self.server._cache.close()
        self.worker_cache.close()
        self.inputs.close()
        self.outputs.close()


def run(test: Callable[[Bench], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        bench = Bench(**kwargs)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bench.server.run)
                await test(bench)
                nursery.cancel_scope.cancel()
        finally:
            bench.close()

    trio.run(main)


async def settle() -> None:
    """Let the batcher task run what is due."""
    for _ in range(5):
        await trio.sleep(0)


def test_batches_go_to_free_copies_and_each_request_gets_its_own_rows() -> None:
    async def test(b: Bench) -> None:
        r1, r2, r3 = b.request(1.0), b.request(2.0, rows=2), b.request(3.0)
        for r in (r1, r2, r3):
            b.server.submit(r)
        await settle()
        batches = b.batches()
        # nothing waits (max_queue_delay_us 0): r1 alone to one copy, r2 to the other; r3
        # waits for a copy, since each holds one batch
        assert [cid for cid, _ in batches] == [1, 2]
        assert [len(body.items) for _, body in batches] == [1, 1]
        assert b.server.scheduling.queued == 1
        b.answer(batches[0][1])
        await settle()
        assert r1.done.is_set() and r1.result is not None
        np.testing.assert_array_equal(r1.result.outputs["Y"], np.full((1, ROW), 2.0))
        assert [cid for cid, _ in b.batches()] == [1, 2, 1]  # r3 went to the copy now free
        b.answer(b.batches()[1][1])
        assert r2.result is not None
        np.testing.assert_array_equal(r2.result.outputs["Y"], np.full((2, ROW), 3.0))
        b.answer(b.batches()[2][1])
        assert r3.result is not None and r3.result.outputs["Y"][0, 0] == 4.0
        for r in (r1, r2, r3):
            r.result.release()  # type: ignore[union-attr]
        assert b.inputs.slots_in_use == 0  # every input slot came back

    run(test)


def test_a_busy_model_runs_what_waited_as_one_batch() -> None:
    async def test(b: Bench) -> None:
        first = b.request(0.0)
        b.server.submit(first)
        waiting = [b.request(float(i)) for i in range(1, 6)]
        for r in waiting:
            b.server.submit(r)
        await settle()
        assert len(b.batches()) == 1  # one copy, busy: the rest queue
        b.answer(b.batches()[0][1])
        await settle()
        sizes = [len(body.items) for _, body in b.batches()]
        assert sizes == [1, 4]  # the next batch is full (batch_size 4); one still waits
        assert b.server.scheduling.queued == 1

    run(test, copies=1)


def test_a_copy_that_dies_has_its_batch_retried_once_then_failed() -> None:
    async def test(b: Bench) -> None:
        r = b.request(5.0)
        b.server.submit(r)
        await settle()
        first = b.server.copies[0]
        assert b.batches()[0][0] == first.id
        first.state = CopyState.DEAD  # as the supervisor marks it, then tells the server
        b.server.on_copy_lost(first)
        await settle()
        assert [cid for cid, _ in b.batches()] == [1, 2]  # retried on the other copy
        assert not r.done.is_set()
        b.server.on_copy_lost(b.server.copies[1])
        assert isinstance(r.error, ModelError) and "died" in r.error.message
        assert b.inputs.slots_in_use == 0

    run(test)


def test_a_stateful_request_is_not_retried_and_its_sequence_ends() -> None:
    async def test(b: Bench) -> None:
        r = b.request(5.0, sequence=SequenceRef("s", start=True))
        b.server.submit(r)
        await settle()
        [(held_by, _)] = b.batches()
        copy = next(c for c in b.server.copies if c.id == held_by)
        copy.state = CopyState.DEAD
        b.server.on_copy_lost(copy)
        assert isinstance(r.error, ModelError) and "start the sequence again" in r.error.message
        assert len(b.batches()) == 1  # never moved to the other copy
        assert not b.server.is_open("s")
        with pytest.raises(InvalidArgument, match=r"needs parameters\.sequence_id"):
            b.server.submit(b.request(1.0))  # a stateful model takes sequences only

    run(test, stateless=False)


def test_a_sequence_waits_for_a_slot_and_scaling_down_spares_its_copy() -> None:
    async def test(b: Bench) -> None:
        first = b.request(1.0, sequence=SequenceRef("a", start=True))
        b.server.submit(first)
        second = b.request(2.0, sequence=SequenceRef("b", start=True))
        b.server.submit(second)  # one copy, one slot: parked
        await settle()
        assert len(b.batches()) == 1 and b.server.scheduling.queued == 1
        assert b.server.waiting_since(trio.current_time() + 1.0) >= 1.0  # what scales up
        [copy] = b.server.copies
        assert not b.server.retirable(copy)  # it holds "a"
        b.answer(b.batches()[0][1])
        ender = b.request(3.0, sequence=SequenceRef("a", end=True))
        b.server.submit(ender)
        await settle()
        b.answer(b.batches()[1][1])  # "a" ends: its slot goes to "b"
        await settle()
        assert [len(body.items) for _, body in b.batches()] == [1, 1, 1]
        assert (seq := b.batches()[2][1].items[0].sequence) is not None and seq.id == "b"
        b.answer(b.batches()[2][1])
        assert second.result is not None and not b.server.retirable(copy)

    run(test, stateless=False, copies=1)


def test_a_full_queue_refuses_with_unavailable() -> None:
    async def test(b: Bench) -> None:
        b.server.submit(b.request(0.0))  # runs
        b.server.submit(b.request(1.0))  # waits
        b.server.submit(b.request(2.0))  # waits: the queue holds 2
        extra = b.request(3.0)
        with pytest.raises(Unavailable, match="overloaded"):
            b.server.submit(extra)
        assert b.server.stats.failures_by_reason.get("rejected") == 1  # counted
        b.inputs.free(extra.slots[0])  # refused at submit: still the bridge's

    run(test, copies=1, queue=2)


def test_a_cancelled_request_leaves_the_queue_and_frees_its_slots() -> None:
    async def test(b: Bench) -> None:
        b.server.submit(b.request(0.0))
        queued = b.request(1.0)
        b.server.submit(queued)
        in_use = b.inputs.slots_in_use
        b.server.cancel(queued)
        assert b.server.scheduling.queued == 0
        assert b.inputs.slots_in_use == in_use - 1
        assert not queued.done.is_set()  # the client is gone: no answer is due

    run(test, copies=1)


def test_an_expired_request_keeps_its_slots_until_the_copy_answers() -> None:
    async def test(b: Bench) -> None:
        r = b.request(1.0)
        b.server.submit(r)
        await settle()
        error = b.server.expire(r)
        assert error.http_status == 504
        assert b.inputs.slots_in_use == 1  # the worker may still be reading them
        b.answer(b.batches()[0][1])
        assert b.inputs.slots_in_use == 0
        assert r.result is None  # abandoned: the late answer is dropped

    run(test, copies=1)


def test_a_refused_send_keeps_the_batch_and_tries_again() -> None:
    async def test(b: Bench) -> None:
        r = b.request(1.0)
        b.server.submit(r)  # the copy's socket refuses it once
        assert b.batches() == []
        assert b.server.scheduling.queued == 1
        with trio.fail_after(2):
            while not b.batches():
                await trio.sleep(0.001)
        assert b.batches()[0][1].items[0].rows == 1
        assert r.attempts == 1

    run(test, copies=1, refuse_sends=1)


def test_a_wrong_output_shape_fails_the_batch_as_a_model_error() -> None:
    async def test(b: Bench) -> None:
        r = b.request(1.0, rows=2)
        b.server.submit(r)
        await settle()
        b.answer(b.batches()[0][1], rows=1)  # one row for two
        assert isinstance(r.error, ModelError) and "shape" in r.error.message
        assert b.inputs.slots_in_use == 0

    run(test, copies=1)


def test_an_item_error_fails_only_its_request() -> None:
    async def test(b: Bench) -> None:
        b.server.submit(b.request(0.0))
        r1, r2 = b.request(1.0), b.request(2.0)
        b.server.submit(r1)
        b.server.submit(r2)
        await settle()
        b.answer(b.batches()[0][1])
        await settle()
        b.answer(b.batches()[1][1], item_errors={1: "bad frame"})
        assert r1.result is not None
        assert isinstance(r2.error, InvalidArgument) and "bad frame" in r2.error.message
        r1.result.release()

    run(test, copies=1)
