"""JSON error answers for the Quart apps (the management API, ``bridges.rest.admin``).

The v2 data plane no longer runs on Quart: see ``bridges.rest.routes`` and ``bridges.rest.app``.
"""

from __future__ import annotations

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gateway.errors import InferoxyError


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
