"""The Open Inference Protocol v2 over gRPC, driven by unmodified ``tritonclient.grpc``."""

from __future__ import annotations

import os
import queue
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.settings import Settings
from tests.conftest import TEST_MODELS, RunningGateway, shm_names, start_gateway

UNKNOWN_NOPE = "Request for unknown model: 'nope' is not found"  # Triton's words

Client = grpcclient.InferenceServerClient


def connect(gw: RunningGateway) -> Client:
    client = Client(gw.grpc_url)
    deadline = time.monotonic() + 10
    while True:  # the HTTP side said ready; the gRPC side starts beside it
        try:
            if client.is_server_live():
                return client
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def stop_cleanly(gw: RunningGateway) -> None:
    """Stop with exit 0, no segment left, no traceback but those of the faulty model."""
    try:
        status = gw.stop()
        assert status == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        log = re.sub(r"model raised on batch \d+: Traceback", "", gw.log())
        assert "Traceback" not in log, gw.log()
    finally:
        gw.cleanup()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[Client]:
    c = connect(gateway)
    yield c
    c.close()


@pytest.fixture(scope="module")
def shm_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway that lets clients register system shared memory, and where models may raise
    (the session gateway's log must stay free of tracebacks; a model's error logs one)."""
    gw = start_gateway(tmp_path_factory.mktemp("grpc-shm"), TEST_MODELS, "--allow-client-shm")
    try:
        yield gw
    finally:
        stop_cleanly(gw)


@pytest.fixture
def shm_client(shm_gateway: RunningGateway) -> Iterator[Client]:
    c = connect(shm_gateway)
    yield c
    c.unregister_system_shared_memory()
    c.close()


def _image(seed: int = 0, h: int = 32, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, h, w, 3), dtype=np.uint8)


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def _code(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# -- health, metadata, configuration, statistics -------------------------------------------


def test_health_and_metadata(client: Client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("stub")
    assert client.is_model_ready("stub", "1")
    assert not client.is_model_ready("stub", "9")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "inferoxy"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("synthetic", as_json=True)
    assert model["name"] == "synthetic"
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": ["-1", "16"]}]
    assert model["outputs"] == [{"name": "OUTPUT", "datatype": "FP32", "shape": ["-1", "16"]}]
    with pytest.raises(InferenceServerException, match=UNKNOWN_NOPE) as exc:
        client.get_model_metadata("nope")
    assert _code(exc) == "StatusCode.NOT_FOUND"


def test_model_config(client: Client) -> None:
    config = client.get_model_config("face").config
    assert config.name == "face"
    assert config.max_batch_size == 4
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("IMAGE", grpcclient.model_config_pb2.TYPE_UINT8, [-1, -1, 3])
    ]
    assert [o.name for o in config.output] == ["BOXES", "COUNT"]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_config("nope")
    assert _code(exc) == "StatusCode.NOT_FOUND"


def test_statistics_count_requests(client: Client) -> None:
    before = client.get_inference_statistics("stub").model_stats[0]
    image = _image(2)
    for _ in range(3):
        client.infer("stub", [_input("IMAGE", image, "UINT8")])
    after = client.get_inference_statistics("stub", "1").model_stats[0]
    assert after.name == "stub"
    assert after.version == "1"
    assert after.inference_count - before.inference_count == 3
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.execution_count > before.execution_count
    everything = {s.name for s in client.get_inference_statistics().model_stats}
    assert {"stub", "synthetic", "face", "faulty", "slow"} <= everything


# -- inference -------------------------------------------------------------------------------


def test_stub_round_trip(client: Client) -> None:
    image = _image(1)
    out = grpcclient.InferRequestedOutput("IMAGE")
    result = client.infer("stub", [_input("IMAGE", image, "UINT8")], outputs=[out],
                          request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_name == "stub"
    assert response.model_version == "1"


def test_synthetic_values(client: Client) -> None:
    x = np.arange(48, dtype=np.float32).reshape(3, 16)
    result = client.infer("synthetic", [_input("INPUT", x, "FP32")], model_version="1")
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x * 2 + 1)


def test_large_tensors_pass_grpc_default_limits(client: Client) -> None:
    image = _image(3, 1500, 1500)  # 6.75 MB each way: past grpc's 4 MB default
    result = client.infer("stub", [_input("IMAGE", image, "UINT8")])
    np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)


def test_typed_contents(gateway: RunningGateway) -> None:
    """Inputs may come as typed ``contents`` (fp32_contents, ...) instead of raw bytes."""
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="synthetic", id="typed")
        x = np.linspace(-4, 4, 32, dtype=np.float32)
        tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=[2, 16])
        tensor.contents.fp32_contents.extend(x.tolist())
        response = stub.ModelInfer(request)
        assert response.id == "typed"
        assert [o.name for o in response.outputs] == ["OUTPUT"]
        out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 16)
        np.testing.assert_allclose(out, x.reshape(2, 16) * 2 + 1)

        request = service_pb2.ModelInferRequest(model_name="stub")
        tensor = request.inputs.add(name="IMAGE", datatype="UINT8", shape=[1, 1, 2, 3])
        tensor.contents.uint_contents.extend([0, 1, 2, 3, 4, 255])
        response = stub.ModelInfer(request)
        assert response.raw_output_contents[0] == bytes([0, 1, 2, 3, 4, 255])

        tensor.contents.uint_contents[5] = 256
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "out of range for UINT8" in str(exc.value.details())

        tensor.contents.ClearField("uint_contents")
        tensor.contents.fp32_contents.extend([0.0] * 6)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UINT8 data goes in contents.uint_contents" in str(exc.value.details())

        tensor.ClearField("contents")
        with pytest.raises(grpc.RpcError) as exc:  # no data at all
            stub.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'IMAGE' has no data" in str(exc.value.details())


def test_async_infer(client: Client) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    xs = [np.full((1, 16), i, dtype=np.float32) for i in range(8)]
    for i, x in enumerate(xs):
        client.async_infer("synthetic", [_input("INPUT", x, "FP32")],
                           callback=lambda result, error: answers.put((result, error)),
                           request_id=f"a{i}")
    seen = {}
    for _ in xs:
        result, error = answers.get(timeout=30)
        assert error is None, error
        assert isinstance(result, grpcclient.InferResult)
        seen[result.get_response().id] = result.as_numpy("OUTPUT")
    for i, x in enumerate(xs):
        np.testing.assert_allclose(seen[f"a{i}"], x * 2 + 1)


def test_stream_many_in_flight_with_an_error(shm_client: Client) -> None:
    client = shm_client
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    execs_before = client.get_inference_statistics("synthetic").model_stats[0].execution_count
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(16):
            x = np.full((1, 16), i, dtype=np.float32)
            client.async_stream_infer("synthetic", [_input("INPUT", x, "FP32")],
                                      request_id=f"s{i}")
            if i == 7:
                bad = np.array([[1]], dtype=np.int32)  # the faulty model raises on X=1
                client.async_stream_infer("faulty", [_input("X", bad, "INT32")],
                                          request_id="bad")
        results, errors = {}, []
        for _ in range(17):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                assert isinstance(result, grpcclient.InferResult)
                results[result.get_response().id] = result.as_numpy("OUTPUT")
        assert len(errors) == 1
        assert "the model refused this input" in str(errors[0])
        assert sorted(results) == sorted(f"s{i}" for i in range(16))
        for i in range(16):
            np.testing.assert_allclose(results[f"s{i}"], np.full((1, 16), i * 2 + 1.0))
        # The stream goes on after an error.
        client.async_stream_infer("synthetic", [_input("INPUT", np.zeros((1, 16), np.float32),
                                                       "FP32")], request_id="after")
        result, error = answers.get(timeout=30)
        assert error is None and result.get_response().id == "after"  # type: ignore[union-attr]
    finally:
        client.stop_stream()
    # They were in flight together: the batcher grouped them.
    execs_after = client.get_inference_statistics("synthetic").model_stats[0].execution_count
    assert execs_after - execs_before < 17


def test_stream_error_carries_the_request_id(gateway: RunningGateway) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ok = service_pb2.ModelInferRequest(model_name="faulty", id="fine")
        ok.inputs.add(name="X", datatype="INT32", shape=[1, 1]).contents.int_contents.append(0)
        bad = service_pb2.ModelInferRequest(model_name="nope", id="lost")
        responses = list(stub.ModelStreamInfer(iter([bad, ok])))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {"fine", "lost"}
    assert "Request for unknown model: 'nope' is not found" in by_id["lost"].error_message
    assert by_id["fine"].error_message == ""
    assert by_id["fine"].infer_response.raw_output_contents[0] == (0).to_bytes(4, "little")


# -- errors ----------------------------------------------------------------------------------


def test_errors_have_codes(client: Client) -> None:
    x = np.zeros((1, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=UNKNOWN_NOPE) as exc:
        client.infer("nope", [_input("INPUT", x, "FP32")])
    assert _code(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="'synthetic' version 9 is not found") as exc:
        client.infer("synthetic", [_input("INPUT", x, "FP32")], model_version="9")
    assert _code(exc) == "StatusCode.NOT_FOUND"

    bad_shape = np.zeros((1, 15), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=r"expected \[-1, 16\]") as exc:
        client.infer("synthetic", [_input("INPUT", bad_shape, "FP32")])
    assert _code(exc) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="expected 'FP32'") as exc:
        client.infer("synthetic", [_input("INPUT", x.astype(np.float64), "FP64")])
    assert _code(exc) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="not an output") as exc:
        client.infer("synthetic", [_input("INPUT", x, "FP32")],
                     outputs=[grpcclient.InferRequestedOutput("NOPE")])
    assert _code(exc) == "StatusCode.INVALID_ARGUMENT"


def test_model_error_is_internal(shm_client: Client) -> None:
    client = shm_client
    one = np.array([[1]], dtype=np.int32)
    with pytest.raises(InferenceServerException, match="the model refused this input") as exc:
        client.infer("faulty", [_input("X", one, "INT32")])
    assert _code(exc) == "StatusCode.INTERNAL"
    # The copy survived its model's error.
    zero = np.array([[0]], dtype=np.int32)
    result = client.infer("faulty", [_input("X", zero, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("Y"), zero)


def test_malformed_request_is_invalid_argument(gateway: RunningGateway) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as exc:
            infer(b"\x0a\xff\xff\xff\x0f")  # a string field longer than the message
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in str(exc.value.details())


def test_client_deadline_leaves_the_server_serving(client: Client) -> None:
    x = np.zeros((1, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("slow", [_input("INPUT", x, "FP32")], client_timeout=0.05)
    assert _code(exc) == "StatusCode.DEADLINE_EXCEEDED"
    result = client.infer("slow", [_input("INPUT", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x * 2 + 1)


def test_timeout_parameter_answers_deadline_exceeded(client: Client) -> None:
    """The v2 ``timeout`` parameter (µs) is the server's own deadline: the client gets
    DEADLINE_EXCEEDED from the server, with the reason, and the server goes on serving."""
    x = np.ones((1, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("slow", [_input("INPUT", x, "FP32")], timeout=20_000)
    assert _code(exc) == "StatusCode.DEADLINE_EXCEEDED"
    assert "did not answer within the request's timeout" in exc.value.message()
    result = client.infer("slow", [_input("INPUT", x, "FP32")], timeout=30_000_000)
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x * 2 + 1)


def test_unsupported_extensions_say_so(client: Client) -> None:
    for call in (
        lambda: client.get_trace_settings(),
        lambda: client.get_log_settings(),
    ):
        with pytest.raises(InferenceServerException, match="not supported") as exc:
            call()
        assert _code(exc) == "StatusCode.UNIMPLEMENTED"


def test_shared_memory_disabled_by_default(client: Client) -> None:
    for call in (
        lambda: client.register_system_shared_memory("r", "/whatever", 64),
        lambda: client.get_system_shared_memory_status(),
        lambda: client.unregister_system_shared_memory(),
    ):
        with pytest.raises(InferenceServerException, match="--allow-client-shm") as exc:
            call()
        assert _code(exc) == "StatusCode.PERMISSION_DENIED"  # as HTTP's 403


# -- system shared memory --------------------------------------------------------------------


@pytest.fixture
def regions() -> Iterator[list[shm.SharedMemoryRegion]]:
    made: list[shm.SharedMemoryRegion] = []
    yield made
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _region(made: list[shm.SharedMemoryRegion], size: int) -> tuple[str, str]:
    name = f"r{uuid.uuid4().hex[:8]}"
    key = f"/grpctest{uuid.uuid4().hex[:8]}"
    made.append(shm.create_shared_memory_region(name, key, size))
    return name, key


def test_shared_memory_round_trip(shm_client: Client,
                                  regions: list[shm.SharedMemoryRegion]) -> None:
    x = np.arange(64, dtype=np.float32).reshape(4, 16)
    in_name, in_key = _region(regions, x.nbytes)
    out_name, out_key = _region(regions, x.nbytes + 128)
    shm.set_shared_memory_region(regions[0], [x])
    shm_client.register_system_shared_memory(in_name, in_key, x.nbytes)
    shm_client.register_system_shared_memory(out_name, out_key, x.nbytes, offset=128)

    status = shm_client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status[in_name] == {"name": in_name, "key": in_key, "byte_size": str(x.nbytes)}
    assert status[out_name]["offset"] == "128"
    one = shm_client.get_system_shared_memory_status(out_name).regions
    assert list(one) == [out_name]

    inp = grpcclient.InferInput("INPUT", [4, 16], "FP32")
    inp.set_shared_memory(in_name, x.nbytes)
    out = grpcclient.InferRequestedOutput("OUTPUT")
    out.set_shared_memory(out_name, x.nbytes)
    result = shm_client.infer("synthetic", [inp], outputs=[out], request_id="in-shm")
    output = result.get_output("OUTPUT")
    assert list(output.shape) == [4, 16]
    assert output.parameters["shared_memory_region"].string_param == out_name
    assert output.parameters["shared_memory_byte_size"].int64_param == x.nbytes
    y = shm.get_contents_as_numpy(regions[1], np.float32, [4, 16], offset=128)
    np.testing.assert_allclose(y, x * 2 + 1)
    assert result.get_response().raw_output_contents == [b""]  # the bytes are in the region

    shm_client.unregister_system_shared_memory(in_name)
    assert list(shm_client.get_system_shared_memory_status().regions) == [out_name]
    with pytest.raises(InferenceServerException, match="no region named") as exc:
        shm_client.get_system_shared_memory_status(in_name)
    assert _code(exc) == "StatusCode.NOT_FOUND"
    shm_client.unregister_system_shared_memory()
    assert len(shm_client.get_system_shared_memory_status().regions) == 0


def test_shared_memory_output_beside_a_raw_one(shm_client: Client,
                                               regions: list[shm.SharedMemoryRegion]) -> None:
    """One output in a region, the next in the response: clients index them in order."""
    image = _image(4, 64, 64)
    name, key = _region(regions, 16 * 4 * 4)
    shm_client.register_system_shared_memory(name, key, 16 * 4 * 4)
    boxes = grpcclient.InferRequestedOutput("BOXES")
    boxes.set_shared_memory(name, 16 * 4 * 4)
    result = shm_client.infer("face", [_input("IMAGE", image, "UINT8")],
                              outputs=[boxes, grpcclient.InferRequestedOutput("COUNT")])
    count = result.as_numpy("COUNT")
    assert count is not None and count.shape == (1, 1)
    got = shm.get_contents_as_numpy(regions[0], np.int32, [1, 16, 4])
    assert (got[0, int(count[0, 0]):] == -1).all()


def _hostile(client: Client, call: object, match: str, secrets: list[str]) -> None:
    with pytest.raises(InferenceServerException, match=match) as exc:
        call()  # type: ignore[operator]
    assert _code(exc) == "StatusCode.INVALID_ARGUMENT"
    text = f"{exc.value.message()} {exc.value}"
    assert "/dev/shm" not in text
    for secret in secrets:
        assert secret not in text


def test_hostile_regions(shm_client: Client, shm_gateway: RunningGateway,
                         regions: list[shm.SharedMemoryRegion]) -> None:
    name, key = _region(regions, 256)
    own = shm_names(shm_gateway.shm_prefix)[0]  # one of the gateway's own segments
    for bad_key, match in (
        ("/../etc/passwd", "key must be"),
        ("/..", "key must be"),
        ("/a/b", "key must be"),
        (f"/{own}", "server's own shared-memory namespace"),
        (f"/{shm_gateway.shm_prefix}-1-x", "server's own shared-memory namespace"),
        ("/grpctest-missing-" + uuid.uuid4().hex, "does not exist"),
    ):
        _hostile(shm_client, lambda k=bad_key: shm_client.register_system_shared_memory(
            "bad", k, 64), match, [bad_key.strip("/"), own])
    _hostile(shm_client, lambda: shm_client.register_system_shared_memory(name, key, 200,
                                                                           offset=100),
             "exceeds the segment's 256 bytes", [key.strip("/")])
    assert len(shm_client.get_system_shared_memory_status().regions) == 0

    # A region shrunk after it was registered fails that request, not the server.
    shm_client.register_system_shared_memory(name, key, 256)
    fd = os.open(f"/dev/shm/{key.lstrip('/')}", os.O_RDWR)
    try:
        os.ftruncate(fd, 64)
    finally:
        os.close(fd)
    inp = grpcclient.InferInput("INPUT", [4, 16], "FP32")
    inp.set_shared_memory(name, 256)
    _hostile(shm_client, lambda: shm_client.infer("synthetic", [inp]),
             "segment is now smaller than registered", [key.strip("/")])
    out = grpcclient.InferRequestedOutput("OUTPUT")
    out.set_shared_memory(name, 256)
    x = np.ones((4, 16), np.float32)
    _hostile(shm_client, lambda: shm_client.infer("synthetic", [_input("INPUT", x, "FP32")],
                                                  outputs=[out]),
             "segment is now smaller than registered", [key.strip("/")])
    unknown = grpcclient.InferInput("INPUT", [4, 16], "FP32")
    unknown.set_shared_memory("never-registered", 256)
    _hostile(shm_client, lambda: shm_client.infer("synthetic", [unknown]),
             "no region named 'never-registered'", [])
    small = grpcclient.InferInput("INPUT", [4, 16], "FP32")
    small.set_shared_memory(name, 128)
    _hostile(shm_client, lambda: shm_client.infer("synthetic", [small]),
             "shared_memory_byte_size is 128, the tensor takes 256", [key.strip("/")])

    # The gateway and its worker still serve.
    result = shm_client.infer("synthetic", [_input("INPUT", x, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x * 2 + 1)
    assert shm_client.is_model_ready("synthetic")


# -- the model repository --------------------------------------------------------------------


ADMIN_TOKEN = "s3cret-admin"
HAS_ADMIN_TOKEN = "admin_token" in {f.name for f in fields(Settings)}


@pytest.fixture
def repo_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    """A gateway of this test's own: unloading models would disturb the others."""
    extra = ("--admin-token", ADMIN_TOKEN) if HAS_ADMIN_TOKEN else ()
    gw = start_gateway(tmp_path, TEST_MODELS, *extra)
    try:
        yield gw
    finally:
        stop_cleanly(gw)


