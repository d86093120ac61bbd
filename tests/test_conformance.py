"""Drop-in for Triton and KServe clients: the protocol's corners, driven by clients this
project did not write — ``tritonclient`` (HTTP, gRPC, asyncio) and KServe's ``kserve`` (in
a process of its own: ``tests/kserve_client.py``) — against real gateways."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import urllib3
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, RunningGateway, start_gateway

HTTP = urllib3.PoolManager(retries=False, timeout=30)


def _get(gw: RunningGateway, path: str) -> tuple[int, dict[str, object] | list[object]]:
    r = HTTP.request("GET", gw.http + path)
    return r.status, orjson.loads(r.data) if r.data else {}


def _post(gw: RunningGateway, path: str, doc: object) -> tuple[int, dict[str, object]]:
    r = HTTP.request("POST", gw.http + path, body=orjson.dumps(doc),
                     headers={"Content-Type": "application/json"})
    return r.status, orjson.loads(r.data) if r.data else {}


def _grpc(gw: RunningGateway) -> grpcclient.InferenceServerClient:
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    deadline = time.monotonic() + 10
    while True:  # the HTTP side said ready; the gRPC side starts beside it
        try:
            if client.is_server_live():
                return client
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@pytest.fixture
def grpc_client(gateway: RunningGateway) -> Iterator[grpcclient.InferenceServerClient]:
    client = _grpc(gateway)
    yield client
    client.close()


def _code(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


SIXTEEN = np.arange(16, dtype=np.float32)[None]


# -- health, server metadata, ids ----------------------------------------------------------


def test_health_answers_carry_the_oip_bodies(gateway: RunningGateway) -> None:
    assert _get(gateway, "/v2/health/live") == (200, {"live": True})
    assert _get(gateway, "/v2/health/ready") == (200, {"ready": True})
    assert _get(gateway, "/v2/models/stub/ready") == (200, {"name": "stub", "ready": True})
    # tritonclient reads only the status code: it keeps working, sync and asyncio.
    client = httpclient.InferenceServerClient(gateway.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("stub") and not client.is_model_ready("nope")
    client.close()

    async def aio() -> tuple[bool, bool, bool, bool]:
        h = httpaio.InferenceServerClient(gateway.url)
        g = grpcaio.InferenceServerClient(gateway.grpc_url)
        try:
            return (await h.is_server_live(), await h.is_server_ready(),
                    await g.is_server_live(), await g.is_model_ready("stub"))
        finally:
            await h.close()
            await g.close()

    assert asyncio.run(aio()) == (True, True, True, True)


def test_v2_with_a_trailing_slash_is_server_metadata(gateway: RunningGateway) -> None:
    status, doc = _get(gateway, "/v2/")
    assert status == 200
    assert (status, doc) == _get(gateway, "/v2")
    assert isinstance(doc, dict) and doc["name"] == "inferoxy"


def test_id_is_always_returned(gateway: RunningGateway) -> None:
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                        "data": SIXTEEN.reshape(-1).tolist()}]}
    for sent, expected in (({}, ""), ({"id": ""}, ""), ({"id": "abc"}, "abc")):
        status, doc = _post(gateway, "/v2/models/synthetic/infer", body | sent)
        assert status == 200, doc
        assert doc["id"] == expected
    # The binary extension's JSON header too.
    client = httpclient.InferenceServerClient(gateway.url)
    tensor = httpclient.InferInput("INPUT", [1, 16], "FP32")
    tensor.set_data_from_numpy(SIXTEEN, binary_data=True)
    result = client.infer("synthetic", [tensor])
    assert result.get_response()["id"] == ""
    client.close()


def test_kserve_client(gateway: RunningGateway) -> None:
    """KServe's client: health (it parses the bodies), readiness, infer over REST (JSON and
    binary) and gRPC, with and without an id."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.kserve_client", gateway.url, gateway.grpc_url],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    expected_out = (SIXTEEN.reshape(-1) * 2 + 1).tolist()
    for key in ("rest_live", "rest_ready", "rest_model_ready", "grpc_live", "grpc_ready",
                "grpc_model_ready"):
        assert report[key] is True, (key, report[key])
    assert report["rest_infer_json"] == {"id": "k1", "model_name": "synthetic",
                                         "OUTPUT": expected_out}
    assert report["rest_infer_no_id"]["id"]  # kserve makes one up (a uuid): echoed back
    assert report["rest_infer_no_id"]["OUTPUT"] == expected_out
    assert report["rest_infer_binary"]["OUTPUT"] == expected_out
    assert report["grpc_infer"] == {"id": "k3", "model_name": "synthetic",
                                    "OUTPUT": expected_out}
    assert report["rest_model_ready_unknown"] is False
    assert report["rest_infer_unknown"]["raised"] == "HTTPStatusError"
    assert "Request for unknown model: 'nope' is not found" in report["rest_infer_unknown"][
        "message"]


