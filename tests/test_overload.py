"""Overload and deadlines: a full queue rejects at once, a late answer is a 504."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson
import urllib3

from tests.conftest import RunningGateway

BODY = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                                 "data": [0.5] * 16}]})


def _post(gw: RunningGateway, model: str, body: bytes = BODY) -> urllib3.BaseHTTPResponse:
    return urllib3.request("POST", f"{gw.http}/v2/models/{model}/infer", body=body,
                           headers={"Content-Type": "application/json"}, timeout=30)


def test_full_queue_rejects_with_retry_after(gateway: RunningGateway) -> None:
    # One copy at 300 ms a request, room for 2 in the queue: of 8 at once, some are refused.
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _post(gateway, "slow"), range(8)))
    statuses = sorted(r.status for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in responses if r.status == 503)
    assert refused.headers["Retry-After"] == "1"
    assert "overloaded" in refused.json()["error"]
    ok = next(r for r in responses if r.status == 200)
    assert ok.json()["outputs"][0]["data"] == [2.0] * 16
    assert _post(gateway, "slow").status == 200  # and it serves again once the queue drains


def test_deadline_exceeded_is_504(gateway: RunningGateway) -> None:
    body = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                                     "data": [0.5] * 16}], "parameters": {"timeout": 20_000}})
    response = _post(gateway, "slow", body)
    assert response.status == 504
    assert "timeout" in response.json()["error"]
    assert _post(gateway, "slow").status == 200
    stats = urllib3.request("GET", f"{gateway.http}/v2/models/slow/stats").json()
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] >= 1
