"""The HTTP server of a data-plane process: the REST layer's own handlers over a
``DataPlane``.

Infer requests run the same handlers as in the control process (``bridges.rest.infer``; the
reactor's no-task path for the models this process batches); every other route is forwarded
to the control process as one CALL message and answered there by
``bridges.rest.routes.answer`` (the registry of client regions lives there).
"""

from __future__ import annotations

from typing import Any

import trio

from bridges.dataplane.plane import DataPlane
from bridges.rest.app import create_handler, server_config
from bridges.rest.http11 import HttpRequest, HttpResponse
from bridges.rest.infer import FastInfer
from bridges.rest.routes import typed_error
from bridges.rest.server import HttpServer, open_listeners
from gateway.errors import InferoxyError


def request_to_wire(request: HttpRequest) -> dict[str, Any]:
    return {
        "method": request.method, "path": request.path, "query": request.query,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
    }


def request_from_wire(body: dict[str, Any], payload: bytes) -> HttpRequest:
    return HttpRequest(
        method=str(body["method"]), path=str(body["path"]), query=str(body.get("query", "")),
        headers=tuple((str(k).encode("latin-1"), str(v).encode("latin-1"))
                      for k, v in body.get("headers") or []),
        content_length=len(payload), body=payload,
    )


def response_to_wire(response: HttpResponse) -> dict[str, Any]:
    return {"status": response.status,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in response.headers]}


def response_from_wire(body: dict[str, Any], payload: bytes) -> HttpResponse:
    return HttpResponse(
        int(body["status"]),
        tuple((str(k).encode("latin-1"), str(v).encode("latin-1"))
              for k, v in body.get("headers") or []),
        payload,
    )


class LocalFastInfer(FastInfer):
    """The reactor's no-task path, for the models this process batches itself; requests
    for models the control process serves (stateful) take the task path."""

    def __init__(self, plane: DataPlane) -> None:
        super().__init__(plane)  # type: ignore[arg-type]
        self._plane = plane

    def target(self, request: HttpRequest) -> tuple[str, str | None] | None:
        target = super().target(request)
        if target is None or not self._plane.serves_here(*target):
            return None
        return target


async def serve_http(gateway: DataPlane, host: str, port: int, shutdown: trio.Event, *,
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    link = gateway.link

    async def forward(_: Any, request: HttpRequest) -> HttpResponse:
        try:
            answer, payload = await link.call(request_to_wire(request), request.body)
        except InferoxyError as exc:  # too many in flight, or the core is not reading
            return typed_error(exc)
        return response_from_wire(answer, payload)

    listeners = await open_listeners(host, port, reuse_port=True)
    server = HttpServer(create_handler(gateway, answer=forward),  # type: ignore[arg-type]
                        server_config(gateway.settings), fast=LocalFastInfer(gateway))
    await server.serve(listeners, shutdown, task_status=task_status)