# -- Triton's error wording ------------------------------------------------------------------


def test_unknown_model_in_tritons_words(gateway: RunningGateway,
                                        grpc_client: grpcclient.InferenceServerClient) -> None:
    http = httpclient.InferenceServerClient(gateway.url)
    try:
        for call in (lambda c: c.get_model_metadata("nope"),
                     lambda c: c.get_model_config("nope")):
            for client in (http, grpc_client):
                with pytest.raises(InferenceServerException,
                                   match=r"Request for unknown model: 'nope' is not found"):
                    call(client)
        for client in (http, grpc_client):  # Triton's own examples test message().startswith
            with pytest.raises(InferenceServerException) as exc:
                client.get_model_metadata("nope")
            assert exc.value.message().startswith("Request for unknown model")
        assert _code(exc) == "StatusCode.NOT_FOUND"  # the status codes stay ours

        tensor = httpclient.InferInput("INPUT", [1, 16], "FP32")
        tensor.set_data_from_numpy(SIXTEEN)
        with pytest.raises(InferenceServerException, match=r"Request for unknown model: "
                           r"'nope' is not found") as hexc:
            http.infer("nope", [tensor])
        assert hexc.value.status() == "404"
        with pytest.raises(InferenceServerException, match=r"Request for unknown model: "
                           r"'synthetic' version 7 is not found"):
            http.get_model_metadata("synthetic", "7")
        g_tensor = grpcclient.InferInput("INPUT", [1, 16], "FP32")
        g_tensor.set_data_from_numpy(SIXTEEN)
        with pytest.raises(InferenceServerException, match=r"Request for unknown model: "
                           r"'synthetic' version 7 is not found"):
            grpc_client.infer("synthetic", [g_tensor], model_version="7")
    finally:
        http.close()


def test_contents_and_raw_contents_in_tritons_words(gateway: RunningGateway) -> None:
    channel = grpc.insecure_channel(gateway.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="synthetic")
    tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(SIXTEEN[:, :8].tobytes())
    tensor.contents.fp32_contents.extend(SIXTEEN[0, 8:].tolist())
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("contents field must not be specified when using raw_input_contents for 'INPUT' "
            "for model 'synthetic'") in str(exc.value.details())
    channel.close()


# -- CUDA shared memory: none, answered alike over HTTP and gRPC ----------------------------


def test_cuda_shared_memory_over_grpc_and_http(
        gateway: RunningGateway, grpc_client: grpcclient.InferenceServerClient) -> None:
    http = httpclient.InferenceServerClient(gateway.url)
    try:
        # Status and unregister succeed with nothing registered (clients call unregister at
        # start and at exit, before they ever use system shared memory).
        assert list(grpc_client.get_cuda_shared_memory_status().regions) == []
        assert http.get_cuda_shared_memory_status() == []
        grpc_client.unregister_cuda_shared_memory()
        grpc_client.unregister_cuda_shared_memory("some-region")
        http.unregister_cuda_shared_memory()
        http.unregister_cuda_shared_memory("some-region")
        # Register is refused clearly, with the same message on both.
        with pytest.raises(InferenceServerException,
                           match="CUDA shared memory is not supported") as exc:
            grpc_client.register_cuda_shared_memory("r", b"\0" * 64, 0, 64)
        assert _code(exc) == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException,
                           match="CUDA shared memory is not supported") as hexc:
            http.register_cuda_shared_memory("r", b"\0" * 64, 0, 64)
        assert hexc.value.status() == "400"
    finally:
        http.close()


