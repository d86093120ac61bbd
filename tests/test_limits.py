"""Every request limit is configurable and answers a clear error, over a real bridge.

One gateway with small limits; each test pushes one limit past its bound through a real
client and reads the error, then the gateway still serves a valid request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pyarrow as pa
import pytest
import trio
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
import urllib3
import zmq
from tritonclient.utils import InferenceServerException

from inferoxy.client.websocket import open_stream
from inferoxy.protocol import zmq_message
from inferoxy.protocol.websocket import decode_reply, encode_frame
from tests.conftest import ROOT, RunningGateway, shm_names, start_gateway

MODELS = ROOT / "tests" / "models_limits.yaml"
LIMITS = {
    "--max-body-bytes": 1 << 20,
    "--max-tensor-elements": 10_000,
    "--max-inputs": 4,  # echo has 5 inputs: the limit is what the operator says
    "--max-outputs": 2,
    "--max-frame-header-bytes": 1024,
    "--max-grpc-metadata-bytes": 2048,
    "--max-live-sequences": 2,
    "--max-client-regions": 1,
}


@pytest.fixture(scope="module")
def lgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    args = [str(a) for kv in LIMITS.items() for a in kv]
    gw = start_gateway(tmp_path_factory.mktemp("limits"), MODELS, *args, "--allow-client-shm")
    try:
        yield gw
        assert gw.stop() == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def post(gw: RunningGateway, path: str, body: bytes,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    r = urllib3.PoolManager().request("POST", f"{gw.http}{path}", body=body,
                                      headers=headers or {}, timeout=30, retries=False)
    return r.status, json.loads(r.data)


def stub_ok(gw: RunningGateway) -> None:
    """The gateway still answers a valid request (after each limit was hit)."""
    client = httpclient.InferenceServerClient(gw.url)
    try:
        image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
        inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        np.testing.assert_array_equal(client.infer("stub", [inp]).as_numpy("IMAGE"), image)
    finally:
        client.close()


def test_body_size(lgw: RunningGateway) -> None:
    image = np.zeros((1, 640, 640, 3), np.uint8)  # 1.2 MB > 1 MiB
    doc = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": list(image.shape),
                       "parameters": {"binary_data_size": image.nbytes}}]}
    header = orjson.dumps(doc)
    status, body = post(lgw, "/v2/models/stub/infer", header + image.tobytes(),
                        {"Inference-Header-Content-Length": str(len(header))})
    assert status == 413, body
    assert "limit" in body["error"]
    stub_ok(lgw)


def test_tensor_elements(lgw: RunningGateway) -> None:
    # 1 x 60 x 60 x 3 = 10800 elements (10.8 kB): under the body limit, over the element limit
    doc = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 60, 60, 3],
                       "data": [0] * 10800}]}
    status, body = post(lgw, "/v2/models/stub/infer", orjson.dumps(doc))
    assert status == 400, body
    assert "10800 elements" in body["error"] and "--max-tensor-elements" in body["error"]
    client = grpcclient.InferenceServerClient(lgw.grpc_url)  # gRPC, the same rule
    try:
        inp = grpcclient.InferInput("IMAGE", [1, 60, 60, 3], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, 60, 60, 3), np.uint8))
        with pytest.raises(InferenceServerException, match="max-tensor-elements") as info:
            client.infer("stub", [inp])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()
    stub_ok(lgw)


def test_number_of_inputs(lgw: RunningGateway) -> None:
    inputs = [
        {"name": "IMAGE", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [1, 2, 3]},
        {"name": "VEC", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16},
        {"name": "IDX", "datatype": "INT32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]},
        {"name": "FLAG", "datatype": "BOOL", "shape": [1, 3], "data": [True] * 3},
        {"name": "SCALAR", "datatype": "FP64", "shape": [1], "data": [1.0]},
    ]
    status, body = post(lgw, "/v2/models/echo/infer", orjson.dumps({"inputs": inputs}))
    assert status == 400, body
    assert "limit of 4 inputs" in body["error"] and "--max-inputs" in body["error"]
    stub_ok(lgw)


def test_number_of_outputs(lgw: RunningGateway) -> None:
    doc = {"inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 1, 1, 3],
                       "data": [1, 2, 3]}],
           "outputs": [{"name": "IMAGE"}] * 3}
    status, body = post(lgw, "/v2/models/stub/infer", orjson.dumps(doc))
    assert status == 400, body
    assert "3 outputs" in body["error"] and "--max-outputs" in body["error"]
    client = grpcclient.InferenceServerClient(lgw.grpc_url)
    try:
        inp = grpcclient.InferInput("IMAGE", [1, 1, 1, 3], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, 1, 1, 3), np.uint8))
        outs = [grpcclient.InferRequestedOutput("IMAGE") for _ in range(3)]
        with pytest.raises(InferenceServerException, match="max-outputs"):
            client.infer("stub", [inp], outputs=outs)
    finally:
        client.close()
    stub_ok(lgw)


def test_websocket_frame_header(lgw: RunningGateway) -> None:
    big = {"id": "big", "parameters": {"note": "x" * 2000},
           "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [1, 1, 1, 3]}]}
    small = {**big, "id": "small", "parameters": {}}

    async def main() -> list[dict[str, Any]]:
        async with open_stream(f"{lgw.ws_url}/v2/models/stub/stream") as ws:
            replies = []
            for header in (big, small):  # the stream goes on after the refused frame
                await ws.send_message(encode_frame(header, [np.ones((1, 1, 1, 3), np.uint8)]))
                replies.append(decode_reply(await ws.get_message())[0])
            return replies

    refused, served = trio.run(main)
    assert refused["code"] == 400
    assert "--max-frame-header-bytes" in refused["error"], refused
    assert served["id"] == "small" and "outputs" in served, served


def test_zmq_frame_header(lgw: RunningGateway) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(lgw.zmq_url)
    try:
        image = np.ones((1, 1, 1, 3), np.uint8)
        for rid, note in (("big", "x" * 2000), ("small", "")):
            sock.send_multipart(zmq_message.encode_request(
                {"model": "stub", "id": rid, "parameters": {"note": note}}, {"IMAGE": image}))
            assert sock.poll(30_000)
            header, outputs = zmq_message.decode_reply(sock.recv_multipart())
            if rid == "big":
                assert header["status"] == "error" and header["code"] == 400, header
                assert "--max-frame-header-bytes" in header["message"], header
            else:
                assert header["status"] == "ok", header
                assert outputs is not None and pa is not None
    finally:
        sock.close(linger=0)
        context.term()


def test_grpc_metadata(lgw: RunningGateway) -> None:
    client = grpcclient.InferenceServerClient(lgw.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(headers={"x-padding": "p" * 8000})
        assert info.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED), info.value
        assert client.is_server_live(headers={"x-small": "p" * 100})
    finally:
        client.close()


def test_live_sequences(lgw: RunningGateway) -> None:
    def step(seq: int, **flags: bool) -> tuple[int, dict[str, Any]]:
        doc = {"parameters": {"sequence_id": seq, **flags},
               "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4],
                           "data": [1.0] * 4}]}
        return post(lgw, "/v2/models/running_sum/infer", orjson.dumps(doc))

    assert step(101, sequence_start=True)[0] == 200
    assert step(102, sequence_start=True)[0] == 200
    status, body = step(103, sequence_start=True)
    assert status == 503, body
    assert "--max-live-sequences" in body["error"]
    assert step(101, sequence_start=True)[0] == 200  # a restart takes no new place
    assert step(101, sequence_end=True)[0] == 200
    assert step(103, sequence_start=True, sequence_end=True)[0] == 200  # room again
    assert step(102, sequence_end=True)[0] == 200


def test_registered_regions(lgw: RunningGateway, tmp_path: Path) -> None:
    handles = [shm.create_shared_memory_region(f"lim{i}", f"/ifxlimit{i}", 64) for i in (1, 2)]
    client = httpclient.InferenceServerClient(lgw.url)
    try:
        client.register_system_shared_memory("lim1", "/ifxlimit1", 64)
        with pytest.raises(InferenceServerException, match="1") as info:
            client.register_system_shared_memory("lim2", "/ifxlimit2", 64)
        assert "region" in str(info.value)
        client.unregister_system_shared_memory("lim1")
        client.register_system_shared_memory("lim2", "/ifxlimit2", 64)  # room again
        client.unregister_system_shared_memory()
    finally:
        client.close()
        for h in handles:
            shm.destroy_shared_memory_region(h)


def test_limits_are_flags_and_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferoxy.cli import build_parser

    monkeypatch.setenv("INFEROXY_MAX_LIVE_SEQUENCES", "7")
    args = build_parser().parse_args(["serve", "--max-inputs", "3"])
    assert (args.max_live_sequences, args.max_inputs) == (7, 3)
    assert args.max_frame_header_bytes == 64 << 10  # the default
