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

from tests.conftest import ROOT, RunningGateway

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