# -- model control as Triton clients use it --------------------------------------------------

CONFORMANCE_MODELS = ROOT / "tests" / "models_conformance.yaml"


@pytest.fixture(scope="module")
def control_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway of the module's own: these tests load, override and unload its models."""
    gw = start_gateway(tmp_path_factory.mktemp("conformance"), CONFORMANCE_MODELS)
    try:
        yield gw
    finally:
        gw.cleanup()


def _config_both(gw: RunningGateway, model: str) -> dict[str, object]:
    """The model's configuration as HTTP reports it, checked equal to what gRPC reports."""
    http = httpclient.InferenceServerClient(gw.url)
    g = _grpc(gw)
    try:
        doc = http.get_model_config(model)
        over_grpc = g.get_model_config(model, as_json=True)["config"]
        assert over_grpc.get("max_batch_size", 0) == doc["max_batch_size"]  # proto3: 0 unsaid
        assert over_grpc.get("parameters", {}) == doc.get("parameters", {})
        assert [i["name"] for i in over_grpc["input"]] == [i["name"] for i in doc["input"]]
        return doc
    finally:
        http.close()
        g.close()


def _synthetic_serves(gw: RunningGateway, rows: int = 1) -> None:
    x = np.tile(SIXTEEN, (rows, 1))
    http = httpclient.InferenceServerClient(gw.url)
    tensor = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    np.testing.assert_allclose(http.infer("synthetic", [tensor]).as_numpy("OUTPUT"), x * 2 + 1)
    http.close()


def test_load_with_a_config_override_over_http_and_grpc(control_gateway: RunningGateway) -> None:
    gw = control_gateway
    http = httpclient.InferenceServerClient(gw.url)
    g = _grpc(gw)
    override = json.dumps({"max_batch_size": 4, "dynamic_batching": {
        "max_queue_delay_microseconds": 100}, "parameters": {"a_ms": {"string_value": "2.5"}}})
    try:
        assert _config_both(gw, "synthetic")["max_batch_size"] == 16
        outcomes = []
        for client in (http, g):
            client.load_model("synthetic", config=override)
            assert client.is_model_ready("synthetic")
            outcomes.append(_config_both(gw, "synthetic"))
            _synthetic_serves(gw, rows=4)
            with pytest.raises(InferenceServerException, match=r"batch dimension 5 must be in "
                                                               r"\[1, 4\]"):
                _synthetic_serves(gw, rows=5)
            client.load_model("synthetic")  # a plain load: back to the declaration
            assert _config_both(gw, "synthetic")["max_batch_size"] == 16
        assert outcomes[0] == outcomes[1]  # the same outcome over HTTP and gRPC
        doc = outcomes[0]
        assert doc["max_batch_size"] == 4
        assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 100
        assert doc["parameters"]["a_ms"] == {"string_value": "2.5"}
        # The configuration a client read back, modified and loaded, round-trips.
        full = http.get_model_config("synthetic")
        full["max_batch_size"] = 2
        g.load_model("synthetic", config=json.dumps(full))
        assert _config_both(gw, "synthetic")["max_batch_size"] == 2
        http.load_model("synthetic")
        _synthetic_serves(gw, rows=16)
    finally:
        http.close()
        g.close()


