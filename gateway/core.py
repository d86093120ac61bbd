"""The gateway core: models, shared memory and copies, run in one Trio nursery.

Bridges talk to it through a small surface: ``model()`` to find a model (raises NotFound),
``slab`` to get input slots, ``submit`` + ``wait`` (on the model server) to infer, and the
health/metadata/statistics readers. The bridge -> core boundary is a message of descriptors
(``InferRequest``), so bridges can later run in other processes.

Models and versions: the gateway serves ``declarations`` (``gateway.declaration``), one
``ModelServer`` per (model, version) in ``servers``. ``apply`` reconciles them with a new
registry snapshot while requests flow: a new version starts; a removed model drains and stops;
a changed version starts a replacement next to the old server, which keeps serving until the
replacement is ready; a version dropped from its model keeps serving until another version of
the model is ready. A request that names no version gets the model's pinned
``default_version``, else its latest READY version (else its latest, while it loads).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from gateway import wakeup
from gateway.admission import Admission, Limits
from gateway.attach import AttachDesk
from gateway.config import ModelConfig
from gateway.declaration import ModelDeclaration, as_declarations
from gateway.errors import (
    NotFound,
    Unavailable,
    load_failed,
    model_not_loaded,
    unknown_model,
    unknown_version,
)
from gateway.intake import BridgeReports
from gateway.link import WorkerLink
from gateway.loadboard import LoadBoard, board_name
from gateway.model_server import ModelServer
from gateway.runtimes import runtime_for
from gateway.scaler import ModelScaler
from gateway.scheduling import SequenceQueues
from gateway.settings import Settings
from gateway.stats import BridgeCounters
from gateway.triton_config import load_override
from shm import wire
from shm.regions import RegionRegistry
from shm.segment import SegmentCache, pid_alive, sweep_stale, unlink_matching
from shm.slab import SlabAllocator
from supervisor.alerts import AlertKind, AlertPolicy, Alerts
from supervisor.attach import AttachRuntime
from supervisor.autoscale import ScalePolicy, copy_bounds
from supervisor.copy import Copy
from supervisor.crashloop import CrashLoopPolicy
from supervisor.gpus import nvml_gpus
from supervisor.lifecycle import CopyState
from supervisor.placement import Placement, discover_gpus, next_placement
from supervisor.runtime import CopySpec, Runtime
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")

SERVER_NAME = "inferoxy"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository"]
ROLLOVER_QUIET_S = 0.5  # a replaced server is stopped once idle this long (see _stop_server)


class Gateway:
    def __init__(self, settings: Settings,
                 models: Mapping[str, ModelConfig | ModelDeclaration],
                 runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.declarations = as_declarations(models)  # the registry as last applied
        self.runtime = runtime or runtime_for(settings)
        self.pid = os.getpid()
        self.shm_prefix = f"{settings.shm_prefix}-{self.pid}"
        # (model, version) -> the server its requests go to; all_servers() lists them.
        self.servers: dict[tuple[str, str], ModelServer] = {}
        self._versions: dict[str, dict[str, ModelServer]] = {}  # the same, by model
        self._replacing: dict[tuple[str, str], ModelServer] = {}  # changed: starting
        self._leaving: set[tuple[str, str]] = set()  # dropped from their model: serve on
        self._copy_owner: dict[int, ModelServer] = {}  # copy id -> its server
        self.change_listeners: list[Callable[[], None]] = []  # see changed()
        self.region_publishers: list[Callable[[], Awaitable[None]]] = []
        self.stats_fresheners: list[Callable[[], Awaitable[None]]] = []
        self._rollover_wake = trio.Event()
        self.live = False
        self.draining = False
        self.unready = False  # SIGTERM's grace (--drain-grace-s): not ready, still serving
        self._was_ready = False  # see ready
        self.gpus: list[int] = []
        self._copy_ids = itertools.count(1)
        self._model_scopes: dict[ModelServer, trio.CancelScope] = {}
        self._unloaded: dict[str, str] = {}  # name -> why it is not loaded
        # name -> its declaration with a repository load's config override (this gateway only)
        self._overrides: dict[str, ModelDeclaration] = {}
        self._unloading: set[ModelServer] = set()  # still answering their last requests
        self._model_nurseries: dict[ModelServer, trio.Nursery] = {}  # where its copies run
        self._retiring: set[Copy] = set()  # scaled down: finishing their batches, then stop
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
        self.supervisor: Supervisor
        self._nursery: trio.Nursery
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

    def model(self, name: str, version: str | None = None) -> ModelServer:
        """The server of ``version`` of a model, or of its default version (raises NotFound)."""
        versions = self._versions.get(name)
        if not versions:
            if name in self.declarations:
                raise model_not_loaded(name)
            raise unknown_model(name)
        if version:
            server = versions.get(version)
            if server is None:
                raise unknown_version(name, version)
            return server
        if len(versions) == 1:
            return next(iter(versions.values()))
        return self._default_server(name, versions)

    def _default_server(self, name: str, versions: dict[str, ModelServer]) -> ModelServer:
        """The pinned default, else the latest READY version, preferring declared ones."""
        declaration = self.declarations.get(name)
        pinned = declaration.default_version if declaration is not None else None
        if pinned and pinned in versions:
            return versions[pinned]
        return max(versions.items(), key=lambda kv: (
            kv[1].ready, (name, kv[0]) not in self._leaving, int(kv[0])))[1]

    def live_sequences(self) -> int:
        """Sequences open or waiting, over every stateful server (``--max-live-sequences``)."""
        return sum(s.sequences.live_count for s in self._running_servers()
                   if s.sequences is not None)

    def all_servers(self) -> list[ModelServer]:
        """Every (model, version) this gateway routes to, one server each."""
        return list(self.servers.values())

    def versions_of(self, name: str) -> list[str]:
        """The versions of a model this gateway routes to, ascending."""
        return sorted(self._versions.get(name, ()), key=int)

    @property
    def configs(self) -> dict[str, ModelConfig]:
        """Each declared model's latest version (read-only; see ``declarations``)."""
        return {n: d.versions[d.latest] for n, d in self.declarations.items()}

    def ensure_accepting(self, server: ModelServer) -> None:
        """Admit a request if a copy can serve it now or soon.

        A copy that is starting, or restarting after a crash, will serve the queue when it is
        ready (the request's deadline bounds the wait); a model whose copies all failed to
        load is refused with the reason.
        """
        if self.draining:
            raise Unavailable("the server is shutting down")
        for c in server.copies:  # the usual case, checked first: it runs for every request
            if c.ready and not c.crash_loop:
                return
        looping = self.unavailable_reason(server)
        if looping:
            raise Unavailable(f"model {server.config.name!r} is unavailable: {looping}")
        if any(c.ready or (c.state is not CopyState.STOPPED and not c.last_error
                           and not c.crash_loop)
               for c in server.copies):
            return
        reason = next((c.crash_loop or c.last_error for c in server.copies
                       if c.crash_loop or c.last_error), "")
        raise Unavailable(
            f"model {server.config.name!r} is not ready"
            + (f" (last error: {reason})" if reason else "")
        )

    def unavailable_reason(self, server: ModelServer) -> str:
        """Why a model cannot serve although it is loaded (every copy in a crash loop); ""."""
        copies = server.copies
        if copies and all(c.crash_loop for c in copies):
            return copies[0].crash_loop
        return ""

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
        self.supervisor = Supervisor(
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
                self._nursery = nursery
                self.run_dir = run_dir
                nursery.start_soon(wakeup.install().run)  # batch deadlines on time
                nursery.start_soon(self.link.run_inbox, self._on_worker_message)
                nursery.start_soon(self.alerts.run)
                nursery.start_soon(self._rollover)
                for declaration in self.declarations.values():
                    self._reconcile_model(declaration)
                self.live = True
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._close(run_dir, own_dir)

    # -- models: load and unload (the v2 repository extension) -----------------------------

    def _start_model(self, config: ModelConfig) -> ModelServer:
        server = ModelServer(config, self.link.send, self.slab, self.cache, board=self.board)
        if isinstance(server.scheduling, SequenceQueues):  # every model's sequences count
            server.scheduling.live_sequences = self.live_sequences
            server.scheduling.max_live_sequences = self.settings.max_live_sequences
        scope = trio.CancelScope()
        self._model_scopes[server] = scope
        policy = self._scale_policy(config)
        copies = [c for c in (self._new_copy(server) for _ in range(policy.min_copies)) if c]

        async def run_model() -> None:
            with scope:
                async with trio.open_nursery() as model_nursery:
                    self._model_nurseries[server] = model_nursery
                    model_nursery.start_soon(server.run)
                    for copy in copies:
                        self._run_copy(model_nursery, server, copy)
                    if policy.enabled:
                        model_nursery.start_soon(ModelScaler(self, server, policy).run)
            self._model_nurseries.pop(server, None)

        self._nursery.start_soon(run_model)
        return server

    # -- copies: placement, scaling --------------------------------------------------------

    def _scale_policy(self, config: ModelConfig) -> ScalePolicy:
        on_gpus = config.run_on_gpu and bool(self.gpus)
        lo, hi = copy_bounds(config.run_on_gpu, config.copies, config.min_copies,
                             config.max_copies, len(self.gpus))
        if self.attach_desk is not None:
            hi = lo  # attached copies: the platform decides how many run (gateway.attach)
        if on_gpus and (config.max_copies or 0) > len(self.gpus):
            log.warning("model %s: max_copies %d is more than the %d GPU(s); at most one copy "
                        "per GPU", config.name, config.max_copies, len(self.gpus))
        policy = ScalePolicy(lo, hi, config.scale_up_delay_s, config.scale_up_after_s,
                             config.scale_down_idle_s)
        if policy.enabled:
            log.info("model %s scales between %d and %d copies: up when the queue delay stays "
                     "over %.0f ms for %gs, down after %gs with a copy's worth idle",
                     config.name, lo, hi, policy.target_delay_s * 1e3, policy.up_after_s,
                     policy.idle_s)
        return policy

    def _copies_of(self, server: ModelServer) -> list[Copy]:
        return server.copies + [c for c in self._retiring if self._copy_owner.get(c.id) is server]

    def _running_servers(self) -> set[ModelServer]:
        """Every server with copies: routed, replacements starting, and draining ones."""
        return {*self.servers.values(), *self._replacing.values(), *self._unloading}

    def _placement_for(self, server: ModelServer) -> Placement | None:
        """Where one more copy of the model would go; None when no GPU is free for it."""
        everyone = [c for s in self._running_servers() | {server} for c in s.copies]
        return next_placement(
            server.config.run_on_gpu, self.gpus,
            (c.placement.gpu for c in self._copies_of(server)),
            (c.placement.gpu for c in (*everyone, *self._retiring)),
            simulated=self.settings.simulate_gpus > 0,
        )

    def queued_elsewhere_s(self, server: ModelServer) -> float:
        """How long the oldest request of the model queued in a data-plane process has
        waited (seconds; as last reported)."""
        return self.bridge_reports.head_age(server.config.name, server.config.version)

    def slot_free(self, server: ModelServer) -> bool:
        return self._placement_for(server) is not None

    def _new_copy(self, server: ModelServer) -> Copy | None:
        placement = self._placement_for(server)
        if placement is None:
            return None
        copy = Copy(next(self._copy_ids), server.config.name, placement,
                    on_change=self.changed)
        server.copies.append(copy)
        self._copy_owner[copy.id] = server
        return copy

    def _run_copy(self, nursery: trio.Nursery, server: ModelServer, copy: Copy) -> None:
        config = server.config
        spec = CopySpec(
            copy_id=copy.id, model=config.name, entrypoint=config.entrypoint,
            image=config.address, parameters=config.parameters, placement=copy.placement,
            run_dir=self.run_dir, shm_prefix=self.shm_prefix,
            heartbeat_s=self.settings.heartbeat_s,
            health_interval_s=self.settings.health_interval_s,
            hang_timeout_s=config.hang_timeout_s, version=config.version,
        )
        nursery.start_soon(self.supervisor.run_copy, copy, spec, server)

    def add_copy(self, server: ModelServer) -> Copy | None:
        """Start one more copy of a loaded model (autoscaling); None when none can be."""
        nursery = self._model_nurseries.get(server)
        if (nursery is None or self.draining or server in self._unloading
                or server not in self._model_scopes):
            return None
        copy = self._new_copy(server)
        if copy is not None:
            self._run_copy(nursery, server, copy)
        return copy

    async def retire_copy(self, server: ModelServer, copy: Copy) -> None:
        """Stop one copy for good (autoscaling): no new batches, its own ones finish first."""
        if copy not in server.copies:
            return
        server.copies.remove(copy)  # the batcher sends it nothing more
        self._retiring.add(copy)
        try:
            with trio.move_on_after(self.settings.drain_timeout_s):
                while copy.outstanding and copy.ready:
                    await trio.sleep(0.02)
            await self.supervisor.stop_copies([copy], timeout_s=5.0)
        finally:
            self._retiring.discard(copy)
            self._copy_owner.pop(copy.id, None)

    def _on_crash_loop(self, copy: Copy, entered: bool) -> None:
        """A copy entered (or left) a crash loop: say so, once."""
        server = self._copy_owner.get(copy.id)
        if server is None or copy not in server.copies:
            return
        if server in self._replacing.values():
            return  # a new declaration that fails to load: the old one serves (see _rollover)
        name = copy.model
        if not entered:
            if not any(c.crash_loop for c in server.copies):
                self.alerts.resolve(
                    name, f"model {name!r} recovered: copy {copy.id} is serving again",
                    kinds=frozenset({AlertKind.CRASH_LOOP, AlertKind.MODEL_UNAVAILABLE}),
                )
            return
        details = {"copy": copy.id, "device": copy.placement.device, "gpu": copy.placement.gpu,
                   "restarts": copy.restarts, "reason": copy.crash_loop}
        if self.unavailable_reason(server):
            self.alerts.fire(AlertKind.MODEL_UNAVAILABLE, name,
                             f"model {name!r} is unavailable: {copy.crash_loop}", **details)
        else:
            serving = sum(c.ready for c in server.copies)
            self.alerts.fire(AlertKind.CRASH_LOOP, name,
                             f"copy {copy.id} of model {name!r} is in a {copy.crash_loop}; "
                             f"{serving} copy(ies) still serve", **details)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every version of every model the registry knows, with its state (v2 index)."""
        index = []
        for name, declaration in self.declarations.items():
            versions = list(declaration.versions)
            versions += sorted((v for n, v in self._leaving if n == name), key=int)
            for version in versions:
                state, reason = self._version_state(name, version)
                index.append({"name": name, "version": version, "state": state,
                              "reason": reason})
        return index

    def _version_state(self, name: str, version: str) -> tuple[str, str]:
        key = (name, version)
        server = self.servers.get(key)
        if server is None:
            return "UNAVAILABLE", self._unloaded.get(name, "unloaded")
        replacement = self._replacing.get(key)
        leaving = key in self._leaving
        if server.ready:
            if replacement is not None:
                return "READY", "serving while its new declaration loads" + (
                    f" ({self._loading_reason(replacement)})"
                    if self._loading_reason(replacement) else "")
            if leaving:
                return "READY", ("removed from the model's declaration: serving until another "
                                 "version is ready")
            return "READY", ""
        if self.unavailable_reason(server):
            return "UNAVAILABLE", self.unavailable_reason(server)
        return "LOADING", self._loading_reason(server)

    def _loading_reason(self, server: ModelServer) -> str:
        reason = next((c.last_error for c in server.copies if c.last_error), "")
        return reason or self.runtime.progress(server.config.address)  # e.g. an image pull

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Start a model's versions and wait (bounded) until one is ready; no-op if loaded.

        ``parameters.config`` (Triton's model config JSON, ``gateway.triton_config``) overrides
        the declaration on this gateway until the next load without one or an unload; an
        invalid override is refused before anything changes, and one that fails to load is
        taken back (the model serves on as before).
        """
        declaration = self.declarations.get(name)
        if declaration is None:
            raise NotFound(load_failed(name, "failed to poll from model repository: no such "
                                             "model is declared"))
        if self.draining:
            raise Unavailable("the server is shutting down")
        override = load_override(declaration, parameters)
        previous = self._overrides.pop(name, None)
        if override is not None:
            self._overrides[name] = override
        target = override or declaration
        self._unloaded.pop(name, None)
        self._reconcile_model(target)
        log.info("loading model %s%s", name, " with a config override" if override else "")
        reason = await self._wait_loaded(target)
        if reason is not None:
            if override is not None:  # take it back: what served before serves on
                self._overrides.pop(name, None)
                if previous is not None:
                    self._overrides[name] = previous
                self._reconcile_model(previous or declaration)
            raise Unavailable(load_failed(name, reason))

    async def _wait_loaded(self, target: ModelDeclaration) -> str | None:
        """Wait until requests go to ``target``'s configuration and a version is ready (None),
        or its copies all failed or the startup timeout passed (why)."""
        name = target.name
        keys = [(name, v) for v in target.versions]

        def switched() -> bool:
            return all((s := self.servers.get(k)) is not None and s.config == target.versions[k[1]]
                       for k in keys) and any(self.servers[k].ready for k in keys)

        def starting() -> list[ModelServer]:
            return [s for k in keys
                    if (s := self._replacing.get(k) or self.servers.get(k)) is not None
                    and s.config == target.versions[k[1]]]

        with trio.move_on_after(self.settings.startup_timeout_s):
            while not switched():
                servers = starting()
                if not servers or all(self._failed(s) for s in servers):
                    break
                await trio.sleep(0.02)
        if switched():
            return None
        return next((c.last_error or c.crash_loop for s in starting() for c in s.copies
                     if c.last_error or c.crash_loop), "timed out")

    async def unload_model(self, name: str) -> None:
        """Stop taking requests for a model, let its pending ones finish, stop its copies."""
        if name not in self.declarations:
            raise unknown_model(name)
        self._unloaded[name] = "unloaded"
        self._overrides.pop(name, None)  # a later load reads the declaration again
        servers = self._drop_model(name)
        if servers:
            log.info("unloading model %s: %d request(s) pending", name,
                     sum(s.pending for s in servers))
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(self._stop_server, server, "was unloaded")

    # -- live changes: reconciling with the registry ---------------------------------------

    def apply(self, models: Mapping[str, ModelDeclaration]) -> None:
        """Serve ``models`` from now on (a registry snapshot); changes roll without a restart.

        Idempotent: applying the same snapshot twice changes nothing. A model unloaded here
        through the repository API stays unloaded until it is loaded again.
        """
        old, self.declarations = self.declarations, dict(models)
        if not self.live or self.draining:
            return
        for name in old.keys() - self.declarations.keys():
            self._unloaded.pop(name, None)
            self._overrides.pop(name, None)
            servers = self._drop_model(name)
            if servers:
                log.info("model %s was removed from the registry: draining and stopping it", name)
            for server in servers:
                self._nursery.start_soon(self._stop_server, server, "was removed")
        for declaration in self.declarations.values():
            if declaration.name not in self._unloaded:
                self._reconcile_model(self._overrides.get(declaration.name, declaration))

    def _reconcile_model(self, declaration: ModelDeclaration) -> None:
        name = declaration.name
        for version, config in declaration.versions.items():
            key = (name, version)
            self._leaving.discard(key)
            active, pending = self.servers.get(key), self._replacing.get(key)
            if active is None:
                log.info("model %s version %s: starting", name, version)
                self._route(key, self._start_model(config))
            elif active.config == config:
                if pending is not None:  # changed back before the replacement was ready
                    del self._replacing[key]
                    self._nursery.start_soon(self._stop_server, pending, "was superseded")
            elif pending is None or pending.config != config:
                if pending is not None:
                    self._nursery.start_soon(self._stop_server, pending, "was superseded")
                log.info("model %s version %s changed: starting the new declaration; the old "
                         "one serves until it is ready", name, version)
                self._replacing[key] = self._start_model(config)
        for version in self._versions.get(name, {}):
            if version not in declaration.versions and (name, version) not in self._leaving:
                log.info("model %s version %s was removed from its declaration: it serves "
                         "until another version is ready", name, version)
                self._leaving.add((name, version))
        self._rollover_wake.set()

    def _route(self, key: tuple[str, str], server: ModelServer) -> ModelServer | None:
        self.changed()
        old = self.servers.get(key)
        self.servers[key] = server
        self._versions.setdefault(key[0], {})[key[1]] = server
        self._update_versions(key[0])
        return old

    def _unroute(self, key: tuple[str, str]) -> ModelServer | None:
        self.changed()
        server = self.servers.pop(key, None)
        versions = self._versions.get(key[0], {})
        versions.pop(key[1], None)
        if not versions:
            self._versions.pop(key[0], None)
        self._update_versions(key[0])
        return server

    def _update_versions(self, name: str) -> None:
        """Tell every server of the model which versions there are (for metadata)."""
        versions = tuple(self.versions_of(name))
        for server in self._versions.get(name, {}).values():
            server.versions = versions
        for (n, _), server in self._replacing.items():
            if n == name:
                server.versions = versions

    def _drop_model(self, name: str) -> list[ModelServer]:
        """Stop routing to every version of a model; returns the servers to stop."""
        servers = [s for (n, _), s in self._replacing.items() if n == name]
        for key in [k for k in self._replacing if k[0] == name]:
            del self._replacing[key]
        self._leaving -= {k for k in self._leaving if k[0] == name}
        for version in list(self._versions.get(name, {})):
            server = self._unroute((name, version))
            if server is not None:
                servers.append(server)
        return servers

    async def _rollover(self) -> None:
        """Switch to replacements once ready; stop dropped versions once another is ready."""
        warned: set[tuple[str, str]] = set()
        while True:
            if not self._replacing and not self._leaving:
                warned.clear()
                await self._rollover_wake.wait()
                self._rollover_wake = trio.Event()
                continue
            for key, new in list(self._replacing.items()):
                if new.ready:
                    del self._replacing[key]
                    old = self._route(key, new)
                    log.info("model %s version %s: the new declaration is ready; switched to "
                             "it, draining the old one", *key)
                    if old is not None:
                        self._nursery.start_soon(self._stop_server, old, "was replaced",
                                                 ROLLOVER_QUIET_S)
                elif self._failed(new) and key not in warned:
                    warned.add(key)
                    log.error("model %s version %s: the new declaration fails to load (%s); "
                              "the old one keeps serving", *key, self._loading_reason(new))
            for key in list(self._leaving):
                others = [s for v, s in self._versions.get(key[0], {}).items()
                          if (key[0], v) not in self._leaving and s.ready]
                if others or key not in self.servers:
                    self._leaving.discard(key)
                    old = self._unroute(key)
                    if old is not None:
                        log.info("model %s version %s: another version is ready; draining and "
                                 "stopping this one", *key)
                        self._nursery.start_soon(self._stop_server, old, "was removed",
                                                 ROLLOVER_QUIET_S)
            await trio.sleep(0.05)

    @staticmethod
    def _failed(server: ModelServer) -> bool:
        return bool(server.copies) and all(c.last_error or c.crash_loop for c in server.copies)

    async def _stop_server(self, server: ModelServer, why: str, quiet_s: float = 0.0) -> None:
        """Drain a server that no longer gets requests, then stop its copies for good.

        ``quiet_s``: after a switch, a request may hold the old server for a moment before it
        queues (its body is being read); wait until the server has been idle this long.
        """
        name, version = server.config.name, server.config.version
        self._unloading.add(server)
        try:
            with trio.move_on_after(self.settings.drain_timeout_s):
                idle_since = trio.current_time()
                while True:
                    now = trio.current_time()
                    if server.pending:
                        idle_since = now
                    elif now - idle_since >= quiet_s:
                        break
                    await trio.sleep(0.02)
            server.closed = True  # from here on, a late request is refused, not stranded
            server.fail_all(Unavailable(f"model {name!r} version {version} {why}"))
            retiring = [c for c in self._retiring if self._copy_owner.get(c.id) is server]
            await self.supervisor.stop_copies(server.copies + retiring, timeout_s=5.0)
        finally:
            self._unloading.discard(server)
            scope = self._model_scopes.pop(server, None)
            if scope is not None:
                scope.cancel()
            for copy in server.copies:
                self._copy_owner.pop(copy.id, None)
            server.copies.clear()  # a request that still finds it is refused, not stranded
            log.info("model %s version %s %s: stopped", name, version, why)

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

    # -- the inbox -------------------------------------------------------------------------

    def _on_worker_message(self, kind: bytes, body: dict[str, Any]) -> None:
        if kind == wire.ATTACH:
            if self.attach_desk is not None:
                self.attach_desk.on_attach(body)
            return
        copy_id = body.get("copy")
        if not isinstance(copy_id, int):
            return
        if kind == wire.HELLO:
            inbox = body.get("inbox")
            copy = self.supervisor.copies.get(copy_id)
            if copy is None or not wire.in_run_dir(self.run_dir, inbox):
                log.warning("copy %s said HELLO without a batch socket in the run directory",
                            copy_id)
                return
            assert isinstance(inbox, str)
            if copy.inbox != inbox:
                self.link.connect_copy(copy_id, inbox)
                copy.inbox = inbox
            self.supervisor.on_hello(copy_id, body.get("pid"))
            return
        copy = self.supervisor.on_message(copy_id)
        if copy is None:
            return
        if kind == wire.HEARTBEAT:
            self.supervisor.on_heartbeat(copy_id, body.get("busy_s"))
            return
        if kind == wire.UNHEALTHY:
            self.supervisor.on_unhealthy(copy_id, str(body.get("message", ""))[:2000])
            return
        server = self._copy_owner.get(copy_id)
        if server is None:
            return
        if kind == wire.RESULT:
            server.on_result(copy, body)
        elif kind == wire.ERROR:
            server.on_error(copy, body)
        elif kind == wire.FATAL:
            self.supervisor.on_fatal(copy_id, str(body.get("message", ""))[:2000])

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
