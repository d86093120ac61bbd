"""The status page's routes on the control-plane app (Quart): ``/`` and ``/status.json``.

Read-only and open: the page shows what ``/metrics`` and the v2 repository index already show
(model names, states, queue depths, latency) and no secret, so it needs no admin token — an
operator can keep it open in a browser without handing the token to one. It is served on
the admin port, which listens on loopback unless ``--admin-host`` says otherwise.
"""

from __future__ import annotations

import time

from quart import Response, jsonify
from quart_trio import QuartTrio

from bridges.status.data import LatencyWindow, status
from bridges.status.page import render_page
from gateway.core import Gateway

PATHS = frozenset({"/", "/status.json"})  # open: no admin token (see above)


def install_status(app: QuartTrio, gateway: Gateway) -> None:
    window = LatencyWindow()

    def data() -> dict[str, object]:
        return status(gateway, window, time.monotonic())

    @app.get("/")
    async def page() -> Response:
        response = Response(render_page(data()), content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/status.json")
    async def status_json() -> Response:
        response = jsonify(data())
        response.headers["Cache-Control"] = "no-store"
        return response