@pytest.mark.parametrize("config, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"max_batch_size": "many"}', "max_batch_size must be an integer"),
    ('{"max_batch_size": -3}', "batch_size must be an integer in"),
    ('{"name": "stub"}', "names model 'stub'"),
    ('{"optimization": {}}', "cannot honour"),
    ('{"input": [{"name": "INPUT", "data_type": "TYPE_FP99", "dims": [16]}]}', "datatype"),
    ('{"instance_group": [{"count": 1}, {"count": 2}]}', "one group"),
])
def test_an_invalid_override_is_refused_and_changes_nothing(
        control_gateway: RunningGateway, config: str, message: str) -> None:
    gw = control_gateway
    before = _config_both(gw, "synthetic")
    http = httpclient.InferenceServerClient(gw.url)
    g = _grpc(gw)
    try:
        with pytest.raises(InferenceServerException, match=message) as hexc:
            http.load_model("synthetic", config=config)
        assert hexc.value.status() == "400"
        with pytest.raises(InferenceServerException, match=message) as exc:
            g.load_model("synthetic", config=config)
        assert _code(exc) == "StatusCode.INVALID_ARGUMENT"
        assert _config_both(gw, "synthetic") == before
        assert http.is_model_ready("synthetic")
        _synthetic_serves(gw)
    finally:
        http.close()
        g.close()


def test_an_override_that_does_not_load_is_taken_back(control_gateway: RunningGateway) -> None:
    """Valid as a configuration, but the model cannot start with it: the load fails with
    "failed to load" and the model serves on as declared."""
    gw = control_gateway
    before = _config_both(gw, "synthetic")
    broken = json.dumps({"parameters": {"no_such_argument": {"string_value": "1"}}})
    http = httpclient.InferenceServerClient(gw.url)
    try:
        with pytest.raises(InferenceServerException, match="failed to load 'synthetic'"):
            http.load_model("synthetic", config=broken)
        assert http.is_model_ready("synthetic")
        _synthetic_serves(gw)
        deadline = time.monotonic() + 10  # the failed replacement is stopped
        while _config_both(gw, "synthetic") != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _config_both(gw, "synthetic") == before
    finally:
        http.close()


def test_unknown_model_load_fails_to_load(control_gateway: RunningGateway) -> None:
    http = httpclient.InferenceServerClient(control_gateway.url)
    g = _grpc(control_gateway)
    try:
        with pytest.raises(InferenceServerException, match="failed to load 'nope'") as hexc:
            http.load_model("nope")
        assert hexc.value.status() == "404"
        with pytest.raises(InferenceServerException) as exc:
            g.load_model("nope")
        # Triton's own tests look for this much of its message.
        assert "failed to load 'nope', failed to poll from model repository" in (
            exc.value.message())
        assert _code(exc) == "StatusCode.NOT_FOUND"
    finally:
        http.close()
        g.close()


def test_unload_then_load_returns_to_ready(control_gateway: RunningGateway) -> None:
    http = httpclient.InferenceServerClient(control_gateway.url)
    g = _grpc(control_gateway)
    try:
        for unloader, loader in ((http, http), (g, g), (http, g), (g, http)):
            unloader.unload_model("stub")
            assert not http.is_model_ready("stub") and not g.is_model_ready("stub")
            loader.load_model("stub")
            assert http.is_model_ready("stub") and g.is_model_ready("stub")
            image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
            tensor = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
            tensor.set_data_from_numpy(image)
            np.testing.assert_array_equal(g.infer("stub", [tensor]).as_numpy("IMAGE"), image)
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert index["stub"]["state"] == "READY"
    finally:
        http.close()
        g.close()


# -- models without a batch dimension (batch_size: 0) -------------------------------------------

WHOLE = np.random.default_rng(3).random((3, 224, 224), dtype=np.float32)


