"""BYTES tensors end to end, with clients this project did not write (``tritonclient`` HTTP
and gRPC, KServe's ``kserve``), against real gateways: one process, and two data-plane
processes (``--workers 2``), where only descriptors cross processes.

Every way the protocol carries BYTES: JSON ``data`` strings, the binary extension (4-byte
lengths), gRPC ``raw_input_contents`` and ``bytes_contents``, system shared memory both
ways; BYTES outputs back the same ways. The model (``tests/models/strings.py``) refuses
anything but an object array of ``bytes``, so a served request proves what it saw.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
import urllib3
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests.conftest import ROOT, RunningGateway, start_gateway

BYTES_MODELS = ROOT / "tests" / "models_bytes.yaml"
HTTP = urllib3.PoolManager(retries=False, timeout=30)
# Binary (a NUL inside, and a JPEG's first bytes), empty, and non-ASCII UTF-8.
TEXT = np.array([[b"hello", b"w\x00rld", b"", b"\xff\xd8\xff\xe0", "café".encode()]],
                dtype=object)
MAX_ELEMENT = 1 << 20  # --max-bytes-element-bytes of the tests' gateways
UPPER = np.array([[x.upper() for x in TEXT[0]]], dtype=object)
LENGTHS = np.array([[len(x) for x in TEXT[0]]], dtype=np.int32)


@pytest.fixture(scope="module", params=["0", "2"], ids=["one-process", "workers-2"])
def gw(request: pytest.FixtureRequest,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("bytes"), BYTES_MODELS, "--workers",
                            request.param, "--allow-client-shm", "--max-bytes-elements", "64",
                            "--max-bytes-element-bytes", str(MAX_ELEMENT))
    try:
        yield gateway
        assert gateway.stop() == 0, gateway.log()
        # Tracebacks of the gateway's own code, none; a model that raised is logged with its.
        own = [ln for ln in gateway.log().splitlines()
               if "Traceback" in ln and "model raised" not in ln]
        assert own == [], gateway.log()
    finally:
        gateway.cleanup()


def _grpc(gw: RunningGateway) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gw.grpc_url)


def _http_infer(gw: RunningGateway, model: str, text: np.ndarray, binary_in: bool,
                binary_out: bool, **kwargs: object) -> httpclient.InferResult:
    client = httpclient.InferenceServerClient(gw.url)
    try:
        tensor = httpclient.InferInput("TEXT", list(text.shape), "BYTES")
        tensor.set_data_from_numpy(text, binary_data=binary_in)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out)
                   for n in ("UPPER", "LENGTHS")]
        return client.infer(model, [tensor], outputs=outputs, **kwargs)  # type: ignore[arg-type]
    finally:
        client.close()


@pytest.mark.parametrize("model", ["strings", "strings_stateful"])
def test_http_binary_and_json(gw: RunningGateway, model: str) -> None:
    """Binary in and out keeps every byte; JSON carries UTF-8 strings both ways. The stateful
    model is served by the control process (with data planes: descriptors to it)."""
    seq = {"sequence_id": 7, "sequence_start": True, "sequence_end": True} if (
        model == "strings_stateful") else {}
    result = _http_infer(gw, model, TEXT, True, True, **seq)
    assert result.as_numpy("UPPER").tolist() == UPPER.tolist()
    np.testing.assert_array_equal(result.as_numpy("LENGTHS"), LENGTHS)
    out = result.get_response()["outputs"]
    assert [o["datatype"] for o in out] == ["BYTES", "INT32"]
    assert out[0]["shape"] == [1, 5]
    # JSON: strings in, strings out (tritonclient sends and parses JSON "data" itself).
    words = np.array([["abc", "", "ünï"]], dtype=object)
    result = _http_infer(gw, model, words, False, False, **seq)
    assert result.get_response()["outputs"][0]["data"] == ["ABC", "", "üNï"]
    assert result.as_numpy("LENGTHS").tolist() == [[3, 0, 5]]


def test_grpc_raw_and_bytes_contents(gw: RunningGateway) -> None:
    client = _grpc(gw)
    try:
        for model, seq in (("strings", {}), ("strings_stateful", {
                "sequence_id": 9, "sequence_start": True, "sequence_end": True})):
            tensor = grpcclient.InferInput("TEXT", list(TEXT.shape), "BYTES")
            tensor.set_data_from_numpy(TEXT)  # raw_input_contents, 4-byte lengths
            result = client.infer(model, [tensor], **seq)  # type: ignore[arg-type]
            assert result.as_numpy("UPPER").tolist() == UPPER.tolist()
            np.testing.assert_array_equal(result.as_numpy("LENGTHS"), LENGTHS)
    finally:
        client.close()
    # Typed contents: bytes_contents, one entry per element.
    channel = grpc.insecure_channel(gw.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="strings", id="bc")
    entry = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 5])
    entry.contents.bytes_contents.extend(TEXT[0].tolist())
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "bc"
    assert [o.datatype for o in response.outputs] == ["BYTES", "INT32"]
    upper = response.raw_output_contents[0]
    assert upper == serialize_byte_tensor(UPPER).item()
    # A count that disagrees with the shape is refused.
    del entry.contents.bytes_contents[-1]
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes_contents has 4 elements, shape [1, 5] needs 5" in str(exc.value.details())
    channel.close()


def test_many_clients_batched_together(gw: RunningGateway) -> None:
    """Requests of different lengths that share a batch each get their own rows back."""
    def one(i: int) -> tuple[int, list[list[bytes]]]:
        text = np.array([[f"r{i}-{j}".encode() * (i + 1) for j in range(i % 3 + 1)]],
                        dtype=object)
        if i % 2:
            result = _http_infer(gw, "strings", text, True, True)
        else:
            client = _grpc(gw)
            tensor = grpcclient.InferInput("TEXT", list(text.shape), "BYTES")
            tensor.set_data_from_numpy(text)
            result = client.infer("strings", [tensor])
            client.close()
        assert result.as_numpy("LENGTHS").tolist() == [[len(x) for x in text[0]]]
        return i, result.as_numpy("UPPER").tolist()

    with ThreadPoolExecutor(8) as pool:
        for i, upper in pool.map(one, range(24)):
            assert upper == [[f"R{i}-{j}".encode() * (i + 1) for j in range(i % 3 + 1)]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_both_ways(gw: RunningGateway, protocol: str) -> None:
    """The input's wire form in the client's region, the output written into another."""
    wire = serialize_byte_tensor(TEXT).item()
    out_size = len(serialize_byte_tensor(UPPER).item())
    key = f"/ifxbytes_{protocol}_{gw.shm_prefix}"
    h_in = shm.create_shared_memory_region("bin", key + "_in", len(wire))
    h_out = shm.create_shared_memory_region("bout", key + "_out", out_size + 64)
    mod = httpclient if protocol == "http" else grpcclient
    client = (httpclient.InferenceServerClient(gw.url) if protocol == "http"
              else _grpc(gw))
    try:
        shm.set_shared_memory_region(h_in, [serialize_byte_tensor(TEXT)])  # as clients do
        client.register_system_shared_memory("bin", key + "_in", len(wire))
        client.register_system_shared_memory("bout", key + "_out", out_size + 64)
        tensor = mod.InferInput("TEXT", list(TEXT.shape), "BYTES")
        tensor.set_shared_memory("bin", len(wire))
        upper = mod.InferRequestedOutput("UPPER")
        upper.set_shared_memory("bout", out_size + 64)
        lengths = mod.InferRequestedOutput("LENGTHS")
        result = client.infer("strings", [tensor], outputs=[upper, lengths])
        np.testing.assert_array_equal(result.as_numpy("LENGTHS"), LENGTHS)
        meta = result.get_output("UPPER")
        shape = meta["shape"] if protocol == "http" else list(meta.shape)
        assert shape == [1, 5]
        got = shm.get_contents_as_numpy(h_out, np.object_, shape)
        assert got.tolist() == UPPER.tolist()
        # A region whose bytes are not in the wire form: a clear 400, not a crash.
        shm.set_shared_memory_region(h_in, [np.frombuffer(b"\xff" * len(wire), np.uint8)])
        with pytest.raises(InferenceServerException,
                           match=r"input 'TEXT': BYTES element 0 has \d+ bytes") as exc:
            client.infer("strings", [tensor], outputs=[upper, lengths])
        assert exc.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    finally:
        client.unregister_system_shared_memory()
        client.close()
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def _raw_post(gw: RunningGateway, header: dict[str, object], binary: bytes = b""
              ) -> tuple[int, str]:
    head = orjson.dumps(header)
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head))}
    r = HTTP.request("POST", gw.http + "/v2/models/strings/infer", body=head + binary,
                     headers=headers)
    return r.status, orjson.loads(r.data).get("error", "")


def _binary(shape: list[int], size: int) -> dict[str, object]:
    return {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": shape,
                        "parameters": {"binary_data_size": size}}]}


@pytest.mark.parametrize("shape, data, message", [
    ([1, 2], struct.pack("<I", 1) + b"a", "ends at element 1 of 2"),
    ([1, 1], struct.pack("<I", 9) + b"abc", "claims 9 bytes; only 3 are left"),
    ([1, 1], struct.pack("<I", 1) + b"ab", "1 bytes after its 1 elements"),
    ([1, 1], struct.pack("<I", MAX_ELEMENT + 1) + b"x" * (MAX_ELEMENT + 1),
     f"{MAX_ELEMENT + 1} bytes, more than the limit of {MAX_ELEMENT}"),
    ([1, 65], b"", "65 elements, more than the limit of 64"),
])
def test_malformed_and_oversized_binary_is_400(gw: RunningGateway, shape: list[int],
                                               data: bytes, message: str) -> None:
    status, error = _raw_post(gw, _binary(shape, len(data)), data)
    assert (status, message in error) == (400, True), error
    # The model serves on: nothing was left half-admitted.
    result = _http_infer(gw, "strings", TEXT, True, True)
    np.testing.assert_array_equal(result.as_numpy("LENGTHS"), LENGTHS)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "BYTES data must be strings, got int"),
    (["a"], "data has 1 elements, shape [1, 2] needs 2"),
    (["a", "b", "c"], "more than the 2 elements"),
    (["a", "x" * (MAX_ELEMENT + 1)], f"{MAX_ELEMENT + 1} bytes, more than the limit of "
                                     f"{MAX_ELEMENT}"),
])
def test_malformed_json_data_is_400(gw: RunningGateway, data: list[object],
                                    message: str) -> None:
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 2], "data": data}]}
    r = HTTP.request("POST", gw.http + "/v2/models/strings/infer", body=orjson.dumps(body),
                     headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert message in orjson.loads(r.data)["error"]


def test_grpc_bounds_are_invalid_argument(gw: RunningGateway) -> None:
    client = _grpc(gw)
    try:
        big = np.array([[b"x" * (MAX_ELEMENT + 1)]], dtype=object)
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException,
                           match=f"more than the limit of {MAX_ELEMENT}") as e:
            client.infer("strings", [tensor])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        many = np.array([[b"a"] * 65], dtype=object)
        tensor = grpcclient.InferInput("TEXT", [1, 65], "BYTES")
        tensor.set_data_from_numpy(many)
        with pytest.raises(InferenceServerException, match="more than the limit of 64") as e:
            client.infer("strings", [tensor])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()


def test_websocket_and_zeromq_refuse_bytes_clearly(gw: RunningGateway) -> None:
    from inferoxy.client import Client, InferenceError

    for connect, url in ((Client.websocket, gw.ws_url), (Client.zmq, gw.zmq_url)):
        with connect(url) as c:
            with pytest.raises(InferenceError, match=r"has BYTES tensor 'TEXT', which the .* "
                                                     "bridge does not carry") as exc:
                c.infer("strings", {"TEXT": np.array([[1, 2]], np.uint8)})
            assert exc.value.code == 400
            with pytest.raises(InferenceError, match="'repeat' is decoupled") as exc:
                c.infer("repeat", {"N": np.array([[1]], np.int32)})
            assert exc.value.code == 501


def test_a_bytes_output_that_is_not_text_needs_binary(gw: RunningGateway) -> None:
    """JSON cannot carry bytes that are not UTF-8: a clear 400 saying to ask for binary."""
    junk = np.array([[b"\xff\xfe"]], dtype=object)
    with pytest.raises(InferenceServerException, match="not UTF-8 text; request it with "
                       "binary_data") as exc:
        _http_infer(gw, "strings", junk, True, False)
    assert exc.value.status() == "400"
    assert _http_infer(gw, "strings", junk, True, True).as_numpy("UPPER").tolist() == [
        [b"\xff\xfe"]]


def test_metadata_and_config_say_bytes(gw: RunningGateway) -> None:
    http = httpclient.InferenceServerClient(gw.url)
    try:
        meta = http.get_model_metadata("strings")
        assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, -1]}]
        config = http.get_model_config("strings")
        assert config["input"][0]["data_type"] == "TYPE_STRING"
    finally:
        http.close()


# -- decoupled models: several responses for one request, over ModelStreamInfer ------------


def _stream(gw: RunningGateway, counts: list[int], empty_final: bool = True
            ) -> list[tuple[str, dict[str, object]]]:
    """Each request asks ``N``; every response (or error) that comes back, in order:
    ``(request id, {"index", "word", "final"} | {"error"})``, until every request saw its
    final response (or ``timeout``)."""
    import queue

    got: queue.Queue[tuple[str, dict[str, object]]] = queue.Queue()

    def callback(result: grpcclient.InferResult | None,
                 error: InferenceServerException | None) -> None:
        if error is not None:
            got.put(("", {"error": error.message()}))
            return
        assert result is not None
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        if not response.outputs:
            got.put((response.id, {"final": final}))
            return
        got.put((response.id, {"index": result.as_numpy("INDEX").tolist(),
                               "word": result.as_numpy("WORD").tolist(), "final": final}))

    client = _grpc(gw)
    client.start_stream(callback=callback)
    try:
        for i, n in enumerate(counts):
            tensor = grpcclient.InferInput("N", [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[n]], np.int32))
            client.async_stream_infer("repeat", [tensor], request_id=f"r{i}",
                                      enable_empty_final_response=empty_final)
        out: list[tuple[str, dict[str, object]]] = []
        finals = 0
        expected = len(counts) if empty_final else sum(1 for n in counts if n != 0)
        while finals < expected:
            rid, item = got.get(timeout=30)
            out.append((rid, item))
            finals += bool(item.get("final")) or "error" in item
        return out
    finally:
        client.stop_stream()
        client.close()


def test_decoupled_responses_then_the_final_flag(gw: RunningGateway) -> None:
    responses = _stream(gw, [3, 0, 1])
    by_request: dict[str, list[dict[str, object]]] = {}
    for rid, item in responses:
        by_request.setdefault(rid, []).append(item)
    assert by_request["r0"] == [
        {"index": [[i]], "word": [[f"word-{i}".encode()]], "final": False} for i in range(3)
    ] + [{"final": True}]
    assert by_request["r1"] == [{"final": True}]  # no response: the final flag alone
    assert by_request["r2"] == [{"index": [[0]], "word": [[b"word-0"]], "final": False},
                                {"final": True}]
    # Without an empty final response the last response carries the flag, as in Triton.
    responses = _stream(gw, [2], empty_final=False)
    assert [item["final"] for _, item in responses] == [False, True]


def test_decoupled_model_failing_mid_stream(gw: RunningGateway) -> None:
    """The model raises after yielding once: the request gets one error, the stream lives."""
    responses = _stream(gw, [-2, 1])
    errors = [item["error"] for _, item in responses if "error" in item]
    assert len(errors) == 1 and "asked to fail after one response" in str(errors[0])
    assert ("r1", {"final": True}) in responses


def test_decoupled_model_refused_without_a_stream(gw: RunningGateway) -> None:
    """As Triton: unary gRPC and HTTP refuse a decoupled model, in Triton's words."""
    client = _grpc(gw)
    tensor = grpcclient.InferInput("N", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[1]], np.int32))
    with pytest.raises(InferenceServerException, match="ModelInfer RPC doesn't support models "
                       "with decoupled transaction policy") as exc:
        client.infer("repeat", [tensor])
    assert exc.value.status() == "StatusCode.UNIMPLEMENTED"
    config = client.get_model_config("repeat", as_json=True)["config"]
    assert config["model_transaction_policy"] == {"decoupled": True}
    client.close()
    http = httpclient.InferenceServerClient(gw.url)
    try:
        h_tensor = httpclient.InferInput("N", [1, 1], "INT32")
        h_tensor.set_data_from_numpy(np.array([[1]], np.int32))
        with pytest.raises(InferenceServerException, match="HTTP end point doesn't support "
                           "models with decoupled transaction policy") as hexc:
            http.infer("repeat", [h_tensor])
        assert hexc.value.status() == "501"
        assert http.get_model_config("repeat")["model_transaction_policy"] == {
            "decoupled": True}
    finally:
        http.close()