def test_repository_load_unload(repo_gateway: RunningGateway) -> None:
    client = connect(repo_gateway)
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        if HAS_ADMIN_TOKEN:  # management RPCs need the admin token, as over HTTP
            for call in (lambda: client.get_model_repository_index(),
                         lambda: client.unload_model("stub"),
                         lambda: client.load_model("stub", headers={"authorization": "Bearer x"})):
                with pytest.raises(InferenceServerException, match="admin token") as exc:
                    call()
                assert _code(exc) == "StatusCode.UNAUTHENTICATED"
            assert client.is_model_ready("stub")

        index = {m.name: m for m in client.get_model_repository_index(headers=admin).models}
        assert index["stub"].state == "READY"
        assert index["stub"].version == "1"

        client.unload_model("stub", headers=admin)
        assert not client.is_model_ready("stub")
        index = {m.name: m for m in client.get_model_repository_index(headers=admin).models}
        assert index["stub"].state == "UNAVAILABLE"
        image = _image(5)
        with pytest.raises(InferenceServerException, match="not loaded") as exc:
            client.infer("stub", [_input("IMAGE", image, "UINT8")])
        assert _code(exc) in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
        assert client.is_model_ready("synthetic")  # the others are untouched

        client.load_model("stub", headers=admin)
        assert client.is_model_ready("stub")
        result = client.infer("stub", [_input("IMAGE", image, "UINT8")])
        np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)

        with pytest.raises(InferenceServerException, match="failed to load 'nope'") as exc:
            client.load_model("nope", headers=admin)
        assert _code(exc) == "StatusCode.NOT_FOUND"
        client.load_model("stub", headers=admin, config='{"max_batch_size": 2}')
        assert client.get_model_config("stub").config.max_batch_size == 2
        with pytest.raises(InferenceServerException, match="not supported") as exc:
            client.load_model("stub", headers=admin, files={"file:1/model.py": b"x"})
        assert _code(exc) == "StatusCode.INVALID_ARGUMENT"
        client.load_model("stub", headers=admin)  # back to the declaration
        assert client.get_model_config("stub").config.max_batch_size == 8
    finally:
        client.close()


def test_shutdown_ends_open_streams(tmp_path: Path) -> None:
    """SIGTERM: an open stream is told the server is going, and the gateway exits cleanly."""
    gw = start_gateway(tmp_path)
    try:
        client = connect(gw)
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        x = np.ones((1, 16), np.float32)
        client.async_stream_infer("synthetic", [_input("INPUT", x, "FP32")], request_id="x")
        result, error = answers.get(timeout=30)
        assert error is None
        gw.process.send_signal(signal.SIGTERM)
        result, error = answers.get(timeout=30)
        assert result is None
        assert "the server is shutting down" in str(error)
        client.stop_stream()
        client.close()
        assert gw.process.wait(timeout=30) == 0
    finally:
        stop_cleanly(gw)