def _whole_served(gw: RunningGateway) -> None:
    """tritonclient sends [3, 224, 224] (HTTP binary and JSON, gRPC) and gets it back whole;
    the model saw one batch row of it."""
    http = httpclient.InferenceServerClient(gw.url)
    g = _grpc(gw)
    try:
        for binary in (True, False):
            tensor = httpclient.InferInput("IMAGE", [3, 224, 224], "FP32")
            tensor.set_data_from_numpy(WHOLE, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
                       for n in ("IMAGE", "SEEN")]
            result = http.infer("whole", [tensor], outputs=outputs)
            np.testing.assert_array_equal(result.as_numpy("IMAGE"), WHOLE)
            assert result.as_numpy("SEEN").tolist() == [1, 3, 224, 224]
            assert [o["shape"] for o in result.get_response()["outputs"]] == [
                [3, 224, 224], [4]]
        g_tensor = grpcclient.InferInput("IMAGE", [3, 224, 224], "FP32")
        g_tensor.set_data_from_numpy(WHOLE)
        result = g.infer("whole", [g_tensor])
        np.testing.assert_array_equal(result.as_numpy("IMAGE"), WHOLE)
        assert result.as_numpy("SEEN").tolist() == [1, 3, 224, 224]
    finally:
        http.close()
        g.close()


def test_a_model_without_a_batch_dimension(control_gateway: RunningGateway) -> None:
    gw = control_gateway
    doc = _config_both(gw, "whole")
    assert doc["max_batch_size"] == 0
    assert doc["input"] == [{"name": "IMAGE", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}]
    http = httpclient.InferenceServerClient(gw.url)
    g = _grpc(gw)
    try:
        meta = http.get_model_metadata("whole")
        assert meta["inputs"] == [{"name": "IMAGE", "datatype": "FP32", "shape": [3, 224, 224]}]
        assert g.get_model_metadata("whole").inputs[0].shape == [3, 224, 224]
        assert g.get_model_config("whole").config.max_batch_size == 0
        _whole_served(gw)
        # A batch dimension is a wrong shape here, as in Triton.
        batched = WHOLE[None]
        tensor = httpclient.InferInput("IMAGE", list(batched.shape), "FP32")
        tensor.set_data_from_numpy(batched)
        with pytest.raises(InferenceServerException, match="no batch dimension") as exc:
            http.infer("whole", [tensor])
        assert exc.value.status() == "400"
        # Many clients at once: each request is run alone, none mixed with another.
        images = [np.full((3, 224, 224), i, np.float32) for i in range(8)]

        def one(image: np.ndarray) -> np.ndarray:
            c = httpclient.InferenceServerClient(gw.url)
            t = httpclient.InferInput("IMAGE", [3, 224, 224], "FP32")
            t.set_data_from_numpy(image)
            try:
                return c.infer("whole", [t]).as_numpy("IMAGE")
            finally:
                c.close()

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            for image, out in zip(images, pool.map(one, images), strict=True):
                np.testing.assert_array_equal(out, image)
    finally:
        http.close()
        g.close()


def test_a_model_without_a_batch_dimension_behind_data_plane_processes(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    gw = start_gateway(tmp_path_factory.mktemp("whole-bw"), CONFORMANCE_MODELS,
                       "--workers", "1")
    try:
        _whole_served(gw)
    finally:
        gw.cleanup()


def test_a_model_without_a_batch_dimension_over_websocket_and_zeromq(
        control_gateway: RunningGateway) -> None:
    """The WebSocket stream carries whole shapes; a ZeroMQ Arrow batch is one request per
    row, each a whole tensor."""
    from inferoxy.client import Client

    with Client.websocket(control_gateway.ws_url) as c:
        out = c.infer("whole", {"IMAGE": WHOLE})
        np.testing.assert_array_equal(out["IMAGE"], WHOLE)
        assert out["SEEN"].tolist() == [1, 3, 224, 224]
    with Client.zmq(control_gateway.zmq_url) as c:
        rows = np.stack([WHOLE, WHOLE + 1])
        out = c.infer("whole", {"IMAGE": rows})
        np.testing.assert_array_equal(out["IMAGE"], rows)
        assert out["SEEN"].tolist() == [[1, 3, 224, 224]] * 2
