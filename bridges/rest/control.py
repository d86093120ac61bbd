"""The v2 endpoints that are not inference: health, metadata, model config, statistics.

quart-trio routes; the infer route is raw ASGI (``bridges.rest.infer``) to keep it thin.
"""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from bridges.auth import bearer_ok
from gateway.admission import region_error
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument
from gateway.metadata import model_config, model_metadata
from shm.regions import RegionError


def error_response(status: int, message: str, retry_after_s: int | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def unauthorized() -> Response:
    response = error_response(401, "this endpoint needs Authorization: Bearer <admin token>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="inferoxy"'
    return response


def install_error_handlers(app: QuartTrio) -> None:
    """Every error as ``{"error": ...}`` with its status (typed errors and HTTP ones)."""

    @app.errorhandler(InferoxyError)
    async def _typed(exc: InferoxyError) -> Response:
        return error_response(exc.http_status, exc.message, getattr(exc, "retry_after_s", None))

    @app.errorhandler(HTTPException)
    async def _http(exc: HTTPException) -> Response:
        return error_response(exc.code or 500, exc.description or exc.name)


def create_control_app(gateway: Gateway) -> QuartTrio:
    app = QuartTrio("inferoxy")
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20  # control requests are small

    @app.before_request
    async def _read_body_first() -> None:
        # hypercorn + quart: a response sent before the request body has arrived can hang the
        # next request on that keep-alive connection (seen with early 401s). Control bodies
        # are small (MAX_CONTENT_LENGTH), so read them before any handler answers.
        await request.get_data()

    install_error_handlers(app)

    @app.get("/v2/health/live")
    async def live() -> Response:
        if gateway.live:
            return Response("", status=200)
        return error_response(503, "not live")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if gateway.ready:
            return Response("", status=200)
        return error_response(503, "not ready")

    @app.get("/v2")
    async def server_metadata() -> Response:
        return jsonify(gateway.server_metadata())

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/versions/<version>")
    async def metadata(name: str, version: str | None = None) -> Response:
        return jsonify(model_metadata(gateway.model(name, version)))

    @app.get("/v2/models/<name>/ready")
    @app.get("/v2/models/<name>/versions/<version>/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        server = gateway.model(name, version)
        if server.ready and not gateway.draining:
            return Response("", status=200)
        return error_response(503, f"model {name!r} is not ready")

    @app.get("/v2/models/<name>/config")
    @app.get("/v2/models/<name>/versions/<version>/config")
    async def config(name: str, version: str | None = None) -> Response:
        doc = model_config(gateway.model(name, version))
        return jsonify({k: v for k, v in doc.items() if v is not None})

    @app.get("/v2/models/stats")
    @app.get("/v2/models/<name>/stats")
    @app.get("/v2/models/<name>/versions/<version>/stats")
    async def stats(name: str | None = None, version: str | None = None) -> Response:
        if not name:
            servers = gateway.all_servers()
        elif version:
            servers = [gateway.model(name, version)]
        else:  # every version of the model, as Triton answers
            gateway.model(name)
            servers = [s for s in gateway.all_servers() if s.config.name == name]
        return jsonify({
            "model_stats": [s.stats.to_json(s.config.name, s.config.version) for s in servers]
        })

    # -- system shared memory (v2 extension) ------------------------------------------------

    def regions_call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except RegionError as exc:
            raise region_error(exc) from None

    @app.post("/v2/systemsharedmemory/region/<name>/register")
    async def shm_register(name: str) -> Response:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise InvalidArgument("register takes a JSON object with key, offset, byte_size")
        regions_call(gateway.regions.register, name, body.get("key"), body.get("offset", 0),
                     body.get("byte_size"))
        return Response("", status=200)

    @app.get("/v2/systemsharedmemory/status")
    @app.get("/v2/systemsharedmemory/region/<name>/status")
    async def shm_status(name: str | None = None) -> Response:
        regions = regions_call(gateway.regions.status, name)
        return jsonify([r.status() for r in regions])

    @app.post("/v2/systemsharedmemory/unregister")
    @app.post("/v2/systemsharedmemory/region/<name>/unregister")
    async def shm_unregister(name: str | None = None) -> Response:
        regions_call(gateway.regions.unregister, name)
        return Response("", status=200)

    @app.get("/v2/cudasharedmemory/status")
    @app.get("/v2/cudasharedmemory/region/<name>/status")
    async def cuda_shm_status(name: str | None = None) -> Response:
        return jsonify([])  # none can be registered

    @app.post("/v2/cudasharedmemory/unregister")
    @app.post("/v2/cudasharedmemory/region/<name>/unregister")
    async def cuda_shm_unregister(name: str | None = None) -> Response:
        return Response("", status=200)  # nothing to unregister (clients clean up at exit)

    @app.post("/v2/cudasharedmemory/region/<name>/register")
    async def cuda_shm_register(name: str) -> Response:
        raise InvalidArgument("CUDA shared memory is not supported; use system shared memory")

    # -- model repository (v2 extension) ----------------------------------------------------
    # Management: they need the admin token when one is set (--admin-token).

    def admin_denied() -> Response | None:
        if bearer_ok(gateway.settings.admin_token, request.headers.get("Authorization")):
            return None
        return unauthorized()

    @app.post("/v2/repository/index")
    async def repository_index() -> Response:
        if denied := admin_denied():
            return denied
        body = await request.get_json(force=True, silent=True) or {}
        index = gateway.repository_index()
        if isinstance(body, dict) and body.get("ready") is True:
            index = [m for m in index if m["state"] == "READY"]
        return jsonify(index)

    @app.post("/v2/repository/models/<name>/load")
    async def repository_load(name: str) -> Response:
        if denied := admin_denied():
            return denied
        await gateway.load_model(name)
        return Response("", status=200)

    @app.post("/v2/repository/models/<name>/unload")
    async def repository_unload(name: str) -> Response:
        if denied := admin_denied():
            return denied
        await gateway.unload_model(name)
        return Response("", status=200)

    return app
