"""``inferoxy serve``: the gateway core and its bridges in one Trio nursery."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Mapping
from functools import partial

import trio

from bridges.dataplane.grpc import control_address
from bridges.dataplane.pool import DataPlanePool
from bridges.grpc.server import serve_grpc
from bridges.metrics import serve_metrics
from bridges.rest.admin import serve_admin
from bridges.rest.app import serve_rest
from bridges.websocket.server import serve_websocket
from bridges.zmq.app import serve_zmq
from gateway.config import ModelConfig
from gateway.core import Gateway
from gateway.declaration import ModelDeclaration, as_declarations
from gateway.manager import ModelManager, open_registry, registry_for
from gateway.settings import Settings
from supervisor.cpus import parse_workers

log = logging.getLogger("inferoxy")


async def serve(settings: Settings,
                models: Mapping[str, ModelConfig | ModelDeclaration]) -> None:
    """Run until SIGINT/SIGTERM; the first drains gracefully, a second stops at once.

    Raises ``gateway.registry.RegistryUnreachable`` (before starting anything) when --redis
    names a Redis that cannot be reached.
    """
    registry = registry_for(settings.redis, settings.redis_prefix)
    gateway = Gateway(settings, await open_registry(registry, as_declarations(models)))
    manager = ModelManager(gateway, registry)
    http_stop = trio.Event()
    workers = parse_workers(settings.workers)
    pool = DataPlanePool(gateway, workers) if workers > 0 else None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            nursery.start_soon(manager.run)
            binds = await nursery.start(serve_admin, manager, settings.admin_host,
                                        settings.admin_port, settings.admin_token, http_stop)
            log.info("listening: management API on %s%s", ", ".join(binds),
                     "" if settings.admin_token else " (no --admin-token: open to local users)")
            for name, port, runner in (
                ("HTTP (Open Inference Protocol v2)", settings.http_port, serve_rest),
                ("gRPC (Open Inference Protocol v2)", settings.grpc_port, serve_grpc),
                ("WebSocket streams", settings.ws_port, serve_websocket),
                ("ZeroMQ (Arrow batches)", settings.zmq_port, serve_zmq),
                ("metrics (Prometheus)", settings.metrics_port, serve_metrics),
            ):
                if runner is serve_rest and pool is not None:
                    continue  # HTTP is served by the data-plane processes, started last
                if runner is serve_grpc and pool is not None:
                    # The data-plane processes serve the gRPC port; what they do not answer
                    # themselves they forward here.
                    await nursery.start(partial(serve_grpc, address=control_address(
                        gateway.run_dir)), gateway, settings.host, port, http_stop)
                    continue
                binds = await nursery.start(runner, gateway, settings.host, port, http_stop)
                log.info("listening: %s on %s", name, ", ".join(binds))
            if pool is not None:  # last: a bridge answering "ready" means all else listens
                await nursery.start(pool.run)
                log.info("listening: HTTP and gRPC (Open Inference Protocol v2) on %s:%d and "
                         ":%d in %d data-plane process(es)", settings.host, settings.http_port,
                         settings.grpc_port, pool.count)

            # What exists now (modules, configurations, the models' metadata: ~85 k objects)
            # lives as long as the process: move it out of the cyclic collector's way. Each
            # full collection scanned all of it, 45-65 ms a time, a few times a second
            # under load — latency spikes and ~6 % of the gateway's CPU.
            gc.collect()
            gc.freeze()

            async def stop_now_on_second_signal() -> None:
                async for signum in signals:
                    log.warning("received %s again; stopping now", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            async for signum in signals:
                log.info("received %s; draining", signal.Signals(signum).name)
                break
            nursery.start_soon(stop_now_on_second_signal)
            if settings.drain_grace_s > 0:
                # Behind a balancer: say "not ready" while still serving, so its health check
                # takes this gateway out before any request is refused or a listener closes.
                gateway.unready = True
                log.info("readiness is false; serving on for %gs (--drain-grace-s) before "
                         "draining", settings.drain_grace_s)
                await trio.sleep(settings.drain_grace_s)
            if pool is not None:
                # Readiness goes false first; then every data-plane process stops accepting
                # and finishes what it holds — while the copies still run.
                gateway.begin_drain()
                await pool.stop(settings.drain_timeout_s)
            await gateway.drain()
            http_stop.set()  # the HTTP servers close their listeners and idle connections
            with trio.move_on_after(settings.drain_timeout_s):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
