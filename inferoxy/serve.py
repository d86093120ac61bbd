"""``inferoxy serve``: the gateway core and its bridges in one Trio nursery."""

from __future__ import annotations

import logging
import signal

import trio

from bridges.grpc.server import serve_grpc
from bridges.metrics import serve_metrics
from bridges.rest.app import serve_rest
from bridges.websocket.server import serve_websocket
from bridges.zmq.app import serve_zmq
from gateway.config import ModelConfig
from gateway.core import Gateway
from gateway.settings import Settings

log = logging.getLogger("inferoxy")


async def serve(settings: Settings, models: dict[str, ModelConfig]) -> None:
    """Run until SIGINT/SIGTERM; the first drains gracefully, a second stops at once."""
    gateway = Gateway(settings, models)
    http_stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            for name, port, runner in (
                ("HTTP (Open Inference Protocol v2)", settings.http_port, serve_rest),
                ("gRPC (Open Inference Protocol v2)", settings.grpc_port, serve_grpc),
                ("WebSocket streams", settings.ws_port, serve_websocket),
                ("ZeroMQ (Arrow batches)", settings.zmq_port, serve_zmq),
                ("metrics (Prometheus)", settings.metrics_port, serve_metrics),
            ):
                binds = await nursery.start(runner, gateway, settings.host, port, http_stop)
                log.info("listening: %s on %s", name, ", ".join(binds))

            async def stop_now_on_second_signal() -> None:
                async for signum in signals:
                    log.warning("received %s again; stopping now", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            async for signum in signals:
                log.info("received %s; draining", signal.Signals(signum).name)
                break
            nursery.start_soon(stop_now_on_second_signal)
            await gateway.drain()
            http_stop.set()  # hypercorn closes its listeners and finishes open responses
            with trio.move_on_after(settings.drain_timeout_s):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
