"""The HTTP bridge on port 8000: the v2 data plane on our own HTTP/1.1 server.

``bridges.rest.server`` (Trio sockets, ``httptools``) carries every request; infer calls go
to ``bridges.rest.infer`` (the body streamed into shared memory), every other route to
``bridges.rest.routes`` (the body read whole first, at most ``CONTROL_BODY_BYTES``). The
management API stays on Quart + hypercorn on its own port (``bridges.rest.admin``), which
still uses ``hypercorn_config`` from here.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import trio
from hypercorn.config import Config

from bridges.rest import routes
from bridges.rest.http11 import HttpRequest, HttpResponse, Limits, error_response
from bridges.rest.infer import FastInfer, handle_infer
from bridges.rest.server import (
    Handler,
    HttpServer,
    RequestBody,
    ServerConfig,
    open_listeners,
)
from gateway.core import Gateway
from gateway.settings import Settings

log = logging.getLogger("inferoxy.rest")

CONTROL_BODY_BYTES = 1 << 20  # register/index/load bodies are small


def create_handler(gateway: Gateway, answer: routes.Answer = routes.answer) -> Handler:
    """``answer``: the non-infer route layer (a data-plane process forwards to the control
    process's)."""

    async def handle(request: HttpRequest, body: RequestBody) -> HttpResponse:
        target = routes.infer_target(request)
        if target is not None:
            return await handle_infer(gateway, request, body, *target)
        if request.content_length is not None and request.content_length > CONTROL_BODY_BYTES:
            return error_response(413, f"request body exceeds the limit of "
                                       f"{CONTROL_BODY_BYTES} bytes")
        if not body.done:
            data = await read_all(body, CONTROL_BODY_BYTES, gateway.settings.request_timeout_s)
            if isinstance(data, HttpResponse):
                return data
            request = replace(request, body=data)
        return await answer(gateway, request)

    return handle


async def read_all(body: RequestBody, limit: int, timeout_s: float) -> bytes | HttpResponse:
    """The whole body, or the error answer (413 too large, 408 too slow)."""
    parts: list[bytes] = []
    with trio.move_on_after(timeout_s):
        while data := await body.read():
            parts.append(data)
            if body.received > limit:
                return error_response(413, f"request body exceeds the limit of {limit} bytes")
        return b"".join(parts)
    return error_response(408, f"the request body did not arrive within {timeout_s:g} s")


def server_config(settings: Settings) -> ServerConfig:
    return ServerConfig(
        limits=Limits(max_header_bytes=settings.max_header_bytes),
        header_timeout_s=settings.header_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        send_timeout_s=settings.request_timeout_s,
        max_connections=settings.max_connections,
    )


async def serve_rest(gateway: Gateway, host: str, port: int, shutdown: trio.Event, *,
                     reuse_port: bool = False,
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the v2 data plane on ``host:port`` until ``shutdown`` is set, then finish the
    requests in flight. ``reuse_port``: SO_REUSEPORT, for several processes on one port."""
    listeners = await open_listeners(host, port, reuse_port=reuse_port)
    server = HttpServer(create_handler(gateway), server_config(gateway.settings),
                        fast=FastInfer(gateway))
    await server.serve(listeners, shutdown, task_status=task_status)


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("inferoxy.hypercorn")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    return config
