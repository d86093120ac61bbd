"""ASGI helpers for the small apps still served by hypercorn (the metrics endpoint)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def send_json(send: Send, status: int, body: bytes,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    try:
        await send({
            "type": "http.response.start", "status": status, "headers": headers + (extra or []),
        })
        await send({"type": "http.response.body", "body": body})
    except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
        # The client hung up: hypercorn's close of the socket (send_eof, outside its send lock)
        # can race the end of our send. Nobody is left to read the answer.
        pass


async def lifespan(receive: Receive, send: Send) -> None:
    """The ASGI lifespan protocol for apps with nothing to set up."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
