"""Prometheus metrics and request ids in logs, seen from outside a real gateway."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import urllib3
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import TEST_MODELS, RunningGateway, start_gateway


def _scrape(gw: RunningGateway) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


def _stats(gw: RunningGateway, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{gw.url}/v2/models/{model}/stats", timeout=10) as r:
        doc: dict[str, Any] = json.load(r)
    return doc["model_stats"][0]  # type: ignore[no-any-return]


def _infer_stub(url: str, seed: int) -> None:
    client = httpclient.InferenceServerClient(url)
    try:
        image = np.random.default_rng(seed).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
        inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image, binary_data=True)
        result = client.infer("stub", [inp])
        np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)
    finally:
        client.close()


def test_histograms_agree_with_statistics(gateway: RunningGateway) -> None:
    n = 24
    ids = {"model": "stub", "version": "1"}
    before = _scrape(gateway)
    idle_slots = _sample(before, "inferoxy_shm_slots_in_use", "inferoxy_shm_slots_in_use")
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: _infer_stub(gateway.url, i), range(n)))
    after = _scrape(gateway)

    def delta(family: str, sample: str) -> float:
        return _sample(after, family, sample, **ids) - _sample(before, family, sample, **ids)

    latency = "inferoxy_request_duration_seconds"
    queue = "inferoxy_queue_duration_seconds"
    assert delta(latency, f"{latency}_count") == n
    assert delta(latency, f"{latency}_sum") > 0
    assert _sample(after, latency, f"{latency}_bucket", le="+Inf", **ids) == \
        _sample(after, latency, f"{latency}_count", **ids)
    assert delta(queue, f"{queue}_count") == n
    assert delta(queue, f"{queue}_sum") > 0

    stats = _stats(gateway, "stub")
    executions = _sample(after, "inferoxy_batch_size", "inferoxy_batch_size_count", **ids)
    assert executions == stats["execution_count"]
    assert _sample(after, "inferoxy_batch_size", "inferoxy_batch_size_sum", **ids) == \
        stats["inference_count"]
    # The Triton-named families read the same counters as the statistics endpoint.
    assert _sample(after, "nv_inference_exec_count", "nv_inference_exec_count_total",
                   **ids) == stats["execution_count"]
    assert _sample(after, "inferoxy_copies", "inferoxy_copies", state="ready", **ids) >= 1
    answers = "inferoxy_bridge_responses"
    rest_ok = {"bridge": "rest", "status_class": "2xx"}
    assert _sample(after, answers, f"{answers}_total", **rest_ok) - \
        _sample(before, answers, f"{answers}_total", **rest_ok) >= n

    deadline = time.monotonic() + 10
    while True:  # slots are freed as responses are sent: back to idle shortly after
        slots = _sample(_scrape(gateway), "inferoxy_shm_slots_in_use",
                        "inferoxy_shm_slots_in_use")
        if slots == idle_slots or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert slots == idle_slots
    assert "inferoxy_shm_bytes_in_use" in after


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            lines.append(doc)
    return lines


def _fail(url: str, request_id: str) -> None:
    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("X", [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[1]], dtype=np.int32))
        with pytest.raises(InferenceServerException, match="refused this input"):
            client.infer("faulty", [inp], request_id=request_id)
    finally:
        client.close()


def test_request_id_in_gateway_and_worker_logs(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--log-format", "json")
    try:
        _fail(gw.url, "req-fail-41")
        _fail(gw.url, "")  # no id from the client: the gateway makes one up
        deadline = time.monotonic() + 10
        while True:
            lines = _json_lines(gw.log())
            gateway_lines = [d for d in lines if d.get("logger") == "inferoxy.model"
                             and "failed" in d["message"]]
            worker_lines = [d for d in lines if d.get("logger") == "inferoxy.worker"
                            and "model raised" in d["message"]]
            if (len(gateway_lines) >= 2 and len(worker_lines) >= 2) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert any("req-fail-41" in d["message"] for d in gateway_lines), gw.log()
        assert any("req-fail-41" in d["message"] for d in worker_lines), gw.log()
        made_up = [d["message"].split()[1].strip("'") for d in gateway_lines
                   if "req-fail-41" not in d["message"]]
        assert made_up and made_up[0].startswith("ifx-"), gateway_lines
        assert any(made_up[0] in d["message"] for d in worker_lines), worker_lines
        for d in gateway_lines:  # one line each, with the model's message but no tensors
            assert "\n" not in d["message"]
            assert "faulty" in d["message"] and "model_error" in d["message"]
    finally:
        gw.stop()
        gw.cleanup()


def test_grpc_answers_are_counted(gateway: RunningGateway) -> None:
    import tritonclient.grpc as grpcclient

    answers = "inferoxy_bridge_responses"
    ok = {"bridge": "grpc", "status_class": "2xx"}
    bad = {"bridge": "grpc", "status_class": "4xx"}
    before = _scrape(gateway)
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        image = np.zeros((1, 4, 4, 3), dtype=np.uint8)
        inp = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        for _ in range(3):
            client.infer("stub", [inp])
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.infer("no_such_model", [inp])
    finally:
        client.close()
    after = _scrape(gateway)

    def delta(labels: dict[str, str]) -> float:
        return _sample(after, answers, f"{answers}_total", **labels) - \
            _sample(before, answers, f"{answers}_total", **labels)

    assert delta(ok) == 3
    assert delta(bad) == 1


def test_no_tensor_data_and_no_secrets_in_debug_logs(tmp_path: Path) -> None:
    """Even at DEBUG, logs carry neither tensor values nor the admin token (right or wrong)."""
    token, wrong = "tok-Q7vX9s3cr3t", "tok-Wr0ngZ8k2"
    marker = 918273.5  # a float no log line would print by chance
    gw = start_gateway(tmp_path, TEST_MODELS, "--log-format", "json", "--log-level", "DEBUG",
                       env={"INFEROXY_ADMIN_TOKEN": token})
    try:
        http = urllib3.PoolManager()
        values = [marker] * 16
        good = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                            "data": values}]}
        r = http.request("POST", f"{gw.http}/v2/models/synthetic/infer", body=json.dumps(good))
        assert r.status == 200 and json.loads(r.data)["outputs"][0]["data"][0] == marker * 2 + 1
        bad = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 15],
                           "data": values}]}  # a shape error: its message must not echo data
        r = http.request("POST", f"{gw.http}/v2/models/synthetic/infer", body=json.dumps(bad))
        assert r.status == 400
        _fail(gw.url, "req-no-secrets")  # the model raises: logged in gateway and worker
        for header in (f"Bearer {wrong}", f"Bearer {token}", wrong):
            r = http.request("GET", f"{gw.admin_url}/v2/admin/models",
                             headers={"Authorization": header})
            assert r.status == (200 if header == f"Bearer {token}" else 401)
        deadline = time.monotonic() + 10
        while "req-no-secrets" not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = gw.log()
        assert "req-no-secrets" in log, log[-2000:]
        assert any(d["level"] == "DEBUG" for d in _json_lines(log)), "DEBUG was not on"
        for secret in (token, wrong, str(marker), "918273"):
            assert secret not in log, f"{secret!r} appears in the log"
    finally:
        gw.stop()
        gw.cleanup()
