"""The gateway core: models, shared memory and copies, run in one Trio nursery.

Bridges talk to it through a small surface: ``model()`` to find a model (raises NotFound),
``slab`` to get input slots, ``submit`` + ``wait`` (on the model server) to infer, and the
health/metadata/statistics readers. The bridge -> core boundary is a message of descriptors
(``InferRequest``), so bridges can later run in other processes.
"""

from __future__ import annotations

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
from gateway.settings import Settings
from shm import wire
from shm.regions import RegionRegistry
from shm.segment import SegmentCache, sweep_stale, unlink_matching
from shm.slab import SlabAllocator
from supervisor.copy import Copy
from supervisor.lifecycle import CopyState
from supervisor.local import LocalRuntime
from supervisor.placement import discover_gpus, place
from supervisor.runtime import CopySpec, Runtime
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")

SERVER_NAME = "inferoxy"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration"]


class Gateway:
    def __init__(self, settings: Settings, models: dict[str, ModelConfig],
                 runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.configs = models
        self.runtime = runtime or LocalRuntime()
        self.pid = os.getpid()
        self.shm_prefix = f"{settings.shm_prefix}-{self.pid}"
        self.servers: dict[str, ModelServer] = {}
        self.live = False
        self.draining = False
        self.gpus: list[int] = []
        self.regions = RegionRegistry(
            enabled=settings.allow_client_shm, own_prefix=settings.shm_prefix,
            max_regions=settings.max_client_regions,
        )
        # Created in run(): they need the run directory, and cleanup follows run()'s scope.
        self.slab: SlabAllocator
        self.cache: SegmentCache
        self.link: WorkerLink
        self.supervisor: Supervisor

    # -- what bridges read -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.live and not self.draining and all(
            s.ready for s in self.servers.values() if s.copies
        )

    def model(self, name: str, version: str | None = None) -> ModelServer:
        server = self.servers.get(name)
        if server is None:
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
        if any(c.ready or (c.state is not CopyState.STOPPED and not c.last_error)
               for c in server.copies):
            return
        reason = next((c.last_error for c in server.copies if c.last_error), "")
        raise Unavailable(
            f"model {server.config.name!r} is not ready"
            + (f" (last error: {reason})" if reason else "")
        )

    def admission(self, server: ModelServer) -> Admission:
        """A new request's way into ``server`` (see ``gateway.admission``)."""
        return Admission(server, self.slab, self.regions, self.settings.request_timeout_s)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        swept = sweep_stale(self.settings.shm_prefix)
        if swept:
            log.info("swept %d shared-memory segment(s) left by dead gateways", len(swept))
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
        )
        self.gpus = await trio.to_thread.run_sync(discover_gpus, self.settings.gpus)
        log.info("GPUs: %s", self.gpus or "none (GPU models run on the CPU)")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.link.run_inbox, self._on_worker_message)
                copy_ids = iter(range(1, 1 << 30))
                for config in self.configs.values():
                    server = ModelServer(config, self.link.send, self.slab, self.cache)
                    self.servers[config.name] = server
                    nursery.start_soon(server.run)
                    for placement in place(config.run_on_gpu, config.copies, self.gpus):
                        copy = Copy(next(copy_ids), config.name, placement)
                        server.copies.append(copy)
                        spec = CopySpec(
                            copy_id=copy.id, model=config.name, entrypoint=config.entrypoint,
                            image=config.address, parameters=config.parameters,
                            placement=placement, run_dir=run_dir,
                            shm_prefix=self.shm_prefix, heartbeat_s=self.settings.heartbeat_s,
                        )
                        nursery.start_soon(self.supervisor.run_copy, copy, spec, server)
                self.live = True
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._close(run_dir)

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
        if kind == wire.RESULT:
            self.servers[copy.model].on_result(copy, body)
        elif kind == wire.ERROR:
            self.servers[copy.model].on_error(copy, body)
        elif kind == wire.FATAL:
            self.supervisor.on_fatal(copy_id, str(body.get("message", ""))[:2000])

    def _worker_gone(self, pid: int) -> None:
        prefix = f"{self.shm_prefix}-w{pid}-"
        self.cache.forget(prefix)
        unlink_matching(prefix)
