"""The management API: the model manager's operations over HTTP, on a port of their own.

It listens on ``--admin-host`` (default 127.0.0.1, loopback only) and ``--admin-port``
(default 8004), apart from inference, so exposing inference never exposes management. Every
route requires ``Authorization: Bearer <token>`` when ``--admin-token`` is set (401 otherwise).

    GET    /v2/admin/models           every model: declaration, versions and their states,
                                      and stored values that fail validation ("invalid")
    POST   /v2/admin/models           add a model: {"name": ..., <declaration>}       201/409
    GET    /v2/admin/models/{name}    one model                                       200/404
    POST   /v2/admin/models/{name}    add a model: <declaration>                      201/409
    PUT    /v2/admin/models/{name}    add or replace a model: <declaration>           201/200
    PATCH  /v2/admin/models/{name}    change fields: a JSON merge patch (null removes) 200/404
    DELETE /v2/admin/models/{name}    remove a model: its versions drain and stop     204/404
    GET    /v2/admin/registry         where the registry is and whether it is reachable
    GET    /                          the status page (HTML; ``bridges.status``), open
    GET    /status.json               its data, open: read-only, no secrets, no token needed

An invalid declaration is a 400 naming the model, version and field; a lost registry (Redis)
is a 503 with Retry-After.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import trio
from hypercorn.trio import serve
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from bridges.auth import bearer_ok
from bridges.rest.app import hypercorn_config
from bridges.rest.control import install_error_handlers, unauthorized
from bridges.status import routes as status
from gateway.errors import InvalidArgument
from gateway.manager import ModelManager

log = logging.getLogger("inferoxy.admin")

LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def json_body() -> Any:
    """The request body parsed as JSON; None when it is empty or not JSON.

    Not quart's ``get_json(silent=True)``: that decodes the body as UTF-8 first and lets
    the UnicodeDecodeError of any other bytes escape (a 500; found by fuzzing).
    """
    raw = await request.get_data(as_text=False)
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def create_admin_app(manager: ModelManager, token: str | None) -> QuartTrio:
    app = QuartTrio("inferoxy-admin")
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20  # declarations are small

    @app.before_request
    async def _auth() -> Response | None:
        # Read the (small, bounded) body first, even for an answer that ignores it: hypercorn
        # leaves a keep-alive connection hanging when the answer overtakes the body.
        await request.get_data()
        if request.path in status.PATHS:
            return None
        if not bearer_ok(token, request.headers.get("Authorization")):
            return unauthorized()
        return None

    install_error_handlers(app)
    status.install_status(app, manager.gateway)

    async def body() -> Any:
        doc = await json_body()
        if not isinstance(doc, dict):
            raise InvalidArgument("the body must be a JSON object")
        return doc

    def created(doc: dict[str, Any]) -> Response:
        response = jsonify(doc)
        response.status_code = 201
        response.headers["Location"] = f"/v2/admin/models/{doc['name']}"
        return response

    @app.get("/v2/admin/models")
    async def list_models() -> Response:
        return jsonify(await manager.list())

    @app.post("/v2/admin/models")
    async def add_model() -> Response:
        doc = await body()
        name = doc.pop("name", None)
        if not isinstance(name, str):
            raise InvalidArgument("field 'name' is required (or POST to /v2/admin/models/{name})")
        return created(await manager.create(name, doc))

    @app.get("/v2/admin/models/<name>")
    async def get_model(name: str) -> Response:
        return jsonify(await manager.get(name))

    @app.post("/v2/admin/models/<name>")
    async def add_named_model(name: str) -> Response:
        return created(await manager.create(name, await body()))

    @app.put("/v2/admin/models/<name>")
    async def replace_model(name: str) -> Response:
        doc, was_created = await manager.replace(name, await body())
        return created(doc) if was_created else jsonify(doc)

    @app.patch("/v2/admin/models/<name>")
    async def patch_model(name: str) -> Response:
        return jsonify(await manager.patch(name, await body()))

    @app.delete("/v2/admin/models/<name>")
    async def delete_model(name: str) -> Response:
        await manager.delete(name)
        return Response("", status=204)

    @app.get("/v2/admin/registry")
    async def registry() -> Response:
        r = manager.registry
        return jsonify({"kind": r.kind, "where": r.where, "available": r.available,
                        "invalid": [{"name": n, "error": e}
                                    for n, e in sorted(manager.invalid.items())]})

    return app


async def serve_admin(manager: ModelManager, host: str, port: int, token: str | None,
                      shutdown: trio.Event, *,
                      task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                      ) -> None:
    if host not in LOOPBACK and not token:
        log.warning("the management API listens on %s without --admin-token: anyone who can "
                    "reach it can change the models", host)
    await serve(
        create_admin_app(manager, token),
        hypercorn_config(host, port),
        shutdown_trigger=shutdown.wait,
        task_status=task_status,
    )
