"""A data-plane process's link to the control process, and what it forwards there.

``CoreLink`` carries the messages of ``gateway.bridge_wire``: the copy table in (``TABLE``),
reports and forwarded requests out. ``RemoteAdmission`` is the ``Admission`` surface for
models the control process serves (stateful ones): slots come from this process's own slab,
and ``run`` sends one INFER message of descriptors and waits for its one ANSWER.

Slot ownership (``gateway.intake`` has the control process's side): before INFER is sent,
slots belong to the admission (``release`` frees them); after, to ``CoreLink``, which frees
them when the control process says no worker can read them (``freed`` in the ANSWER, or a
later FREE) — even when the client went away in between. Nothing else ever frees them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
import trio
import zmq

from gateway import bridge_wire as bw
from gateway import intake
from gateway.admission import CheckedInput, bytes_descriptor, check_bytes
from gateway.config import ModelConfig, TensorSpec
from gateway.copy_table import CopyTable, Refusal
from gateway.errors import InferoxyError, Unavailable
from gateway.link import read_forever
from shm.segment import SegmentCache
from shm.slab import ShmExhausted, SlabAllocator, Slot

log = logging.getLogger("inferoxy.bridge")

MAX_IN_FLIGHT = 4096  # requests of this process in the core at once; more get 503

A = TypeVar("A", bw.AnswerItem, dict[str, Any])  # an INFER's answer, or a CALL's REPLY


@dataclass(eq=False, slots=True)
class _Pending(Generic[A]):
    slots: list[Slot]
    answer: tuple[A, Any] | None = None  # the answer and its byte frame
    done: trio.Event = field(default_factory=trio.Event)
    waiting: bool = True  # a handler still wants the answer


class CoreLink:
    """The bridge's two sockets to the core: PUSH (sent NOBLOCK) and PULL (one reader task)."""

    def __init__(self, index: int, run_dir: str, slab: SlabAllocator) -> None:
        self.index = index
        self.slab = slab
        self.cache = SegmentCache()  # workers' output segments (large outputs)
        self._ctx = zmq.Context()
        self._out = self._ctx.socket(zmq.PUSH)
        self._out.setsockopt(zmq.LINGER, 0)
        self._out.setsockopt(zmq.SNDHWM, 100_000)
        self._out.connect(bw.intake_address(run_dir))
        self._in = self._ctx.socket(zmq.PULL)
        self._in.setsockopt(zmq.LINGER, 0)
        self._in.setsockopt(zmq.RCVHWM, 100_000)
        self._in.connect(f"ipc://{run_dir}/bridge-{index}.sock")
        self._ids = itertools.count(1)
        self._infers: dict[int, _Pending[bw.AnswerItem]] = {}
        self._unfreed: dict[int, list[Slot]] = {}  # answered, a worker may still read
        self._calls: dict[int, _Pending[dict[str, Any]]] = {}
        self._outbox: list[bw.InferItem] = []
        self._flush_wake = trio.Event()
        self.on_table: Callable[[CopyTable], None] = lambda table: None
        self.on_flush: Callable[[int], None] = lambda gen: None
        self.table_gen = 0
        self.got_table = trio.Event()
        self.stop_requested = trio.Event()

    def send(self, kind: bytes, body: dict[str, Any], *blobs: Any) -> None:
        body["b"] = self.index
        try:
            self._out.send_multipart(bw.encode(kind, body, *blobs), zmq.NOBLOCK)
        except zmq.Again:
            # 100 000 messages queued to the core: it is gone or wedged.
            raise Unavailable("the gateway core is not taking requests") from None

    async def run(self) -> None:
        """The PULL socket's one reader."""
        sock = self._in

        def on_frames(frames: list[bytes]) -> None:
            try:
                kind, body, blobs = bw.decode(frames, bw.TO_BRIDGE)
                self._on_message(kind, body, blobs)
            except (bw.WireError, KeyError, TypeError, ValueError) as exc:
                log.warning("dropped a malformed message from the core: %s", exc)

        await read_forever(sock, on_frames)

    def _on_message(self, kind: bytes, body: dict[str, Any], blobs: list[Any]) -> None:
        if kind == bw.ANSWER:
            blob = blobs[0] if blobs else b""
            for item in body["items"]:
                self._on_answer(item, blob)
        elif kind == bw.FREE:
            self._free(self._unfreed.pop(body["id"], []))
        elif kind == bw.REPLY:
            call = self._calls.pop(body["id"], None)
            if call is not None:
                call.answer = (body, blobs[0] if blobs else b"")
                call.done.set()
        elif kind == bw.TABLE:
            gen = body["gen"]
            if gen > self.table_gen:
                # Decoded here, whole, before any of it is applied: a malformed table is
                # dropped and the last one stays (the ACK says which); the core sends the next
                # when its table next changes.
                try:
                    table = CopyTable.from_wire(body)
                except bw.WireError as exc:
                    log.warning("dropped a malformed copy table (generation %d): %s", gen, exc)
                else:
                    self.on_table(table)
                    self.table_gen = gen
                    self.got_table.set()
            self.send(bw.ACK, {"gen": self.table_gen})
        elif kind == bw.STOP:
            self.stop_requested.set()
        elif kind == bw.FLUSH:
            self.on_flush(body["gen"])

    def _on_answer(self, raw: Any, blob: Any) -> None:
        try:
            item = bw.answer_item(raw)
        except bw.WireError as exc:
            msg_id = raw.get("id") if isinstance(raw, dict) else None
            log.warning("a malformed answer from the core (%s): %s", msg_id, exc)
            if not isinstance(msg_id, int) or msg_id not in self._infers:
                return
            # Its one answer is an error; its slots wait for a FREE (a worker may read them).
            error = InferoxyError("the gateway core sent a malformed answer")
            item = {"id": msg_id, "status": error.http_status, "freed": False,
                    "error": intake.error_to_wire(error)}
        msg_id = item["id"]
        pending = self._infers.pop(msg_id, None)
        if pending is None:
            return
        if item["freed"]:
            self._free(pending.slots)
        else:
            self._unfreed[msg_id] = pending.slots
        pending.slots = []
        if pending.waiting:
            pending.answer = (item, blob)
            pending.done.set()
        elif item.get("held"):
            self.send(bw.DONE, {"ids": [msg_id]})

    def _free(self, slots: list[Slot]) -> None:
        for slot in slots:
            self.slab.free(slot)

    def new_id(self) -> int:
        return next(self._ids)

    def submit(self, item: bw.InferItem, slots: list[Slot]) -> None:
        """Send an INFER (``item["id"]`` from ``new_id``); from now on ``slots`` are the
        link's. Raises before that."""
        if len(self._infers) >= MAX_IN_FLIGHT:
            raise Unavailable("this data-plane process has too many requests in flight")
        if not self._outbox:
            self._flush_wake.set()
        self._outbox.append(item)
        self._infers[item["id"]] = _Pending(slots)

    async def run_flusher(self) -> None:
        """Every INFER of one scheduling round goes to the core in one message."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            items, self._outbox = self._outbox, []
            try:
                self.send(bw.INFER, {"items": items})
            except Unavailable as exc:  # never reached the core: the slots are still ours
                for item in items:
                    pending = self._infers.pop(item["id"])
                    self._free(pending.slots)
                    pending.slots = []
                    pending.answer = ({"id": item["id"], "status": exc.http_status,
                                       "freed": True,
                                       "error": intake.error_to_wire(exc)}, b"")
                    pending.done.set()

    async def wait(self, msg_id: int) -> tuple[bw.AnswerItem, Any]:
        """The answer (item, byte blob) to an INFER; a cancelled wait tells the core."""
        pending = self._infers[msg_id]
        try:
            await pending.done.wait()
        except BaseException:
            if pending.answer is None:  # the client went away: the core abandons it
                pending.waiting = False
                try:
                    self.send(bw.CANCEL, {"id": msg_id})
                except Unavailable:
                    pass
            raise
        assert pending.answer is not None
        return pending.answer

    async def call(self, body: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        """A non-infer HTTP request, answered by the core's route layer."""
        if len(self._calls) >= MAX_IN_FLIGHT:
            raise Unavailable("this data-plane process has too many requests in flight")
        msg_id = next(self._ids)
        body["id"] = msg_id
        pending: _Pending[dict[str, Any]] = _Pending([])
        self._calls[msg_id] = pending
        try:
            self.send(bw.CALL, body, payload)
            await pending.done.wait()
        finally:
            self._calls.pop(msg_id, None)
        assert pending.answer is not None
        answer, payload = pending.answer
        return answer, bytes(payload)

    def fail_all(self, error: InferoxyError) -> None:
        """The core is gone: wake every waiting handler with ``error``."""
        wire_error = intake.error_to_wire(error)
        for msg_id, infer in self._infers.items():
            if infer.answer is None:
                infer.answer = ({"id": msg_id, "status": error.http_status, "freed": False,
                                 "error": wire_error}, b"")
                infer.done.set()
        reply = {"status": error.http_status, "error": wire_error,
                 "headers": [["content-type", "application/json"]]}
        payload = orjson.dumps({"error": error.message})
        for call in self._calls.values():
            if call.answer is None:
                call.answer = (reply, payload)
                call.done.set()

    def report(self, answers: list[list[Any]], stats: list[list[Any]],
               pending: list[list[Any]], flush: int | None = None) -> None:
        body: bw.ReportBody = {
            "answers": answers, "stats": stats, "pending": pending,
            "slots_in_use": self.slab.slots_in_use, "bytes_in_use": self.slab.bytes_in_use}
        if flush is not None:
            body["flush"] = flush
        self.send(bw.REPORT, dict(body))

    def close(self) -> None:
        self.cache.close()
        self._out.close(linger=0)
        self._in.close(linger=0)
        self._ctx.term()


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """What a bridge knows of one (model, version): its configuration, and whether it
    refuses requests now (the core's ``ensure_accepting`` message)."""

    config: ModelConfig
    refuse: Refusal | None


