"""``python -m worker`` / ``inferoxy-worker``: one model copy.

It binds its own batch socket and connects to the gateway's inbox (see ``shm.wire``), loads
``module:Class`` as ``Class(device, **parameters)``, says HELLO (with its socket's address),
heartbeats from a side thread, and then runs BATCH messages, from the control process and
from every data-plane process alike. A model exception becomes an ERROR reply, never a dead
worker. A model that fails to load is reported with FATAL and the process exits with status 3.

Batches from many producers (``worker.merge``): each data-plane process batches on its own,
so with N of them a copy may find N small batches waiting. It runs the ones that can go
together as one ``predict`` (up to the model's batch size) and answers each producer with its
own rows, so the model's batches stay as full as one batcher would make them.

Each heartbeat says how long the batch running now has run (``busy_s``), so the gateway can
tell a hung model from a busy one. A model class may define ``health()``: it is called every
``--health-interval-s`` between batches (never during one); returning ``False`` or raising
reports UNHEALTHY, and the gateway replaces the copy.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from shm import wire
from shm.messages import (
    MAX_MESSAGE_CHARS,
    Batch,
    Error,
    Fatal,
    FromWorker,
    Heartbeat,
    Hello,
    Release,
    Reply,
    Result,
    SequenceEnd,
    SlotRef,
    Stop,
    Timing,
    ToWorker,
    Unhealthy,
    decode_to_worker,
    encode,
)
from shm.segment import SegmentCache, pid_alive
from shm.slab import ShmExhausted, SlabAllocator, Slot
from worker.batch import BatchError, gather, place_outputs
from worker.merge import Backlog, slice_rows

log = logging.getLogger("inferoxy.worker")

EXIT_MODEL_LOAD_FAILED = 3
PRUNE_EVERY_S = 5.0  # how often (between batches) mappings of unlinked segments are dropped


def load_model(entrypoint: str, device: str, parameters: dict[str, Any]) -> Any:
    module_name, _, class_name = entrypoint.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(device, **parameters)


def _heartbeat(ctx: zmq.Context, address: str, copy_id: int, every_s: float,
               stop: threading.Event, busy_s: Callable[[], float], gateway_pid: int = 0,
               pause: Callable[[float], bool] | None = None,
               gateway_gone: Callable[[], bool] = lambda: False) -> None:
    """Heartbeats on a socket of this thread's own; exits the process if the gateway is gone.

    The gateway is our parent, or (in a container, whose parent is the engine's shim) the
    process ``gateway_pid``, or (an attached copy: ``worker.attach``) what ``gateway_gone``
    says; ``pause`` waits between beats (an attached copy reads its control socket then).
    """
    pause = pause or stop.wait
    parent = os.getppid()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.connect(address)
    try:
        while not pause(every_s) and not stop.is_set():
            gone = (os.getppid() != parent or (gateway_pid > 0 and not pid_alive(gateway_pid))
                    or gateway_gone())
            if gone:  # the gateway died: nobody will ever read our results
                log.warning("gateway process is gone; copy %d exits", copy_id)
                os._exit(0)
            try:
                sock.send_multipart(encode(Heartbeat(copy_id, busy_s())), zmq.NOBLOCK)
            except zmq.Again:
                pass
    except zmq.ContextTerminated:
        pass  # the worker is exiting (``ctx.term()`` ran while a heartbeat was being sent)
    finally:
        sock.close()


class Worker:
    def __init__(self, args: argparse.Namespace, model: Any, ctx: zmq.Context) -> None:
        self.copy_id: int = args.copy_id
        self.model = model
        self.cache = SegmentCache()
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        # An attached copy is named by its token: pids repeat across containers.
        instance: str = getattr(args, "instance", "") or str(os.getpid())
        self.slab = SlabAllocator(
            f"{args.shm_prefix}-w{instance}", limit_bytes=args.output_limit_bytes
        )
        self.slots: dict[tuple[str, int], Slot] = {}
        self.slot_owner: dict[tuple[str, int], int] = {}  # slot -> producer pid (0: control)
        self.run_dir: str = args.run_dir
        self.ctx = ctx
        self.out = ctx.socket(zmq.PUSH)
        self.out.setsockopt(zmq.LINGER, 1000)
        self.out.connect(wire.inbox_address(args.run_dir))
        self.address = (wire.attach_paths(args.run_dir, instance)[0]
                        if getattr(args, "instance", "")
                        else wire.copy_address(args.run_dir, args.copy_id, os.getpid()))
        self.inp = ctx.socket(zmq.PULL)
        self.inp.setsockopt(zmq.LINGER, 0)
        self.inp.setsockopt(zmq.RCVHWM, 100_000)
        self.inp.bind(self.address)
        self.replies: dict[Reply, zmq.Socket[bytes]] = {}  # a producer's reply socket
        self.backlog = Backlog()
        self.busy_since: float | None = None  # monotonic start of the batch running now
        health = getattr(model, "health", None)
        self._health: Callable[[], object] | None = health if callable(health) else None
        self._health_every_s: float = args.health_interval_s
        self._next_health = time.monotonic() + self._health_every_s

    def busy_s(self) -> float:
        """How long the batch (or health check) running now has run; 0.0 when idle."""
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def send(self, message: FromWorker) -> None:
        self.out.send_multipart(encode(message))

    def answer(self, batch: Batch, message: Result | Error) -> None:
        """RESULT/ERROR to the producer of ``batch``: its ``reply`` socket, else the inbox."""
        reply = batch.reply
        if reply is None:
            self.send(message)
            return
        sock = self.replies.get(reply)
        if sock is None:
            if not wire.in_run_dir(self.run_dir, reply.address):
                log.warning("batch %s names a reply socket outside the run directory; "
                            "dropped its answer", batch.id)
                return
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.connect(reply.address)
            self.replies[reply] = sock
        try:
            sock.send_multipart(encode(message), zmq.NOBLOCK)
        except zmq.Again:  # the producer is not reading (gone): nobody wants this answer
            log.warning("producer pid %s is not reading; dropped the answer to batch %s",
                        reply.pid, batch.id)

    def failed(self, batch: Batch, message: str) -> None:
        self.answer(batch, Error(self.copy_id, batch.id, message))

    def producers_gone(self) -> None:
        """Free the output slots held for data-plane processes that are gone."""
        for reply, sock in list(self.replies.items()):
            pid = reply.pid
            if pid_alive(pid):
                continue
            sock.close(linger=0)
            del self.replies[reply]
            for key in [k for k, owner in self.slot_owner.items() if owner == pid]:
                del self.slot_owner[key]
                slot = self.slots.pop(key, None)
                if slot is not None:
                    self.slab.free(slot)

    def serve(self) -> None:
        while True:
            if not self.backlog and not self._message_waiting():
                continue
            # RELEASE is handled on arrival (``_arrived``): it never waits behind a batch.
            # One message per turn: the health check's timing is ``_message_waiting``'s.
            message = self.backlog.pop() if self.backlog else self._receive()
            if isinstance(message, Batch):
                group = self._merge(message)
                self.busy_since = time.monotonic()
                try:
                    self.run_batches(group)
                finally:
                    self.busy_since = None
                if time.monotonic() >= self._next_prune:
                    # Segments whose owner unlinked them (a data-plane process that died, a
                    # client region): unmap them, or their memory stays pinned while we live.
                    self._next_prune = time.monotonic() + PRUNE_EVERY_S
                    self.cache.prune()
                    self.producers_gone()
            elif isinstance(message, SequenceEnd):
                self.end_sequence(message.sequence_id, message.reason)
            elif isinstance(message, Stop):
                return

    def _receive(self, flags: int = 0) -> ToWorker | None:
        """The next message, decoded and checked here, once (a malformed one is logged and
        dropped: None); the slots it releases (RELEASE, or a BATCH's ``release``) are free
        from now on."""
        frames = self.inp.recv_multipart(flags)
        try:
            message = decode_to_worker(frames)
        except wire.WireError as exc:
            log.warning("dropped a malformed message: %s", exc)
            return None
        if isinstance(message, Release):
            self.release(message.slots)
        elif isinstance(message, Batch) and message.release:
            self.release(message.release)
        return message

    def release(self, slots: list[SlotRef]) -> None:
        for key in slots:
            self.slot_owner.pop(key, None)
            slot = self.slots.pop(key, None)
            if slot is not None:
                self.slab.free(slot)

    def _merge(self, first: Batch) -> list[Batch]:
        """``first`` and the batches waiting behind it that can run with it as one."""
        max_rows = first.max_rows
        if max_rows is None or first.rows >= max_rows:
            return [first]
        while True:  # what is waiting now, without blocking; order is kept in the backlog
            try:
                message = self._receive(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message is not None and not isinstance(message, Release):
                self.backlog.push(message)
        return [first, *self.backlog.take_mergeable(first, max_rows)]

    def _message_waiting(self) -> bool:
        """Run the model's health check when it is due; True when a message is waiting."""
        if self._health is None or self._health_every_s <= 0:
            return True
        if time.monotonic() >= self._next_health:
            self.check_health()
        wait_s = max(0.0, self._next_health - time.monotonic())
        return bool(self.inp.poll(int(wait_s * 1000) + 1))

    def check_health(self) -> None:
        assert self._health is not None
        self._next_health = time.monotonic() + self._health_every_s
        self.busy_since = time.monotonic()  # a health check that hangs is a hang
        try:
            healthy = self._health()
            reason = "health() returned False"
        except Exception as exc:
            healthy, reason = False, f"health() raised {type(exc).__name__}: {exc}"
        finally:
            self.busy_since = None
        if healthy is False:
            log.error("model is unhealthy: %s", reason)
            self.send(Unhealthy(self.copy_id, reason[:MAX_MESSAGE_CHARS]))

    def end_sequence(self, seq_id: object, reason: str) -> None:
        log.info("sequence %r ended (%s)", seq_id, reason)
        hook = getattr(self.model, "on_sequence_end", None)
        if hook is not None:
            try:
                hook(seq_id, reason)
            except Exception:
                log.warning("on_sequence_end(%r) raised: %s", seq_id, traceback.format_exc())

    def run_batches(self, group: list[Batch]) -> None:
        """Run one BATCH, or several merged (no sequences among them), as one ``predict``."""
        if len(group) == 1:
            self.run_batch(group[0])
            return
        items = [item for batch in group for item in batch.items]
        try:
            t0 = time.perf_counter_ns()
            inputs, total = gather(self.cache, items)
            t1 = time.perf_counter_ns()
            outputs = self.model.predict(inputs, dict(group[0].parameters))
            t2 = time.perf_counter_ns()
            del inputs
        except BatchError as exc:
            for batch in group:
                self.failed(batch, str(exc))
            return
        except Exception as exc:
            log.warning("model raised on batches %s: %s", [b.id for b in group],
                        traceback.format_exc().rstrip())
            for batch in group:
                self.failed(batch, f"{type(exc).__name__}: {exc}")
            return
        start = 0
        for batch in group:
            rows = batch.rows
            try:
                part = slice_rows(outputs, start, rows, total)
            except BatchError as exc:
                self.failed(batch, str(exc))
                continue
            finally:
                start += rows
            self._place_and_answer(batch, part, t0, t1, t2)

    def run_batch(self, batch: Batch) -> None:
        items = batch.items
        rids = [item.rid for item in items]  # request ids, for logs only
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch %s: requests %r", batch.id, rids)
        sequences = [item.sequence for item in items if item.sequence is not None]
        parameters = dict(batch.parameters)
        if sequences:
            # Per item, in batch order: which sequence, and whether it starts or ends here.
            parameters["sequence_id"] = [s.id for s in sequences]
            parameters["sequence_start"] = [s.start for s in sequences]
            parameters["sequence_end"] = [s.end for s in sequences]
        start_hook = getattr(self.model, "on_sequence_start", None)
        try:
            for s in sequences:
                if s.start and start_hook is not None:
                    start_hook(s.id)
            t0 = time.perf_counter_ns()
            inputs, _rows = gather(self.cache, items)
            t1 = time.perf_counter_ns()
            try:
                outputs = self.model.predict(inputs, parameters)
            finally:
                for s in sequences:  # the model's state for it goes, even on error
                    if s.end:
                        self.end_sequence(s.id, "ended")
            t2 = time.perf_counter_ns()
            del inputs  # views into request slots the gateway reuses after our reply
        except BatchError as exc:
            self.failed(batch, str(exc))
            return
        except Exception as exc:  # the model's own failure: report it, keep serving
            log.warning("model raised on batch %s: %s\n(requests %r)", batch.id,
                        traceback.format_exc().rstrip(), rids)
            self.failed(batch, f"{type(exc).__name__}: {exc}")
            return
        self._place_and_answer(batch, outputs, t0, t1, t2)

    def _place_and_answer(self, batch: Batch, outputs: object, t0: int, t1: int,
                          t2: int) -> None:
        """Copy one batch's outputs into the output slab (or client regions) and answer."""
        placed: dict[SlotRef, Slot] = {}
        try:
            described, item_errors = place_outputs(
                self.slab, self.cache, outputs, batch.items, placed)
        except (BatchError, ShmExhausted) as exc:
            self.failed(batch, str(exc))
            return
        t3 = time.perf_counter_ns()
        self.slots.update(placed)
        if batch.reply is not None:
            for key in placed:
                self.slot_owner[key] = batch.reply.pid
        self.answer(batch, Result(self.copy_id, batch.id, described,
                                  Timing(t1 - t0, t2 - t1, t3 - t2), item_errors))

    def close(self) -> None:
        for sock in self.replies.values():
            sock.close(linger=0)
        self.slots.clear()
        self.slab.close()
        self.cache.close()
        self.inp.close()
        self.out.close()


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, like the gateway's ``--log-format json``."""

    def __init__(self, copy: str) -> None:
        super().__init__()
        self.copy = copy

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "copy": self.copy,
            "message": record.getMessage(),
        })


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="inferoxy-worker", description=__doc__)
    p.add_argument("--run-dir", required=True, help="the gateway's socket directory")
    p.add_argument("--copy-id", type=int, required=True)
    p.add_argument("--model", required=True, help="model name (for logs)")
    p.add_argument("--entrypoint", required=True, help="module:Class")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parameters", default="{}", help="JSON object of constructor kwargs")
    p.add_argument("--shm-prefix", required=True, help="segment name prefix: <prefix>-<gw pid>")
    p.add_argument("--output-limit-bytes", type=int, default=2 << 30)
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument("--gateway-pid", type=int, default=0,
                   help="exit when this process is gone (the gateway, when it is not our parent)")
    p.add_argument("--health-interval-s", type=float, default=5.0,
                   help="how often to call the model's health(), if it has one (0: never)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.model, args.copy_id)
    return run(args, zmq.Context())


def setup_logging(model: str, copy_id: int | str) -> None:
    handler = logging.StreamHandler()
    if os.environ.get("INFEROXY_LOG_FORMAT") == "json":
        handler.setFormatter(_JsonFormatter(f"{model}#{copy_id}"))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s worker[{model}#{copy_id}] %(levelname)s %(message)s"))
    logging.basicConfig(level=os.environ.get("INFEROXY_LOG_LEVEL", "INFO"), handlers=[handler],
                        force=True)


def run(args: argparse.Namespace, ctx: zmq.Context,
        pause: Callable[[float], bool] | None = None,
        gateway_gone: Callable[[], bool] = lambda: False) -> int:
    """Load the model, say HELLO, serve until STOP or SIGTERM (``main``; ``worker.attach``)."""
    # SIGTERM unwinds through finally blocks so the output slab is unlinked.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stop = threading.Event()
    worker: Worker | None = None
    try:
        try:
            model = load_model(args.entrypoint, args.device, json.loads(args.parameters))
        except Exception as exc:
            log.error("model %s failed to load: %s", args.entrypoint, traceback.format_exc())
            fatal = ctx.socket(zmq.PUSH)
            fatal.setsockopt(zmq.LINGER, 2000)
            fatal.connect(wire.inbox_address(args.run_dir))
            fatal.send_multipart(encode(Fatal(args.copy_id, f"{type(exc).__name__}: {exc}")))
            fatal.close()
            return EXIT_MODEL_LOAD_FAILED
        worker = Worker(args, model, ctx)
        gc.collect()
        gc.freeze()  # the model and its imports live as long as the process: never rescan them
        threading.Thread(
            target=_heartbeat,
            args=(ctx, wire.inbox_address(args.run_dir), args.copy_id, args.heartbeat_s, stop,
                  worker.busy_s),
            kwargs={"gateway_pid": args.gateway_pid, "pause": pause,
                    "gateway_gone": gateway_gone},
            daemon=True,
        ).start()
        worker.send(Hello(args.copy_id, os.getpid(), args.model, worker.address))
        worker.serve()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        if worker is not None:
            worker.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
