"""The gateway core: models, shared memory and copies, run in one Trio nursery.

Bridges talk to it through a small surface: ``model()`` to find a model (raises NotFound),
``slab`` to get input slots, ``submit`` + ``wait`` (on the model server) to infer, and the
health/metadata/statistics readers. The bridge -> core boundary is a message of descriptors
(``InferRequest``), so bridges can later run in other processes.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from typing import Any

import trio

from gateway.admission import Admission
from gateway.config import ModelConfig
from gateway.errors import NotFound, Unavailable
from gateway.link import WorkerLink
from gateway.model_server import ModelServer
from gateway.runtimes import runtime_for
from gateway.scaler import ModelScaler
from gateway.settings import Settings
from gateway.stateful_server import StatefulModelServer
from shm import wire
from shm.regions import RegionRegistry
from shm.segment import SegmentCache, sweep_stale, unlink_matching
from shm.slab import SlabAllocator
from supervisor.alerts import AlertKind, AlertPolicy, Alerts
from supervisor.autoscale import ScalePolicy, copy_bounds
from supervisor.copy import Copy
from supervisor.crashloop import CrashLoopPolicy
from supervisor.lifecycle import CopyState
from supervisor.placement import Placement, discover_gpus, next_placement
from supervisor.runtime import CopySpec, Runtime
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")

SERVER_NAME = "inferoxy"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository"]


class Gateway:
    def __init__(self, settings: Settings, models: dict[str, ModelConfig],
                 runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.configs = models
        self.runtime = runtime or runtime_for(settings)
        self.pid = os.getpid()
        self.shm_prefix = f"{settings.shm_prefix}-{self.pid}"
        self.servers: dict[str, ModelServer] = {}
        self.live = False
        self.draining = False
        self.gpus: list[int] = []
        self._copy_ids = itertools.count(1)
        self._model_scopes: dict[str, trio.CancelScope] = {}
        self._unloaded: dict[str, str] = {}  # name -> why it is not loaded
        self._unloading: set[ModelServer] = set()  # still answering their last requests
        self._model_nurseries: dict[ModelServer, trio.Nursery] = {}  # where its copies run
        self._retiring: set[Copy] = set()  # scaled down: finishing their batches, then stop
        self.alerts = Alerts(settings.alert_webhook,
                             AlertPolicy(recover_hold_s=settings.alert_recover_hold_s))
        self.regions = RegionRegistry(
            enabled=settings.allow_client_shm, own_prefix=settings.shm_prefix,
            max_regions=settings.max_client_regions,
        )
        # Created in run(): they need the run directory, and cleanup follows run()'s scope.
        self.slab: SlabAllocator
        self.cache: SegmentCache
        self.link: WorkerLink
        self.supervisor: Supervisor
        self._nursery: trio.Nursery
        self._run_dir = ""

    # -- what bridges read -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.live and not self.draining and all(
            s.ready for s in self.servers.values() if s.copies
        )

    def model(self, name: str, version: str | None = None) -> ModelServer:
        server = self.servers.get(name)
        if server is None:
            if name in self.configs:
                raise NotFound(f"model {name!r} is not loaded")
            raise NotFound(f"unknown model {name!r}")
        if version not in (None, "", server.config.version):
            raise NotFound(f"unknown version {version!r} of model {name!r}")
        return server

    def ensure_accepting(self, server: ModelServer) -> None:
        """Admit a request if a copy can serve it now or soon.

        A copy that is starting, or restarting after a crash, will serve the queue when it is
        ready (the request's deadline bounds the wait); a model whose copies all failed to
        load is refused with the reason.
        """
        if self.draining:
            raise Unavailable("the server is shutting down")
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
        await self.runtime.sweep_orphans()  # containers of dead gateways (docker runtime)
        run_dir = tempfile.mkdtemp(prefix=f"inferoxy-{self.pid}-")
        self.slab = SlabAllocator(
            f"{self.shm_prefix}-g", limit_bytes=self.settings.shm_limit_bytes,
            segment_bytes=64 << 20,
        )
        self.cache = SegmentCache()
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
        log.info("GPUs: %s%s", self.gpus or "none (GPU models run on the CPU)",
                 " (simulated)" if self.settings.simulate_gpus > 0 else "")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._run_dir = run_dir
                nursery.start_soon(self.link.run_inbox, self._on_worker_message)
                nursery.start_soon(self.alerts.run)
                for config in self.configs.values():
                    self._start_model(config)
                self.live = True
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._close(run_dir)

    # -- models: load and unload (the v2 repository extension) -----------------------------

    def _start_model(self, config: ModelConfig) -> ModelServer:
        kind = ModelServer if config.stateless else StatefulModelServer
        server = kind(config, self.link.send, self.slab, self.cache)
        self.servers[config.name] = server
        self._unloaded.pop(config.name, None)
        scope = trio.CancelScope()
        self._model_scopes[config.name] = scope
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
        if not config.stateless:
            hi = lo
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

    def _copies_of(self, model: str) -> list[Copy]:
        server = self.servers.get(model)
        own = server.copies if server is not None else []
        return own + [c for c in self._retiring if c.model == model]

    def _placement_for(self, server: ModelServer) -> Placement | None:
        """Where one more copy of the model would go; None when no GPU is free for it."""
        everyone = [c for s in (*self.servers.values(), *self._unloading) for c in s.copies]
        return next_placement(
            server.config.run_on_gpu, self.gpus,
            (c.placement.gpu for c in self._copies_of(server.config.name)),
            (c.placement.gpu for c in (*everyone, *self._retiring)),
            simulated=self.settings.simulate_gpus > 0,
        )

    def slot_free(self, server: ModelServer) -> bool:
        return self._placement_for(server) is not None

    def _new_copy(self, server: ModelServer) -> Copy | None:
        placement = self._placement_for(server)
        if placement is None:
            return None
        copy = Copy(next(self._copy_ids), server.config.name, placement)
        server.copies.append(copy)
        return copy

    def _run_copy(self, nursery: trio.Nursery, server: ModelServer, copy: Copy) -> None:
        config = server.config
        spec = CopySpec(
            copy_id=copy.id, model=config.name, entrypoint=config.entrypoint,
            image=config.address, parameters=config.parameters, placement=copy.placement,
            run_dir=self._run_dir, shm_prefix=self.shm_prefix,
            heartbeat_s=self.settings.heartbeat_s,
            health_interval_s=self.settings.health_interval_s,
        )
        nursery.start_soon(self.supervisor.run_copy, copy, spec, server)

    def add_copy(self, server: ModelServer) -> Copy | None:
        """Start one more copy of a loaded model (autoscaling); None when none can be."""
        nursery = self._model_nurseries.get(server)
        if nursery is None or self.draining or self.servers.get(server.config.name) is not server:
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

    def _on_crash_loop(self, copy: Copy, entered: bool) -> None:
        """A copy entered (or left) a crash loop: say so, once."""
        server = self.servers.get(copy.model)
        if server is None or copy not in server.copies:
            return
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
        """Every model the registry knows, with its state (v2 repository index)."""
        index = []
        for name, config in self.configs.items():
            server = self.servers.get(name)
            if server is None:
                state, reason = "UNAVAILABLE", self._unloaded.get(name, "unloaded")
            elif server.ready:
                state, reason = "READY", ""
            elif self.unavailable_reason(server):
                state, reason = "UNAVAILABLE", self.unavailable_reason(server)
            else:
                state = "LOADING"
                reason = next((c.last_error for c in server.copies if c.last_error), "")
                reason = reason or self.runtime.progress(config.address)  # e.g. an image pull
            index.append({"name": name, "version": config.version, "state": state,
                          "reason": reason})
        return index

    async def load_model(self, name: str) -> None:
        """Start a model's copies and wait (bounded) until one is ready; no-op if loaded."""
        config = self.configs.get(name)
        if config is None:
            raise NotFound(f"unknown model {name!r}")
        if self.draining:
            raise Unavailable("the server is shutting down")
        server = self.servers.get(name) or self._start_model(config)
        log.info("loading model %s", name)
        with trio.move_on_after(self.settings.startup_timeout_s):
            while not server.ready:
                if server.copies and all(c.last_error or c.crash_loop for c in server.copies):
                    break
                await trio.sleep(0.02)
        if not server.ready:
            reason = next((c.last_error for c in server.copies if c.last_error), "timed out")
            raise Unavailable(f"model {name!r} failed to load: {reason}")

    async def unload_model(self, name: str) -> None:
        """Stop taking requests for a model, let its pending ones finish, stop its copies."""
        if name not in self.configs:
            raise NotFound(f"unknown model {name!r}")
        server = self.servers.pop(name, None)
        if server is None:
            return
        log.info("unloading model %s: %d request(s) pending", name, server.pending)
        self._unloaded[name] = "unloaded"
        self._unloading.add(server)
        try:
            with trio.move_on_after(self.settings.drain_timeout_s):
                while server.pending:
                    await trio.sleep(0.02)
            server.fail_all(Unavailable(f"model {name!r} was unloaded"))
            retiring = [c for c in self._retiring if c.model == name]
            await self.supervisor.stop_copies(server.copies + retiring, timeout_s=5.0)
        finally:
            self._unloading.discard(server)
            self._model_scopes.pop(name).cancel()

    async def drain(self) -> None:
        """Readiness goes false, queued and in-flight requests finish (bounded), copies stop."""
        self.draining = True
        log.info("draining: %d request(s) pending", sum(s.pending for s in self.servers.values()))
        with trio.move_on_after(self.settings.drain_timeout_s):
            while any(s.pending for s in self.servers.values()):
                await trio.sleep(0.02)
        for server in self.servers.values():
            server.fail_all(Unavailable("the server is shutting down"))
        await self.supervisor.shutdown(timeout_s=5.0)

    async def _close(self, run_dir: str) -> None:
        self.live = False
        if not self.draining:
            for server in self.servers.values():
                server.fail_all(Unavailable("the server is shutting down"))
            await self.supervisor.shutdown(timeout_s=5.0)
        self.link.close()
        self.cache.close()
        self.slab.close()
        unlink_matching(f"{self.shm_prefix}-")  # worker slabs of copies that were killed
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("stopped; shared memory released")

    # -- the inbox -------------------------------------------------------------------------

    def _on_worker_message(self, kind: bytes, body: dict[str, Any]) -> None:
        copy_id = body.get("copy")
        if not isinstance(copy_id, int):
            return
        if kind == wire.HELLO:
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
        server = self.servers.get(copy.model) or next(
            (s for s in self._unloading if s.config.name == copy.model), None
        )
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