# -- the face detector fed JPEG/PNG files ---------------------------------------------------


def _encoded(fmt: str) -> bytes:
    import cv2
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[:, :, ::-1])  # OpenCV writes BGR
    ok, buf = cv2.imencode(fmt, image)
    assert ok
    return buf.tobytes()


def test_face_detector_takes_jpeg_and_png_files(gw: RunningGateway) -> None:
    """Files decoded in the worker find the astronaut's face, as her pixels do
    (tests/test_example_models.py); a file that is no image is refused with the reason."""
    files = np.array([[_encoded(".jpg")], [_encoded(".png")]], dtype=object)
    tensor = httpclient.InferInput("IMAGE_FILE", [2, 1], "BYTES")
    tensor.set_data_from_numpy(files, binary_data=True)
    http = httpclient.InferenceServerClient(gw.url)
    try:
        result = http.infer("face_files", [tensor])
        assert result.as_numpy("COUNT").tolist() == [[1], [1]]
        for box in result.as_numpy("BOXES")[:, 0]:
            x, y, w, h = box.tolist()
            assert 165 <= x and x + w <= 285 and 50 <= y and y + h <= 175, box
        junk = httpclient.InferInput("IMAGE_FILE", [1, 1], "BYTES")
        junk.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
        with pytest.raises(InferenceServerException, match=r"IMAGE_FILE 0 .* is not an image"):
            http.infer("face_files", [junk])
    finally:
        http.close()
    # Decoupled: one response per face, over a gRPC stream.
    import queue

    got: queue.Queue[grpcclient.InferResult] = queue.Queue()
    client = _grpc(gw)
    client.start_stream(callback=lambda result, error: got.put(result if error is None
                                                               else error))
    try:
        g_tensor = grpcclient.InferInput("IMAGE_FILE", [1, 1], "BYTES")
        g_tensor.set_data_from_numpy(files[:1])
        client.async_stream_infer("face_stream", [g_tensor], enable_empty_final_response=True)
        face = got.get(timeout=30)
        assert isinstance(face, grpcclient.InferResult), face
        assert face.as_numpy("BOX").shape == (1, 4)
        last = got.get(timeout=30)
        assert last.get_response().parameters["triton_final_response"].bool_param
    finally:
        client.stop_stream()
        client.close()


def test_kserve_client_sends_and_reads_bytes(gw: RunningGateway) -> None:
    """KServe's client (a process of its own: tests/kserve_client.py): JSON strings and
    binary over REST, and gRPC."""
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "tests.kserve_client", gw.url, gw.grpc_url, "--bytes"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    expected = ["KSERVE", "", "BYTES"]
    assert json.loads(run.stdout) == {"rest_json": expected, "rest_binary": expected,
                                      "grpc": expected}


def test_an_empty_tensor_round_trips(gw: RunningGateway) -> None:
    """Shape [1, 0]: no elements, no bytes; empty outputs come back (binary ones too)."""
    empty = np.empty((1, 0), dtype=object)
    for binary in (True, False):
        result = _http_infer(gw, "strings", empty, binary, binary)
        assert result.as_numpy("UPPER").shape == (1, 0)
        assert [o["shape"] for o in result.get_response()["outputs"]] == [[1, 0], [1, 0]]
    client = _grpc(gw)
    tensor = grpcclient.InferInput("TEXT", [1, 0], "BYTES")
    tensor.set_data_from_numpy(empty)
    assert client.infer("strings", [tensor]).as_numpy("LENGTHS").shape == (1, 0)
    client.close()
