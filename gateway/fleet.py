"""The copies of every model server: placement, starting, autoscaling, retiring, stopping.

Each server runs in its own nursery (``run_server``), cancelled when the server is stopped;
its copies run there as supervisor tasks (``supervisor.supervisor.Supervisor.run_copy``).
The supervisor holds the one map of copies to their servers (``Supervisor.observer``); the
fleet holds what only it knows: which servers are still draining (``_unloading``) and which
copies autoscaling took away and that are finishing their batches (``_retiring``).

Placement (``supervisor.placement.next_placement``): one copy of a model per GPU, counting
every running copy (of routed, replacement, draining servers and retiring copies) as taking
its GPU. ``ModelScaler`` (``gateway.scaler``) drives ``add_copy`` and ``retire_copy``; the
fleet is what it scales.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import trio

from gateway.config import ModelConfig
from gateway.errors import Unavailable
from gateway.intake import BridgeReports
from gateway.model_server import ModelServer
from gateway.routing import RoutingTable
from gateway.scaler import ModelScaler
from gateway.settings import Settings
from supervisor.alerts import Alerts
from supervisor.autoscale import ScalePolicy, copy_bounds
from supervisor.copy import Copy
from supervisor.placement import Placement, next_placement
from supervisor.runtime import CopySpec
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")

STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL


class Fleet:
    def __init__(self, *, settings: Settings, routing: RoutingTable[ModelServer],
                 supervisor: Supervisor[ModelServer], nursery: trio.Nursery, run_dir: str,
                 shm_prefix: str, gpus: list[int], attached: bool, alerts: Alerts,
                 bridge_reports: BridgeReports, draining: Callable[[], bool],
                 on_change: Callable[[], None]) -> None:
        self.settings = settings
        self.routing = routing
        self.supervisor = supervisor
        self.alerts = alerts  # the scaler's SCALE_LIMIT alerts
        self.gpus = gpus
        self._nursery = nursery
        self._run_dir = run_dir
        self._shm_prefix = shm_prefix
        self._attached = attached  # --runtime attach: the platform decides how many copies
        self._bridge_reports = bridge_reports
        self._draining = draining
        self._on_change = on_change
        self._copy_ids = itertools.count(1)
        self._scopes: dict[ModelServer, trio.CancelScope] = {}  # cancels a server's nursery
        self._nurseries: dict[ModelServer, trio.Nursery] = {}  # where its copies run
        self._unloading: set[ModelServer] = set()  # still answering their last requests
        self._retiring: set[Copy] = set()  # scaled down: finishing their batches, then stop

    @property
    def draining(self) -> bool:
        return self._draining()

    def running(self) -> set[ModelServer]:
        """Every server with copies: routed, replacements starting, and draining ones."""
        return {*self.routing.running(), *self._unloading}

    # -- servers -----------------------------------------------------------------------------

    def run_server(self, server: ModelServer) -> ModelServer:
        """Start a new server's task, its first copies and its autoscaler."""
        scope = trio.CancelScope()
        self._scopes[server] = scope
        policy = self._scale_policy(server.config)
        copies = [c for c in (self._new_copy(server) for _ in range(policy.min_copies)) if c]

        async def run() -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    self._nurseries[server] = nursery
                    nursery.start_soon(server.run)
                    for copy in copies:
                        self._run_copy(nursery, server, copy)
                    if policy.enabled:
                        nursery.start_soon(ModelScaler(self, server, policy).run)
            self._nurseries.pop(server, None)

        self._nursery.start_soon(run)
        return server

    async def stop_server(self, server: ModelServer, why: str, quiet_s: float = 0.0) -> None:
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
            await self.supervisor.stop_copies(self.copies_of(server),
                                              timeout_s=STOP_TIMEOUT_S)
        finally:
            self._unloading.discard(server)
            scope = self._scopes.pop(server, None)
            if scope is not None:
                scope.cancel()
            server.copies.clear()  # a request that still finds it is refused, not stranded
            log.info("model %s version %s %s: stopped", name, version, why)

    def stop_soon(self, server: ModelServer, why: str, quiet_s: float = 0.0) -> None:
        """``stop_server`` in the gateway's nursery."""
        self._nursery.start_soon(self.stop_server, server, why, quiet_s)

    # -- copies ------------------------------------------------------------------------------

    def copies_of(self, server: ModelServer) -> list[Copy]:
        """The server's copies, with those retiring."""
        return server.copies + [c for c in self._retiring
                                if self.supervisor.observer(c.id) is server]

    def _scale_policy(self, config: ModelConfig) -> ScalePolicy:
        on_gpus = config.run_on_gpu and bool(self.gpus)
        lo, hi = copy_bounds(config.run_on_gpu, config.copies, config.min_copies,
                             config.max_copies, len(self.gpus))
        if self._attached:
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

    def _placement_for(self, server: ModelServer) -> Placement | None:
        """Where one more copy of the model would go; None when no GPU is free for it."""
        everyone = [c for s in self.running() | {server} for c in s.copies]
        return next_placement(
            server.config.run_on_gpu, self.gpus,
            (c.placement.gpu for c in self.copies_of(server)),
            (c.placement.gpu for c in (*everyone, *self._retiring)),
            simulated=self.settings.simulate_gpus > 0,
        )

    def slot_free(self, server: ModelServer) -> bool:
        return self._placement_for(server) is not None

    def queued_elsewhere_s(self, server: ModelServer) -> float:
        """How long the oldest request of the model queued in a data-plane process has
        waited (seconds; as last reported)."""
        return self._bridge_reports.head_age(server.config.name, server.config.version)

    def _new_copy(self, server: ModelServer) -> Copy | None:
        placement = self._placement_for(server)
        if placement is None:
            return None
        copy = Copy(next(self._copy_ids), server.config.name, placement,
                    on_change=self._on_change)
        server.copies.append(copy)
        return copy

    def _run_copy(self, nursery: trio.Nursery, server: ModelServer, copy: Copy) -> None:
        config, settings = server.config, self.settings
        spec = CopySpec(
            copy_id=copy.id, model=config.name, entrypoint=config.entrypoint,
            image=config.address, parameters=config.parameters, placement=copy.placement,
            run_dir=self._run_dir, shm_prefix=self._shm_prefix,
            heartbeat_s=settings.heartbeat_s, health_interval_s=settings.health_interval_s,
            hang_timeout_s=config.hang_timeout_s, version=config.version,
        )
        nursery.start_soon(self.supervisor.run_copy, copy, spec, server)

    def add_copy(self, server: ModelServer) -> Copy | None:
        """Start one more copy of a running server (autoscaling, an attached worker); None
        when none can be."""
        nursery = self._nurseries.get(server)
        if (nursery is None or self.draining or server in self._unloading
                or server not in self._scopes):
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
            await self.supervisor.stop_copies([copy], timeout_s=STOP_TIMEOUT_S)
        finally:
            self._retiring.discard(copy)
