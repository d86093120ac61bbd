"""The v2 data-plane routes other than infer, as plain functions: request in, answer out.

Interface contract (data-plane processes rely on it; keep it):

    async def answer(gateway, request: HttpRequest) -> HttpResponse

``request`` carries method, path, query, headers and the whole body (bytes); the answer is a
status, headers and a body. Nothing here touches a socket or a framework, so the same
function runs in the gateway or in another process against a stand-in for the gateway.
``infer_target(request)`` says whether a request is an infer call, and for which model and
version (the infer handler, ``bridges.rest.infer.handle_infer``, streams the body itself).

Every error is ``{"error": ...}`` with its status: typed gateway errors with theirs (503 with
Retry-After), an unknown path 404, a known path with another method 405 (with Allow). HEAD is
answered wherever GET is (the glue drops the body).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from bridges.auth import bearer_ok
from bridges.rest.http11 import HttpRequest, HttpResponse, error_response
from gateway.admission import CUDA_SHM_REFUSED, region_error
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, Unavailable
from gateway.metadata import model_config, model_metadata
from shm.regions import RegionError

JSON = ((b"content-type", b"application/json"),)
OK = HttpResponse(200)

Answer = Callable[[Gateway, HttpRequest], Awaitable[HttpResponse]]
Route = Callable[[Gateway, HttpRequest, dict[str, str]], Coroutine[Any, Any, HttpResponse]]

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
INFER_PATH = re.compile(_MODEL + r"/infer")


def infer_target(request: HttpRequest) -> tuple[str, str | None] | None:
    """(model, version) when ``request`` is ``POST .../infer``; None otherwise."""
    if request.method != "POST" or not request.path.endswith("/infer"):
        return None
    path = request.path
    target = _TARGETS.get(path)
    if target is None:
        match = INFER_PATH.fullmatch(path)
        if match is None:
            return None
        target = (_unquote(match["name"]),
                  _unquote(match["version"]) if match["version"] else None)
        if len(_TARGETS) >= 1024:  # any path may come: keep the memo bounded
            _TARGETS.clear()
        _TARGETS[path] = target
    return target


# Infer paths already matched (a client sends the same few again and again).
_TARGETS: dict[str, tuple[str, str | None]] = {}


def json_response(doc: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, JSON, orjson.dumps(doc))


def typed_error(exc: InferoxyError) -> HttpResponse:
    extra: tuple[tuple[bytes, bytes], ...] = ()
    if isinstance(exc, Unavailable):
        extra = ((b"retry-after", str(exc.retry_after_s).encode()),)
    return error_response(exc.http_status, exc.message, extra)


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)


def _json_body(request: HttpRequest) -> Any:
    try:
        return orjson.loads(request.body) if request.body else None
    except orjson.JSONDecodeError:
        return None


# -- the routes ----------------------------------------------------------------------------

# Health answers carry the OIP's JSON bodies (KServe's client parses them; tritonclient reads
# only the status). The answers themselves are built once: they are polled often.
LIVE = json_response({"live": True})
NOT_LIVE = json_response({"live": False, "error": "not live"}, 503)
READY = json_response({"ready": True})
NOT_READY = json_response({"ready": False, "error": "not ready"}, 503)


async def live(gateway: Gateway, request: HttpRequest, p: dict[str, str]) -> HttpResponse:
    return LIVE if gateway.live else NOT_LIVE


async def ready(gateway: Gateway, request: HttpRequest, p: dict[str, str]) -> HttpResponse:
    return READY if gateway.ready else NOT_READY


async def server_metadata(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                          ) -> HttpResponse:
    return json_response(gateway.server_metadata())


async def metadata(gateway: Gateway, request: HttpRequest, p: dict[str, str]) -> HttpResponse:
    return json_response(model_metadata(gateway.model(p["name"], p.get("version"))))


async def model_ready(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                      ) -> HttpResponse:
    server = gateway.model(p["name"], p.get("version"))
    if server.ready and not gateway.draining:
        return json_response({"name": p["name"], "ready": True})
    return json_response(
        {"name": p["name"], "ready": False, "error": f"model {p['name']!r} is not ready"}, 503
    )


async def config(gateway: Gateway, request: HttpRequest, p: dict[str, str]) -> HttpResponse:
    doc = model_config(gateway.model(p["name"], p.get("version")))
    return json_response({k: v for k, v in doc.items() if v is not None})


async def stats(gateway: Gateway, request: HttpRequest, p: dict[str, str]) -> HttpResponse:
    await gateway.stats_fresh()  # what every process counted until now
    name, version = p.get("name"), p.get("version")
    if not name:
        servers = gateway.all_servers()
    elif version:
        servers = [gateway.model(name, version)]
    else:  # every version of the model, as Triton answers
        gateway.model(name)
        servers = [s for s in gateway.all_servers() if s.config.name == name]
    return json_response({
        "model_stats": [s.stats.to_json(s.config.name, s.config.version) for s in servers]
    })


def _regions_call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except RegionError as exc:
        raise region_error(exc) from None


async def shm_register(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                       ) -> HttpResponse:
    body = _json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("register takes a JSON object with key, offset, byte_size")
    _regions_call(gateway.regions.register, p["name"], body.get("key"), body.get("offset", 0),
                  body.get("byte_size"))
    await gateway.regions_published()  # usable through any connection once answered
    return OK


async def shm_status(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                     ) -> HttpResponse:
    regions = _regions_call(gateway.regions.status, p.get("name"))
    return json_response([r.status() for r in regions])


async def shm_unregister(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                         ) -> HttpResponse:
    _regions_call(gateway.regions.unregister, p.get("name"))
    await gateway.regions_published()
    return OK


async def cuda_shm_status(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                          ) -> HttpResponse:
    return json_response([])  # none can be registered


async def cuda_shm_unregister(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                              ) -> HttpResponse:
    return OK  # nothing to unregister (clients clean up at exit)


async def cuda_shm_register(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                            ) -> HttpResponse:
    raise InvalidArgument(CUDA_SHM_REFUSED)


# Model repository (v2 extension): management, so they need the admin token when one is set.

def _admin_denied(gateway: Gateway, request: HttpRequest) -> HttpResponse | None:
    authorization = request.header(b"authorization")
    if bearer_ok(gateway.settings.admin_token,
                 authorization.decode("latin-1") if authorization is not None else None):
        return None
    return unauthorized()


def unauthorized() -> HttpResponse:
    return error_response(401, "this endpoint needs Authorization: Bearer <admin token>",
                          ((b"www-authenticate", b'Bearer realm="inferoxy"'),))


async def repository_index(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                           ) -> HttpResponse:
    if denied := _admin_denied(gateway, request):
        return denied
    body = _json_body(request) or {}
    index = gateway.repository_index()
    if isinstance(body, dict) and body.get("ready") is True:
        index = [m for m in index if m["state"] == "READY"]
    return json_response(index)


async def repository_load(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                          ) -> HttpResponse:
    if denied := _admin_denied(gateway, request):
        return denied
    body = _json_body(request)
    parameters = body.get("parameters") if isinstance(body, dict) else None
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidArgument("the load request's parameters must be an object")
    await gateway.load_model(p["name"], parameters)
    return OK


async def repository_unload(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                            ) -> HttpResponse:
    if denied := _admin_denied(gateway, request):
        return denied
    await gateway.unload_model(p["name"])
    return OK


async def status_page(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                      ) -> HttpResponse:
    """``GET /``: the control plane's status page lives on the admin port."""
    settings = gateway.settings
    host = settings.admin_host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: the host the client used
        given = (request.header(b"host") or b"127.0.0.1").decode("latin-1")
        host = given.rsplit(":", 1)[0] if not given.endswith("]") else given
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    location = f"http://{host}:{settings.admin_port}/"
    return HttpResponse(302, ((b"location", location.encode("latin-1")),))


