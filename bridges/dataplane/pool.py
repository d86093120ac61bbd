"""The control process's Trio adapter for data-plane processes: spawn, supervise, publish
the copy table, and serve what they forward.

``DataPlanePool.run`` binds the intake (a PULL socket every data-plane process pushes to) and
one PUSH socket per process (``bridge-<i>.sock``, fresh for each process), starts ``N``
processes of ``python -m bridges.dataplane`` and restarts any that dies (with back-off). Each
socket has one owner (docs/facts.md): the intake is read by one task; PUSH sockets are only sent
to, with ``NOBLOCK``, from the Trio thread. What messages mean is ``gateway.intake``'s
business.

Stateless requests never come here: the processes batch them and send them to the copies
themselves. What does come (stateful models' requests, every other route) is handled this way:
an INFER item is checked and submitted synchronously in the intake task (no task per request);
its answer comes from the model server's ``on_done`` callback; one task keeps every deadline in
a heap; answers queued in one round of the event loop leave in one message. The copy table goes
out when it changes (``Gateway.changed``); region changes and statistics reads wait until every
process has caught up (``publish``, ``fresh_stats``).

A data-plane process dies with the control process (it watches its parent). On SIGTERM
readiness goes false first, then every process is told to ``STOP``: close its listeners,
finish open responses (the copies still run), exit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Hashable
from functools import partial
from typing import Any

import trio
import zmq

from gateway import bridge_wire as bw
from gateway import intake
from gateway.copy_table import CopyTable
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, Unavailable
from gateway.inflight import InFlight, InFlightDeadlines
from gateway.intake import BridgeBook
from gateway.link import read_forever
from gateway.model_server import ModelServer
from gateway.request import InferRequest, RequestResult
from gateway.stats import add_stats
from shm.segment import unlink_matching
from supervisor.backoff import Backoff

log = logging.getLogger("inferoxy.bridges")

# The routing table (models, copies and their states, client regions) is republished at once
# when a copy changes state or a model is routed anew (``Gateway.changed``), and compared
# with what the data-plane processes have this often for everything else.
TABLE_EVERY_S = 0.25
PUBLISH_WAIT_S = 1.0  # a region change is answered once every process has it (or after this)
QUIET_WAIT_S = 30.0  # a dead bridge's segments wait this long at most for workers to let go
HELLO_TIMEOUT_S = 60.0


class _Remote(InFlight):
    """A bridge's request in the core, until it is answered (``gateway.inflight``)."""

    __slots__ = ("book", "msg_id", "pool")

    def __init__(self, pool: DataPlanePool, book: BridgeBook, msg_id: int,
                 server: ModelServer, request: InferRequest) -> None:
        super().__init__(server, request)
        self.pool = pool
        self.book = book
        self.msg_id = msg_id

    def deliver(self, result: RequestResult | None, error: InferoxyError | None) -> None:
        self.pool._answer(self.book, self.msg_id, self.request, result, error)


