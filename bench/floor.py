"""The baselines: HTTP servers that answer a v2 infer with a canned body and do nothing else.

    python -m bench.floor PORT [hypercorn|thin|reactor]

``hypercorn``: a bare hypercorn (Trio) ASGI app, the stack the data plane used to run on.
``thin``: Inferoxy's own HTTP/1.1 server (``bridges.rest.server``, httptools) with a handler
that reads the body and answers, a task per connection. ``reactor``: the same server with a
fast path that answers every POST whose body arrived whole from its reactor
(``bridges.rest.reactor``), no task per request. No model, no queue, no shared memory.
Inferoxy's throughput divided by a floor is the share of that HTTP stack's ceiling the data
plane keeps.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from bridges.rest.asgi import lifespan
from bridges.rest.http11 import HttpRequest, HttpResponse
from bridges.rest.server import RequestBody

BODY = b'{"model_name":"floor","outputs":[]}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    more = True
    size = 0
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


async def thin(port: int) -> None:
    from bridges.rest.server import HttpServer, open_listeners

    response = HttpResponse(200, ((b"content-type", b"application/json"),), BODY)

    async def handle(request: HttpRequest, body: RequestBody) -> HttpResponse:
        while await body.read():
            pass
        return response

    listeners = await open_listeners("127.0.0.1", port)
    await HttpServer(handle).serve(listeners, trio.Event())


class Canned:
    """A fast path that claims every POST and answers ``response`` at once (``handle``: for
    a body too slow to gather, on the task path)."""

    def __init__(self, response: HttpResponse,
                 handle: Callable[[HttpRequest, RequestBody], Awaitable[HttpResponse]]
                 ) -> None:
        self._response = response
        self._handle = handle

    def target(self, request: HttpRequest) -> object:
        return True if request.method == "POST" else None

    def check(self, request: HttpRequest, target: object) -> HttpResponse | None:
        return None

    def start(self, request: HttpRequest, target: object, body: memoryview,
              reply: Callable[[HttpResponse], None]) -> HttpResponse:
        return self._response

    async def finish(self, request: HttpRequest, checked: object, body: RequestBody
                     ) -> HttpResponse:
        return await self._handle(request, body)


async def reactor(port: int) -> None:
    from bridges.rest.server import HttpServer, open_listeners

    response = HttpResponse(200, ((b"content-type", b"application/json"),), BODY)

    async def handle(request: HttpRequest, body: RequestBody) -> HttpResponse:
        while await body.read():
            pass
        return response

    listeners = await open_listeners("127.0.0.1", port)
    await HttpServer(handle, fast=Canned(response, handle)).serve(listeners, trio.Event())


def main() -> None:
    port = int(sys.argv[1])
    kind = sys.argv[2] if len(sys.argv) > 2 else "hypercorn"
    if kind in ("thin", "reactor"):
        trio.run(thin if kind == "thin" else reactor, port)
        return
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    trio.run(serve, app, config)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
