"""Versions side by side (in-process registry): routing by version, the default version
(latest READY, or pinned), metadata and statistics per version, over HTTP and gRPC."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import urllib3
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, RunningGateway, start_gateway

VERSIONS_MODELS = ROOT / "tests" / "models_versions.yaml"
X = np.arange(4, dtype=np.float32).reshape(1, 4) + 1  # [[1, 2, 3, 4]]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # slow_latest's version 2 never gets ready while the tests run: wait for live, then for
    # every other version.
    gw = start_gateway(tmp_path_factory.mktemp("versions"), VERSIONS_MODELS, ready=False)
    try:
        wait_for(lambda: all(
            m["state"] == "READY" for m in index(gw)
            if (m["name"], m["version"]) != ("slow_latest", "2")), gw)
        yield gw
    finally:
        gw.cleanup()


def wait_for(check: object, gw: RunningGateway, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s:\n{gw.log()[-4000:]}")


def index(gw: RunningGateway) -> list[dict[str, str]]:
    r = urllib3.request("POST", f"{gw.http}/v2/repository/index", body=b"{}")
    assert r.status == 200, r.data
    return json.loads(r.data)


def infer(gw: RunningGateway, model: str, version: str | None = None) -> float:
    """Y[0] / X[0]: the factor of whichever version answered."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4],
                        "data": X.ravel().tolist()}]}
    r = urllib3.request("POST", gw.http + path, body=json.dumps(body).encode())
    assert r.status == 200, r.data
    return float(json.loads(r.data)["outputs"][0]["data"][0])


def test_each_version_answers_for_itself(gw: RunningGateway) -> None:
    assert infer(gw, "scaled", "1") == 1.0
    assert infer(gw, "scaled", "2") == 2.0
    assert infer(gw, "pinned", "2") == 20.0
    assert infer(gw, "flat", "1") == 3.0


def test_default_is_the_latest_ready_version(gw: RunningGateway) -> None:
    assert infer(gw, "scaled") == 2.0
    # slow_latest's version 2 is still loading: the latest READY one is 1
    states = {(m["name"], m["version"]): m["state"] for m in index(gw)}
    assert states[("slow_latest", "2")] == "LOADING"
    assert infer(gw, "slow_latest") == 100.0
    assert infer(gw, "flat") == 3.0


def test_a_pinned_default_wins_over_the_latest(gw: RunningGateway) -> None:
    assert infer(gw, "pinned") == 10.0


def test_unknown_version_is_404(gw: RunningGateway) -> None:
    r = urllib3.request("POST", f"{gw.http}/v2/models/scaled/versions/3/infer", body=b"{}")
    assert r.status == 404
    assert "version" in json.loads(r.data)["error"]


def test_metadata_and_index_list_every_version(gw: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(gw.url)
    assert client.get_model_metadata("scaled")["versions"] == ["1", "2"]
    assert client.get_model_metadata("flat")["versions"] == ["1"]
    assert client.is_model_ready("scaled", "1") and client.is_model_ready("scaled", "2")
    assert not client.is_model_ready("slow_latest", "2")
    listed = [(m["name"], m["version"]) for m in index(gw)]
    assert [v for n, v in listed if n == "scaled"] == ["1", "2"]


def test_statistics_are_kept_per_version(gw: RunningGateway) -> None:
    client = httpclient.InferenceServerClient(gw.url)

    def count(version: str) -> int:
        stats = client.get_inference_statistics("scaled", version)["model_stats"]
        assert [s["version"] for s in stats] == [version]
        return int(stats[0]["inference_stats"]["success"]["count"])

    v1, v2 = count("1"), count("2")
    for _ in range(3):
        infer(gw, "scaled", "1")
    infer(gw, "scaled", "2")
    assert (count("1") - v1, count("2") - v2) == (3, 1)
    every = client.get_inference_statistics("scaled")["model_stats"]
    assert sorted(s["version"] for s in every) == ["1", "2"]


def test_grpc_routes_by_model_version(gw: RunningGateway) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    inp = grpcclient.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(X)
    for version, factor in (("1", 1.0), ("2", 2.0), ("", 2.0)):
        result = client.infer("scaled", [inp], model_version=version)
        assert result.as_numpy("Y")[0, 0] == factor
    with pytest.raises(InferenceServerException, match="version"):
        client.infer("scaled", [inp], model_version="9")
    assert client.get_model_metadata("scaled").versions == ["1", "2"]


def test_versioned_yaml_errors_name_the_version(tmp_path: Path) -> None:
    from gateway.config import ConfigError
    from gateway.declaration import load_declarations

    bad = tmp_path / "models.yaml"
    bad.write_text(VERSIONS_MODELS.read_text().replace(
        '"2": {parameters: {factor: 2.0}}', '"2": {batch_size: -1}'))
    with pytest.raises(ConfigError, match=r"model 'scaled' version '2': batch_size"):
        load_declarations(bad)
    bad.write_text(VERSIONS_MODELS.read_text().replace('default_version: "1"',
                                                       'default_version: "7"'))
    with pytest.raises(ConfigError, match="default_version"):
        load_declarations(bad)


def test_the_in_process_registry_has_the_same_api(gw: RunningGateway) -> None:
    http = urllib3.PoolManager()

    def call(method: str, path: str, body: object = None) -> tuple[int, object]:
        r = http.request(method, gw.admin_url + path,
                         body=None if body is None else json.dumps(body).encode())
        return r.status, (json.loads(r.data) if r.data else None)

    assert call("GET", "/v2/admin/registry")[1] == {
        "kind": "in-process", "where": "this process", "available": True, "invalid": []}
    declaration = {"entrypoint": "tests.models.scaled:Scaled", "parameters": {"factor": 7.0},
                   "inputs": [{"name": "X", "datatype": "FP32", "shape": [4]}],
                   "outputs": [{"name": "Y", "datatype": "FP32", "shape": [4]}]}
    assert call("PUT", "/v2/admin/models/inproc", declaration)[0] == 201
    wait_for(lambda: any(m["name"] == "inproc" and m["state"] == "READY" for m in index(gw)), gw)
    assert infer(gw, "inproc") == 7.0
    status, doc = call("PATCH", "/v2/admin/models/inproc",
                       {"versions": {"1": {}, "2": {"parameters": {"factor": 8.0}}}})
    assert status == 200, doc
    wait_for(lambda: infer(gw, "inproc") == 8.0, gw)  # version 2, once ready
    assert infer(gw, "inproc", "1") == 7.0
    assert call("DELETE", "/v2/admin/models/inproc")[0] == 204
    wait_for(lambda: urllib3.request("POST", f"{gw.http}/v2/models/inproc/infer",
                                     body=b"{}").status == 404, gw)
