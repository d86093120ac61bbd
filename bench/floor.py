"""The baseline: a bare hypercorn (Trio) ASGI app that answers a v2 infer with a canned body.

No model, no queue, no shared memory — only HTTP on the same server stack Inferoxy uses.
Inferoxy's throughput divided by this is the share of the HTTP floor the data plane keeps.
"""

from __future__ import annotations

import sys
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from bridges.rest.asgi import lifespan


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
    body = b'{"model_name":"floor","outputs":[]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{int(sys.argv[1])}"]
    config.accesslog = None
    trio.run(serve, app, config)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
