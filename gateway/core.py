"""The gateway core: the facade bridges use, over the parts that each hold one job.

Bridges talk to it through a small surface: ``model()`` to find a model (raises NotFound),
``slab`` to get input slots, ``submit`` + ``wait`` (on the model server) to infer, and the
health/metadata/statistics readers. The bridge -> core boundary is a message of descriptors
(``InferRequest``), so bridges can later run in other processes.

Models and versions: the gateway serves ``declarations`` (``gateway.declaration``), one
``ModelServer`` per (model, version). ``apply`` reconciles them with a new registry snapshot
while requests flow. The gateway runs the parts below in one Trio nursery and passes each
what it needs; each holds its own maps:

* ``gateway.repository``: the declarations, and the repository API (load, unload, index);
* ``gateway.routing``: which server each (model, version) goes to; default versions;
* ``gateway.rollover``: starting, replacing and dropping versions as declarations change;
* ``gateway.fleet``: each server's copies: placement, autoscaling, retiring, stopping;
* ``gateway.availability``: whether a server can take a request, and crash-loop alerts;
* ``gateway.inbox``: each worker message to its reader;
* ``supervisor.supervisor``: each copy's process, and which server it serves.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from gateway import availability, wakeup
from gateway.admission import Admission, Limits
from gateway.attach import AttachDesk
from gateway.config import ModelConfig
from gateway.declaration import ModelDeclaration, as_declarations
from gateway.errors import Unavailable, model_not_loaded, unknown_model
from gateway.fleet import Fleet
from gateway.inbox import WorkerInbox
from gateway.intake import BridgeReports
from gateway.link import WorkerLink
from gateway.loadboard import LoadBoard, board_name
from gateway.model_server import ModelServer
from gateway.repository import Repository
from gateway.rollover import Rollover
from gateway.routing import RoutingTable
from gateway.runtimes import runtime_for
from gateway.scheduling import SequenceQueues
from gateway.settings import Settings
from gateway.stats import BridgeCounters
from shm.regions import RegionRegistry
from shm.segment import SegmentCache, pid_alive, sweep_stale, unlink_matching
from shm.slab import SlabAllocator
from supervisor.alerts import AlertPolicy, Alerts
from supervisor.attach import AttachRuntime
from supervisor.copy import Copy
from supervisor.crashloop import CrashLoopPolicy
from supervisor.gpus import nvml_gpus
from supervisor.placement import discover_gpus
from supervisor.runtime import Runtime
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")

SERVER_NAME = "inferoxy"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository"]


class Gateway:
    def __init__(self, settings: Settings,
                 models: Mapping[str, ModelConfig | ModelDeclaration],
                 runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or runtime_for(settings)
        self.pid = os.getpid()
        self.shm_prefix = f"{settings.shm_prefix}-{self.pid}"
        self.routing: RoutingTable[ModelServer] = RoutingTable(on_change=self.changed)
        self.rollover = Rollover(self.routing, self._start_server, self._stop_soon,
                                 self.runtime.progress)
        self.repository = Repository(
            as_declarations(models), self.rollover, stop=self._stop, stop_soon=self._stop_soon,
            draining=lambda: self.draining, startup_timeout_s=settings.startup_timeout_s)
        self.change_listeners: list[Callable[[], None]] = []  # see changed()
        self.region_publishers: list[Callable[[], Awaitable[None]]] = []
        self.stats_fresheners: list[Callable[[], Awaitable[None]]] = []
        self.live = False
        self.draining = False
        self.unready = False  # SIGTERM's grace (--drain-grace-s): not ready, still serving
        self._was_ready = False  # see ready
        self.gpus: list[int] = []
        self.limits = Limits.of(settings)  # what one request may ask for (every bridge)
        self.bridge_answers = BridgeCounters()  # infer answers per bridge and status class
        self.bridge_reports = BridgeReports()  # what data-plane processes (--workers) report
        self.alerts = Alerts(settings.alert_webhook,
                             AlertPolicy(recover_hold_s=settings.alert_recover_hold_s))
        self.regions = RegionRegistry(
            enabled=settings.allow_client_shm, own_prefix=settings.shm_prefix,
            max_regions=settings.max_client_regions,
        )
        # Created in run(): they need the run directory, and cleanup follows run()'s scope.
        self.slab: SlabAllocator
        self.cache: SegmentCache
        self.board: LoadBoard  # every producer's batches outstanding at each copy
        self.link: WorkerLink
        self.supervisor: Supervisor[ModelServer]
        self.fleet: Fleet
        self.run_dir = ""
        self.attach_desk: AttachDesk | None = None  # --runtime attach: admits copies

    async def regions_published(self) -> None:
        """Return once every process serving requests has the client regions as they are
        now (data-plane processes hold a replica; see ``region_publishers``)."""
        for publish in self.region_publishers:
            await publish()

    async def stats_fresh(self) -> None:
        """Return once the statistics hold what every process counted until now (data-plane
        processes report on their own only every 0.1 s; see ``stats_fresheners``)."""
        for freshen in self.stats_fresheners:
            await freshen()

    def changed(self) -> None:
        """Something data-plane processes mirror changed (a copy's state, the routing)."""
        for listener in self.change_listeners:
            listener()

    # -- what bridges read -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Live, not draining, and every model had a ready copy — at start. Once ready, a
        model added or a copy restarting later does not take it back: every gateway of a
        fleet shares the registry, and a balancer would drop them all at once (a model's own
        readiness says it per model)."""
        if not self.live or self.draining or self.unready:
            return False
        if not self._was_ready:
            self._was_ready = all(s.ready for s in self.servers.values() if s.copies)
        return self._was_ready

    @property
    def servers(self) -> dict[tuple[str, str], ModelServer]:
        """(model, version) -> the server its requests go to (read-only; ``gateway.routing``)."""
        return self.routing.servers

    def model(self, name: str, version: str | None = None) -> ModelServer:
        """The server of ``version`` of a model, or of its default version (raises NotFound)."""
        declaration = self.declarations.get(name)
        pinned = declaration.default_version if declaration is not None else None
        server = self.routing.resolve(name, version, pinned)
        if server is None:
            if declaration is not None:
                raise model_not_loaded(name)
            raise unknown_model(name)
        return server

    def live_sequences(self) -> int:
        """Sequences open or waiting, over every stateful server (``--max-live-sequences``)."""
        return sum(s.sequences.live_count for s in self._running_servers()
                   if s.sequences is not None)

    def all_servers(self) -> list[ModelServer]:
        """Every (model, version) this gateway routes to, one server each."""
        return list(self.routing.servers.values())

    def versions_of(self, name: str) -> list[str]:
        """The versions of a model this gateway routes to, ascending."""
        return self.routing.versions_of(name)

    @property
    def configs(self) -> dict[str, ModelConfig]:
        """Each declared model's latest version (read-only; see ``declarations``)."""
        return {n: d.versions[d.latest] for n, d in self.declarations.items()}

    def ensure_accepting(self, server: ModelServer) -> None:
        """Admit a request if a copy can serve it now or soon (``gateway.availability``)."""
        if self.draining:
            raise Unavailable("the server is shutting down")
        why = availability.refusal(server)
        if why is not None:
            raise Unavailable(why)

    def unavailable_reason(self, server: ModelServer) -> str:
        """Why a model cannot serve although it is loaded (every copy in a crash loop); ""."""
        return availability.unavailable_reason(server)

    def admission(self, server: ModelServer) -> Admission:
        """A new request's way into ``server`` (see ``gateway.admission``)."""
        return Admission(server, self.slab, self.regions, self.settings.request_timeout_s)

    def server_metadata(self) -> dict[str, Any]:
        extensions = EXTENSIONS + (["system_shared_memory"] if self.regions.enabled else [])
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": extensions}

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        swept = sweep_stale(self.settings.shm_prefix)
        if swept:
            log.info("swept %d shared-memory segment(s) left by dead gateways", len(swept))
        _sweep_run_dirs()
        own_dir = not self.settings.run_dir  # a given one (shared with copies) is kept
        if own_dir:
            run_dir = tempfile.mkdtemp(prefix=f"inferoxy-{self.pid}-")
        else:
            run_dir = os.path.abspath(self.settings.run_dir)
            os.makedirs(run_dir, exist_ok=True)
        if isinstance(self.runtime, AttachRuntime):
            self.runtime.run_dir = run_dir
            self.attach_desk = AttachDesk(self, self.runtime)
        await self.runtime.sweep_orphans()  # containers of dead gateways, dead attached copies
        log.info("run directory (worker sockets): %s", run_dir)
        self.slab = SlabAllocator(
            f"{self.shm_prefix}-g", limit_bytes=self.settings.shm_limit_bytes,
            segment_bytes=64 << 20,
        )
        self.cache = SegmentCache()
        self.board = LoadBoard.create(board_name(self.shm_prefix))
        self.link = WorkerLink(run_dir)
        self.supervisor = Supervisor[ModelServer](
            self.runtime, self.link,
            on_worker_gone=self._worker_gone,
            startup_timeout_s=self.settings.startup_timeout_s,
            heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
            hang_timeout_s=self.settings.hang_timeout_s,
            crash_loop=CrashLoopPolicy(self.settings.crash_loop_exits,
                                       self.settings.crash_loop_window_s),
            on_crash_loop=self._on_crash_loop,
        )
        self.gpus = await trio.to_thread.run_sync(
            discover_gpus, self.settings.gpus, self.settings.simulate_gpus
        )
        if self.attach_desk is not None and self.gpus and self.settings.simulate_gpus <= 0:
            # Attached copies may name their GPU by UUID (the NVIDIA device plugin does).
            self.attach_desk.gpu_uuids = {g.uuid: g.index for g in
                                          await trio.to_thread.run_sync(nvml_gpus)}
        log.info("GPUs: %s%s", self.gpus or "none (GPU models run on the CPU)",
                 " (simulated)" if self.settings.simulate_gpus > 0 else "")
        try:
            async with trio.open_nursery() as nursery:
                self.run_dir = run_dir
                self.fleet = Fleet(
                    settings=self.settings, routing=self.routing, supervisor=self.supervisor,
                    nursery=nursery, run_dir=run_dir, shm_prefix=self.shm_prefix,
                    gpus=self.gpus, attached=self.attach_desk is not None, alerts=self.alerts,
                    bridge_reports=self.bridge_reports, draining=lambda: self.draining,
                    on_change=self.changed,
                )
                inbox = WorkerInbox(self.supervisor, self.link, run_dir, self.attach_desk)
                nursery.start_soon(wakeup.install().run)  # batch deadlines on time
                nursery.start_soon(self.link.run_inbox, inbox.on_message)
                nursery.start_soon(self.alerts.run)
                nursery.start_soon(self.rollover.run)
                for declaration in self.declarations.values():
                    self.rollover.reconcile(declaration)
                self.live = True
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._close(run_dir, own_dir)

    # -- servers and their copies (gateway.fleet) ------------------------------------------

    def _new_server(self, config: ModelConfig) -> ModelServer:
        server = ModelServer(config, self.link.send, self.slab, self.cache, board=self.board)
        if isinstance(server.scheduling, SequenceQueues):  # every model's sequences count
            server.scheduling.live_sequences = self.live_sequences
            server.scheduling.max_live_sequences = self.settings.max_live_sequences
        return server

    def _start_server(self, config: ModelConfig) -> ModelServer:
        return self.fleet.run_server(self._new_server(config))

    def _stop_soon(self, server: ModelServer, why: str, quiet_s: float = 0.0) -> None:
        self.fleet.stop_soon(server, why, quiet_s)

    async def _stop(self, server: ModelServer, why: str) -> None:
        await self.fleet.stop_server(server, why)

    def _running_servers(self) -> set[ModelServer]:
        """Every server with copies: routed, replacements starting, and draining ones."""
        return self.fleet.running()

    def add_copy(self, server: ModelServer) -> Copy | None:
        """Start one more copy of a loaded model (an attached worker); None when none can be."""
        return self.fleet.add_copy(server)

    def _on_crash_loop(self, copy: Copy, entered: bool) -> None:
        """A copy entered (or left) a crash loop: say so, once."""
        server = self.supervisor.observer(copy.id)
        if server is None or copy not in server.copies:
            return
        if self.routing.is_replacement(server):
            return  # a new declaration that fails to load: the old one serves (gateway.rollover)
        availability.alert_crash_loop(self.alerts, server, copy, entered)

    # -- the repository API (gateway.repository) --------------------------------------------

    def repository_index(self) -> list[dict[str, Any]]:
        """Every version of every model the registry knows, with its state (v2 index)."""
        return self.repository.index()

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Start a model's versions and wait (bounded) until one is ready; no-op if loaded."""
        await self.repository.load(name, parameters)

    async def unload_model(self, name: str) -> None:
        """Stop taking requests for a model, let its pending ones finish, stop its copies."""
        await self.repository.unload(name)

    def apply(self, models: Mapping[str, ModelDeclaration]) -> None:
        """Serve ``models`` from now on (a registry snapshot); changes roll without a restart."""
        self.repository.apply(models, serving=self.live and not self.draining)

    @property
    def declarations(self) -> dict[str, ModelDeclaration]:
        """The registry as last applied (read-only; ``gateway.repository``)."""
        return self.repository.declarations

    # -- drain and close -------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Readiness goes false and new requests are refused (once)."""
        if not self.draining:
            self.draining = True
            pending = sum(s.pending for s in self._running_servers())
            log.info("draining: %d request(s) pending", pending + sum(
                n for p in self.bridge_reports.pending.values() for n in p.values()))

    async def drain(self) -> None:
        """Readiness goes false, queued and in-flight requests finish (bounded), copies stop."""
        self.begin_drain()
        servers = self._running_servers()
        with trio.move_on_after(self.settings.drain_timeout_s):
            while any(s.pending for s in servers):
                await trio.sleep(0.02)
        for server in servers:
            server.fail_all(Unavailable("the server is shutting down"))
        await self.supervisor.shutdown(timeout_s=5.0)

    async def _close(self, run_dir: str, own_dir: bool = True) -> None:
        self.live = False
        if not self.draining:
            for server in self._running_servers():
                server.fail_all(Unavailable("the server is shutting down"))
            await self.supervisor.shutdown(timeout_s=5.0)
        self.link.close()
        self.board.close()
        self.cache.close()
        self.slab.close()
        unlink_matching(f"{self.shm_prefix}-")  # worker slabs of copies that were killed
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:  # shared with copies: remove only our sockets (attached copies see them go)
            for path in Path(run_dir).glob("*.sock"):
                if not path.name.startswith("attach-"):
                    path.unlink(missing_ok=True)
        if isinstance(self.runtime, AttachRuntime):
            self.runtime.close()
        log.info("stopped; shared memory released")

    def _worker_gone(self, pid: int) -> None:
        prefix = f"{self.shm_prefix}-w{pid}-"
        self.cache.forget(prefix)
        unlink_matching(prefix)


def _sweep_run_dirs() -> None:
    """Remove the socket directories of gateways that were killed (their pid is gone)."""
    for path in Path(tempfile.gettempdir()).glob("inferoxy-*-*"):
        pid = path.name.split("-")[1]
        if path.is_dir() and pid.isdecimal() and 0 < int(pid) < 2**22 and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
