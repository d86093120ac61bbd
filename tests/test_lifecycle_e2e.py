"""Copies that die, gateways that stop or are killed: nothing is lost, nothing is left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import urllib3
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, RunningGateway, child_pids, shm_names, start_gateway


def _synthetic(client: httpclient.InferenceServerClient, value: float) -> np.ndarray:
    x = np.full((1, 16), value, dtype=np.float32)
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer("synthetic", [inp]).as_numpy("OUTPUT")


def _worker_pids(gateway_pid: int, model: str) -> list[int]:
    return child_pids(gateway_pid, b"worker", model.encode())


def _pending(gw: RunningGateway, model: str) -> float:
    text = urllib3.request("GET", f"{gw.metrics_url}/metrics").data.decode()
    prefix = f'nv_inference_pending_request_count{{model="{model}"'
    return float(next(ln for ln in text.splitlines() if ln.startswith(prefix)).split()[-1])


def _wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_batching_happens_under_concurrency(own_gateway: RunningGateway) -> None:
    """32 concurrent clients on a model that costs 20 ms + 0.5 ms/row: batches form."""
    def one_client(seed: int) -> bool:
        client = httpclient.InferenceServerClient(own_gateway.url)
        try:
            for i in range(4):
                x = np.full((1, 16), seed * 10 + i, dtype=np.float32)
                inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                out = client.infer("synthetic", [inp]).as_numpy("OUTPUT")
                if not np.allclose(out, x * 2 + 1):  # each client gets its own rows back
                    return False
            return True
        finally:
            client.close()

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(one_client, range(32)))
    client = httpclient.InferenceServerClient(own_gateway.url)
    stats = client.get_inference_statistics("synthetic")["model_stats"][0]
    assert stats["inference_count"] == 128
    # One copy at ~20 ms a batch could not serve 128 requests one by one in the time it did;
    # what a user sees is that executions are far fewer than inferences.
    assert stats["execution_count"] <= 128 // 4, stats
    sizes = {b["batch_size"] for b in stats["batch_stats"]}
    assert max(sizes) > 4


def test_killed_worker_is_restarted(own_gateway: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(own_gateway.url)
    np.testing.assert_allclose(_synthetic(client, 1.0), 3.0)
    [pid] = _worker_pids(own_gateway.process.pid, "synthetic")
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: _worker_pids(own_gateway.process.pid, "synthetic") not in ([], [pid]))
    _wait_for(lambda: client.is_model_ready("synthetic"))
    np.testing.assert_allclose(_synthetic(client, 2.0), 5.0)
    # The dead worker's output segments are gone with it.
    assert not [n for n in shm_names(own_gateway.shm_prefix) if f"-w{pid}-" in n]
    assert "copy 2 of model synthetic ready" in own_gateway.log()


def test_in_flight_requests_survive_a_worker_death(own_gateway: RunningGateway) -> None:
    """Requests running on a copy that dies are retried once on the restarted copy."""
    [pid] = _worker_pids(own_gateway.process.pid, "synthetic")

    def call(i: int) -> list[np.ndarray]:
        c = httpclient.InferenceServerClient(own_gateway.url)
        try:  # a few in a row, so the copy stays busy long enough to be killed mid-batch
            return [_synthetic(c, float(i * 10 + k)) for k in range(6)]
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(8)]
        _wait_for(lambda: _pending(own_gateway, "synthetic") > 0 or all(f.done() for f in futures))
        os.kill(pid, signal.SIGKILL)
        results = [f.result(timeout=30) for f in futures]
    for i, outs in enumerate(results):  # every request answered, each with its own rows
        for k, out in enumerate(outs):
            np.testing.assert_allclose(out, (i * 10 + k) * 2 + 1)


def test_model_that_kills_its_copy_gets_a_clear_error(own_gateway: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(own_gateway.url)
    inp = httpclient.InferInput("X", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[4]], np.int32))
    with pytest.raises(InferenceServerException, match="copy died") as exc:
        client.infer("faulty", [inp])
    assert exc.value.status() == "500"
    _wait_for(lambda: client.is_model_ready("faulty"))
    inp.set_data_from_numpy(np.array([[9]], np.int32))
    assert client.infer("faulty", [inp]).as_numpy("Y").tolist() == [[9]]


def test_shutdown_drains_and_leaves_no_segments(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path)
    client = httpclient.InferenceServerClient(gw.url)
    np.testing.assert_allclose(_synthetic(client, 1.0), 3.0)
    assert shm_names(gw.shm_prefix)  # inputs and outputs went through shared memory
    def slow(value: float) -> np.ndarray:
        c = httpclient.InferenceServerClient(gw.url, network_timeout=30)
        x = np.full((1, 16), value, dtype=np.float32)
        inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        return c.infer("slow", [inp]).as_numpy("OUTPUT")

    def received() -> float:  # answered + still pending: every request reached the gateway
        stats = httpclient.InferenceServerClient(gw.url).get_inference_statistics("slow")
        return stats["model_stats"][0]["inference_stats"]["success"]["count"] + _pending(
            gw, "slow")

    # The "slow" model takes 300 ms a request, one at a time: with three sent, at least one
    # is running or waiting in its queue when SIGTERM arrives; the drain answers them all.
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(slow, float(i)) for i in range(3)]
        _wait_for(lambda: received() == 3 and _pending(gw, "slow") > 0)
        gw.process.send_signal(signal.SIGTERM)
        for i, f in enumerate(futures):  # queued and running requests finished in the drain
            np.testing.assert_allclose(f.result(timeout=20), i * 2 + 1)
        assert gw.process.wait(timeout=30) == 0
    assert shm_names(gw.shm_prefix) == []
    run_dir = re.search(r"run directory \(worker sockets\): (\S+)", gw.log())
    assert run_dir and not Path(run_dir[1]).exists()
    assert "stopped; shared memory released" in gw.log()


def test_segments_of_a_killed_gateway_are_swept_at_next_start(tmp_path: Path) -> None:
    first = start_gateway(tmp_path)
    client = httpclient.InferenceServerClient(first.url)
    np.testing.assert_allclose(_synthetic(client, 1.0), 3.0)
    workers = _worker_pids(first.process.pid, "synthetic")
    first.stop(signal.SIGKILL)
    assert shm_names(first.shm_prefix)  # the killed gateway could not clean up
    # Its workers notice their gateway is gone and exit on their own.
    _wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), timeout=10)
    second = start_gateway(tmp_path, shm_prefix=first.shm_prefix)
    try:
        left = [n for n in shm_names(first.shm_prefix) if n.startswith(
            f"{first.shm_prefix}-{first.process.pid}-")]
        assert left == []
        assert "swept" in second.log()
    finally:
        assert second.stop() == 0
    assert shm_names(first.shm_prefix) == []


def test_bad_models_file_exits_with_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  stub:\n    entrypoint: examples.models.stub:Identity\n"
                   "    batch_size: zero\n    inputs: [{name: X, datatype: FP32, shape: [1]}]\n"
                   "    outputs: [{name: Y, datatype: FP32, shape: [1]}]\n")
    proc = subprocess.run([sys.executable, "-m", "inferoxy", "serve", "--models", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "model 'stub': batch_size must be an integer" in proc.stderr


def test_metrics_endpoint_agrees_with_statistics(gateway: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(gateway.url)
    _synthetic(client, 1.0)
    stats = client.get_inference_statistics("synthetic")["model_stats"][0]
    text = urllib3.request("GET", f"{gateway.metrics_url}/metrics").data.decode()
    line = next(ln for ln in text.splitlines()
                if ln.startswith('nv_inference_count_total{model="synthetic"'))
    assert float(line.split()[-1]) == stats["inference_count"]