class RemoteResult:
    """The ``RequestResult`` surface: ``outputs``, ``in_regions``, ``release()``."""

    def __init__(self, outputs: dict[str, np.ndarray], in_regions: dict[str, tuple[int, ...]],
                 on_release: Callable[[], None] | None) -> None:
        self.outputs = outputs
        self.in_regions = in_regions
        self._on_release = on_release

    def release(self) -> None:
        self.outputs = {}
        if self._on_release is not None:
            on_release, self._on_release = self._on_release, None
            on_release()


class RemoteAdmission:
    """The ``Admission`` surface, in a data-plane process: slots from its own slab; client
    regions are resolved (and refused) by the core, which keeps the registry."""

    def __init__(self, link: CoreLink, server: RemoteModel) -> None:
        self._link = link
        self.server = server
        self.slots: list[Slot] = []
        self._inputs: list[list[Any]] = []
        self._outputs: dict[str, list[Any]] = {}
        self._submitted = False
        self._bytes: list[tuple[CheckedInput, Slot]] = []  # BYTES inputs, checked at run

    def slot(self, tensor: CheckedInput) -> Slot:
        try:
            slot = self._link.slab.allocate(tensor.nbytes)
        except ShmExhausted as exc:
            raise Unavailable(f"out of request memory: {exc}") from None
        self.slots.append(slot)
        if tensor.bytes_limits is not None:
            desc = bytes_descriptor(slot, tensor)
            self._bytes.append((tensor, slot))
        else:
            desc = slot.descriptor(tensor.dtype.name, tensor.shape)
        self._inputs.append([tensor.spec.name, tensor.spec.datatype, list(tensor.wire_shape),
                             desc.to_wire(), None])
        return slot

    def region_input(self, tensor: CheckedInput, region: object, offset: object,
                     byte_size: object) -> None:
        self._inputs.append([tensor.spec.name, tensor.spec.datatype, list(tensor.wire_shape),
                             None, [region, offset, byte_size]])

    def region_output(self, spec: TensorSpec, region: object, offset: object,
                      byte_size: object) -> None:
        self._outputs[spec.name] = [region, offset, byte_size]

    def release(self) -> None:
        if not self._submitted:
            while self.slots:
                self._link.slab.free(self.slots.pop())

    async def run(self, rows: int, parameters: dict[str, Any], timeout_us: int | None,
                  request_id: str) -> RemoteResult:
        config = self.server.config
        for tensor, slot in self._bytes:
            check_bytes(tensor, slot.memory(tensor.nbytes))
        msg_id = self._link.new_id()
        item: bw.InferItem = {
            "id": msg_id, "model": config.name, "version": config.version, "rows": rows,
            "inputs": self._inputs, "outputs": self._outputs, "parameters": parameters,
            "timeout_us": timeout_us, "request_id": request_id,
        }
        self._link.submit(item, self.slots)  # raises while the slots are ours
        self.slots, self._submitted = [], True
        answer, blob = await self._link.wait(msg_id)
        if "error" in answer:
            raise intake.error_from_wire(answer["error"])
        link = self._link
        outputs = intake.read_outputs(answer.get("outputs", {}), blob,
                                      lambda d: link.cache.view(d))
        in_regions = {n: tuple(s) for n, s in answer.get("in_regions", {}).items()}
        on_release = (lambda: link.send(bw.DONE, {"ids": [msg_id]})) if answer.get(
            "held") else None
        return RemoteResult(outputs, in_regions, on_release)
