"""The HTTP bridge: raw ASGI for infer, quart-trio for the rest, served by hypercorn (Trio)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from bridges.rest.control import create_control_app
from bridges.rest.infer import Receive, Scope, Send, handle_infer
from gateway.core import Gateway

log = logging.getLogger("inferoxy.rest")

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_app(gateway: Gateway) -> ASGIApp:
    control = create_control_app(gateway)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match:
                await handle_infer(gateway, scope, receive, send, match[1], match[2])
                return
        await control(scope, receive, send)  # type: ignore[arg-type]

    return app


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("inferoxy.hypercorn")
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    return config


async def serve_rest(gateway: Gateway, host: str, port: int, shutdown: trio.Event, *,
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await serve(
        create_app(gateway),  # type: ignore[arg-type]
        hypercorn_config(host, port),
        shutdown_trigger=shutdown.wait,
        task_status=task_status,
    )