async def _infer_elsewhere(gateway: Gateway, request: HttpRequest, p: dict[str, str]
                           ) -> HttpResponse:
    raise AssertionError("infer requests go to bridges.rest.infer.handle_infer")


_TABLE: list[tuple[str, dict[str, Route]]] = [
    (r"/", {"GET": status_page}),
    (r"/v2/health/live", {"GET": live}),
    (r"/v2/health/ready", {"GET": ready}),
    (r"/v2/?", {"GET": server_metadata}),
    (r"/v2/models/stats", {"GET": stats}),
    (_MODEL, {"GET": metadata}),
    (_MODEL + r"/ready", {"GET": model_ready}),
    (_MODEL + r"/config", {"GET": config}),
    (_MODEL + r"/stats", {"GET": stats}),
    (_MODEL + r"/infer", {"POST": _infer_elsewhere}),
    (r"/v2/systemsharedmemory/region/(?P<name>[^/]+)/register", {"POST": shm_register}),
    (r"/v2/systemsharedmemory/status", {"GET": shm_status}),
    (r"/v2/systemsharedmemory/region/(?P<name>[^/]+)/status", {"GET": shm_status}),
    (r"/v2/systemsharedmemory/unregister", {"POST": shm_unregister}),
    (r"/v2/systemsharedmemory/region/(?P<name>[^/]+)/unregister", {"POST": shm_unregister}),
    (r"/v2/cudasharedmemory/status", {"GET": cuda_shm_status}),
    (r"/v2/cudasharedmemory/region/(?P<name>[^/]+)/status", {"GET": cuda_shm_status}),
    (r"/v2/cudasharedmemory/unregister", {"POST": cuda_shm_unregister}),
    (r"/v2/cudasharedmemory/region/(?P<name>[^/]+)/unregister",
     {"POST": cuda_shm_unregister}),
    (r"/v2/cudasharedmemory/region/(?P<name>[^/]+)/register", {"POST": cuda_shm_register}),
    (r"/v2/repository/index", {"POST": repository_index}),
    (r"/v2/repository/models/(?P<name>[^/]+)/load", {"POST": repository_load}),
    (r"/v2/repository/models/(?P<name>[^/]+)/unload", {"POST": repository_unload}),
]
_ROUTES = [(re.compile(pattern), methods) for pattern, methods in _TABLE]


async def answer(gateway: Gateway, request: HttpRequest) -> HttpResponse:
    """The answer to one non-infer request (whole body in ``request.body``)."""
    method = "GET" if request.method == "HEAD" else request.method
    allowed: list[str] = []
    for pattern, methods in _ROUTES:
        match = pattern.fullmatch(request.path)
        if match is None:
            continue
        route = methods.get(method)
        if route is None:
            allowed += methods
            continue
        params = {k: _unquote(v) for k, v in match.groupdict().items() if v is not None}
        try:
            return await route(gateway, request, params)
        except InferoxyError as exc:
            return typed_error(exc)
    if allowed:
        allow = ", ".join(sorted({*allowed, *(["HEAD"] if "GET" in allowed else [])}))
        return error_response(405, f"method {request.method} is not allowed here "
                                   f"(allowed: {allow})", ((b"allow", allow.encode()),))
    return error_response(404, "no such endpoint")