class DataPlanePool:
    def __init__(self, gateway: Gateway, count: int) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.count = count
        self.run_dir = ""
        self._ctx = zmq.Context()
        self._outs: dict[int, zmq.Socket[bytes]] = {}
        self._books: dict[int, BridgeBook] = {}
        self._procs: dict[int, trio.Process] = {}
        self._sizes: dict[int, dict[str, int]] = {}  # per bridge: its segments' sizes
        self._listening: set[int] = set()
        self._all_listening = trio.Event()
        self._table = CopyTable({})
        self._table_print: Hashable = None
        self._table_wire: dict[str, Any] = {}
        self._quick: tuple[Any, ...] = ()
        self._table_gen = 0
        self._acked: dict[int, int] = {}  # per process: the table generation it applied
        self._flush_gen = 0
        self._flushed: dict[int, int] = {}  # per process: the last FLUSH it reported for
        self._sent_gen: dict[int, int] = {}
        self._stopping = False
        self._nursery: trio.Nursery
        self._outbox: dict[BridgeBook, tuple[list[bw.AnswerItem], bytearray]] = {}
        self._flush_wake = trio.Event()
        self._deadlines = InFlightDeadlines()

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        # The gateway's run directory: the copies' batch sockets are there, and a data-plane
        # process's own answer socket must be too (workers answer nowhere else).
        self.run_dir = self.gateway.run_dir
        intake_sock = self._ctx.socket(zmq.PULL)
        intake_sock.setsockopt(zmq.LINGER, 0)
        intake_sock.setsockopt(zmq.RCVHWM, 100_000)
        intake_sock.bind(bw.intake_address(self.run_dir))
        try:
            self.gateway.region_publishers.append(self.publish)
            self.gateway.board.rows = self.count + 1  # see gateway.loadboard
            self.gateway.stats_fresheners.append(self.fresh_stats)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._refresh_table()
                nursery.start_soon(self._read_intake, intake_sock)
                nursery.start_soon(self._push_tables)
                nursery.start_soon(self._flush_answers)
                nursery.start_soon(self._deadlines.run)
                for index in range(self.count):
                    nursery.start_soon(self._supervise, index)
                with trio.fail_after(HELLO_TIMEOUT_S):
                    await self._all_listening.wait()
                task_status.started()
        finally:
            if self.publish in self.gateway.region_publishers:
                self.gateway.region_publishers.remove(self.publish)
            if self.fresh_stats in self.gateway.stats_fresheners:
                self.gateway.stats_fresheners.remove(self.fresh_stats)
            with trio.CancelScope(shield=True):
                for proc in self._procs.values():
                    if proc.returncode is None:
                        proc.kill()
                for proc in self._procs.values():
                    await proc.wait()
                for book in self._books.values():
                    book.die()
                    unlink_matching(book.prefix)
                for sock in self._outs.values():
                    sock.close(linger=0)
                intake_sock.close(linger=0)
                self._ctx.term()

    async def stop(self, timeout_s: float) -> None:
        """Drain: every bridge stops accepting, finishes its open responses and exits."""
        self._stopping = True
        for index in list(self._procs):
            self._send(index, bw.STOP, {})
        with trio.move_on_after(timeout_s):
            for proc in list(self._procs.values()):
                await proc.wait()
        for proc in self._procs.values():
            if proc.returncode is None:
                log.warning("data-plane process %d did not stop in time; killing it", proc.pid)
                proc.kill()

    def _spawn_env(self) -> dict[str, str]:
        settings = json.dumps(dataclasses.asdict(self.settings))
        return dict(os.environ, INFEROXY_BRIDGE_SETTINGS=settings)

    async def _supervise(self, index: int) -> None:
        backoff = Backoff(initial_s=0.1, max_s=5.0, stable_after_s=10.0)
        while not self._stopping:
            sock = self._outs.pop(index, None)
            if sock is not None:
                sock.close(linger=0)
            out = self._ctx.socket(zmq.PUSH)
            out.setsockopt(zmq.LINGER, 0)
            out.setsockopt(zmq.SNDHWM, 100_000)
            out.bind(f"ipc://{self.run_dir}/bridge-{index}.sock")
            self._outs[index] = out
            self._sent_gen.pop(index, None)
            self._acked.pop(index, None)
            self._flushed.pop(index, None)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "bridges.dataplane", "--index", str(index),
                 "--core-pid", str(os.getpid()), "--run-dir", self.run_dir,
                 "--count", str(self.count)],
                env=self._spawn_env(), stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the core, which stops them in order
            )
            started = time.monotonic()
            self._procs[index] = proc
            prefix = f"{self.settings.shm_prefix}-{proc.pid}-b-"
            book = self._books[index] = BridgeBook(index, proc.pid, prefix)
            self._sizes[index] = {}
            code = await proc.wait()
            self._listening.discard(index)
            book.die()
            self.gateway.bridge_reports.gone(index)
            self.gateway.board.clear_row(index + 1)  # its batches at the copies went with it
            self._nursery.start_soon(self._unlink_when_quiet, book)
            if self._stopping:
                return
            delay = backoff.on_exit(time.monotonic() - started)
            log.warning("data-plane process %d (pid %d) exited with status %s; restarting in "
                        "%.1fs", index, proc.pid, code, delay)
            await trio.sleep(delay)

    async def _unlink_when_quiet(self, book: BridgeBook) -> None:
        """A dead bridge's segments go once no worker can still be reading an input there."""
        with trio.move_on_after(QUIET_WAIT_S):
            while not book.quiet:
                await trio.sleep(0.05)
        unlink_matching(book.prefix)

    # -- the routing table ----------------------------------------------------------------

    def _quick_fingerprint(self) -> tuple[Any, ...]:
        """What the table is made of, cheaply: when it is unchanged, so is the table (polled
        every ``TABLE_EVERY_S``; building the table itself costs ~100x more)."""
        gateway = self.gateway
        regions = gateway.regions
        return (
            gateway.draining, id(gateway.declarations),
            tuple((id(s), tuple((c.id, c.state, c.inbox, c.crash_loop, c.last_error)
                                for c in s.copies))
                  for s in gateway.all_servers()),
            tuple(regions.status()) if regions.enabled else (),
        )

    def _refresh_table(self) -> None:
        quick = self._quick_fingerprint()
        if quick == self._quick and self._table_gen:
            return
        self._quick = quick
        table = intake.routing_table(self.gateway)
        fingerprint = table.fingerprint()
        if fingerprint != self._table_print or not self._table_gen:
            # The old table stays referenced until here: the fingerprint compares
            # configurations by identity, and an id is not reused while its object lives.
            self._table, self._table_print = table, fingerprint
            self._table_gen += 1
            self._table_wire = {"gen": self._table_gen, **table.to_wire()}

    async def fresh_stats(self) -> None:
        """Ask every live process to report now and wait (bounded) until each has."""
        self._flush_gen += 1
        gen = self._flush_gen
        asked = [i for i in self._listening if self._send(i, bw.FLUSH, {"gen": gen})]
        with trio.move_on_after(PUBLISH_WAIT_S):
            while any(self._flushed.get(i, 0) < gen for i in asked if i in self._listening):
                await trio.sleep(0.001)

    async def publish(self) -> None:
        """Send the table now and wait (bounded) until every live process has applied it:
        a region registered through one connection is then usable through any other."""
        self._refresh_table()
        gen = self._table_gen
        for index in self._procs:
            if self._send(index, bw.TABLE, self._table_wire):
                self._sent_gen[index] = gen
        with trio.move_on_after(PUBLISH_WAIT_S):
            while any(self._acked.get(i, 0) < gen for i in self._listening):
                await trio.sleep(0.001)

    async def _push_tables(self) -> None:
        wake = trio.Event()

        def changed() -> None:
            wake.set()

        self.gateway.change_listeners.append(changed)
        try:
            while True:
                self._refresh_table()
                for index in self._procs:
                    if self._sent_gen.get(index, -1) not in (-1, self._table_gen):
                        if self._send(index, bw.TABLE, self._table_wire):
                            self._sent_gen[index] = self._table_gen
                with trio.move_on_after(TABLE_EVERY_S):
                    await wake.wait()
                wake = trio.Event()
        finally:
            self.gateway.change_listeners.remove(changed)

    # -- messages -------------------------------------------------------------------------

    def _send(self, index: int, kind: bytes, body: dict[str, Any], *blobs: Any) -> bool:
        sock = self._outs.get(index)
        if sock is None:
            return False
        try:
            sock.send_multipart(bw.encode(kind, body, *blobs), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    async def _read_intake(self, sock: zmq.Socket[bytes]) -> None:
        def on_frames(frames: list[bytes]) -> None:
            try:
                kind, body, blobs = bw.decode(frames, bw.TO_CORE)
                self._on_message(kind, body, blobs)
            except (bw.WireError, KeyError, TypeError, ValueError) as exc:
                log.warning("dropped a malformed bridge message: %s", exc)

        await read_forever(sock, on_frames)

    def _on_message(self, kind: bytes, body: dict[str, Any], blobs: list[Any]) -> None:
        """One message; ``bw.decode`` checked the fields each kind needs (and ``b``)."""
        index = body["b"]
        book = self._books.get(index)
        if book is None or book.dead:
            return
        if kind == bw.INFER:
            for item in body["items"]:
                if isinstance(item, dict):
                    self._admit(book, item)  # checked there: a bad one gets its answer
        elif kind == bw.DONE:
            for msg_id in body["ids"]:
                if type(msg_id) is int:
                    book.done(msg_id)
        elif kind == bw.CANCEL:
            book.cancel(body["id"])
        elif kind == bw.CALL:
            if len(blobs) != 1:
                raise bw.WireError("a CALL without its body frame")
            self._nursery.start_soon(self._forward_call, index, body, bytes(blobs[0]))
        elif kind == bw.REPORT:
            report = self.gateway.bridge_reports.report(index, body)
            counts = self.gateway.bridge_answers.counts
            for bridge, status_class, n in report.answers:
                counts[(bridge, status_class)] = counts.get((bridge, status_class), 0) + n
            for name, version, delta in report.stats:
                server = self.gateway.servers.get((name, version))
                if server is not None:
                    add_stats(server.stats, delta)
            if report.flush is not None:
                self._flushed[index] = max(self._flushed.get(index, 0), report.flush)
        elif kind == bw.ACK:
            self._acked[index] = max(self._acked.get(index, 0), body["gen"])
        elif kind == bw.HELLO:
            if body["pid"] != book.pid:
                log.warning("bridge %d says it is pid %d, not %d", index, body["pid"], book.pid)
                return
            self._sent_gen[index] = 0  # send it the table now
            if self._send(index, bw.TABLE, self._table_wire):
                self._sent_gen[index] = self._table_gen
            if body["listening"]:
                self._listening.add(index)
                if len(self._listening) == self.count:
                    self._all_listening.set()

    def _segment_size(self, index: int, name: str) -> int:
        sizes = self._sizes[index]
        size = sizes.get(name)
        if size is None:
            if len(sizes) > 4096:  # dedicated (one-request) segments come and go
                sizes.clear()
            size = sizes[name] = os.stat(f"/dev/shm/{name}").st_size
        return size

    # -- infer requests: admitted synchronously, answered by callback, batched per bridge ---

    def _admit(self, book: BridgeBook, raw: dict[str, Any]) -> None:
        """Submit one request of an INFER message; its answer comes by ``_Remote.deliver``."""
        msg_id = raw.get("id")
        entry = book.open(msg_id) if type(msg_id) is int else None  # not True
        if entry is None:
            return  # no id we could answer to: a confused bridge
        assert isinstance(msg_id, int)
        gateway = self.gateway
        try:
            if book.dead:
                raise Unavailable("the data-plane process is gone")
            try:
                item = bw.infer_item(raw)
                server = gateway.model(item["model"], item["version"] or None)
                gateway.ensure_accepting(server)
                admission = gateway.admission(server)
                rows = intake.admit(admission, item, gateway.limits, book.prefix,
                                    lambda name: self._segment_size(book.index, name))
                request = admission.submit(rows, item["parameters"], item["timeout_us"],
                                           item["request_id"])
            except bw.WireError as exc:
                raise InvalidArgument(f"malformed request in a bridge message: {exc}") from None
            except (KeyError, TypeError, ValueError):
                # what admit checks deeper (inputs, descriptors) got past its checks: still
                # one answer, never a dropped message
                raise InvalidArgument("malformed request in a bridge message") from None
        except InferoxyError as exc:
            book.inputs_freed(msg_id)  # never queued: no worker saw them
            self._answer(book, msg_id, None, None, exc)
            return
        remote = _Remote(self, book, msg_id, server, request)
        request.on_inputs_freed = partial(self._inputs_freed, book, msg_id)
        # The client went away (or its bridge died): abandoned; the bridge still gets its
        # one answer (it only frees slots by it).
        entry.cancel = remote.cancel
        self._deadlines.add(remote)

    def _answer(self, book: BridgeBook, msg_id: int, request: InferRequest | None,
                result: RequestResult | None, error: InferoxyError | None) -> None:
        """Queue the one answer to a request; ``_flush_answers`` sends them, batched."""
        freed = request is None or request.on_inputs_freed is None
        body: bw.AnswerItem = {"id": msg_id, "status": 200, "freed": freed}
        outbox = self._outbox.get(book)
        if outbox is None:
            outbox = self._outbox[book] = ([], bytearray())
            self._flush_wake.set()
        held: RequestResult | None = None
        if result is not None:
            body["outputs"], is_held = intake.answer_outputs(result, self.gateway.cache.locate,
                                                             outbox[1])
            if result.in_regions:
                body["in_regions"] = {n: list(s) for n, s in result.in_regions.items()}
            if is_held:
                held = result
                body["held"] = True
            else:
                result.release()
        else:
            assert error is not None
            body["status"] = error.http_status
            body["error"] = intake.error_to_wire(error)
        book.answered(msg_id, held)
        outbox[0].append(body)

    async def _flush_answers(self) -> None:
        """Every answer queued in one scheduling round goes to its bridge in one message."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            outbox, self._outbox = self._outbox, {}
            for book, (items, blob) in outbox.items():
                sent = not book.dead and self._send(book.index, bw.ANSWER, {"items": items},
                                                    blob)
                if not sent:
                    for item in items:
                        if item.get("held"):
                            book.done(item["id"])  # nobody will read it

    def _inputs_freed(self, book: BridgeBook, msg_id: int) -> None:
        if book.inputs_freed(msg_id) and not book.dead:
            self._send(book.index, bw.FREE, {"id": msg_id})

    async def _forward_call(self, index: int, body: dict[str, Any], payload: bytes) -> None:
        from bridges.dataplane.http import request_from_wire, response_to_wire
        from bridges.rest.http11 import error_response
        from bridges.rest.routes import answer

        try:
            request = request_from_wire(body, payload)
            if request.path == "/v2/health/ready" and not self._all_listening.is_set():
                # Ready means every bridge listens: until then the kernel would hand every
                # connection to the ones that do.
                response = error_response(503, "not ready (data-plane processes starting)")
            else:
                response = await answer(self.gateway, request)
        except Exception:  # a bug in a route must not take the core (and every bridge) down
            log.exception("error answering a forwarded %s %s", body.get("method"),
                          body.get("path"))
            response = error_response(500, "internal error")
        self._send(index, bw.REPLY, {"id": body["id"], **response_to_wire(response)},
                   response.body)
