"""The Open Inference Protocol v2 over HTTP, driven by unmodified ``tritonclient.http``."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningGateway

UNKNOWN_NOPE = "Request for unknown model: 'nope' is not found"  # Triton's words


@pytest.fixture
def client(gateway: RunningGateway) -> httpclient.InferenceServerClient:
    c = httpclient.InferenceServerClient(gateway.url)
    yield c
    c.close()


def _image(seed: int = 0, h: int = 32, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, h, w, 3), dtype=np.uint8)


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("stub")
    assert client.is_model_ready("stub", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "inferoxy"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("synthetic")
    assert model["name"] == "synthetic"
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 16]}]
    assert model["outputs"] == [{"name": "OUTPUT", "datatype": "FP32", "shape": [-1, 16]}]


def test_model_config(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("face")
    assert config["name"] == "face"
    assert config["max_batch_size"] == 4
    assert config["input"] == [{"name": "IMAGE", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}]
    assert [o["name"] for o in config["output"]] == ["BOXES", "COUNT"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000


@pytest.mark.parametrize("binary", [False, True])
def test_stub_round_trip(client: httpclient.InferenceServerClient, binary: bool) -> None:
    image = _image(1)
    inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image, binary_data=binary)
    out = httpclient.InferRequestedOutput("IMAGE", binary_data=binary)
    result = client.infer("stub", [inp], outputs=[out], request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "stub"


@pytest.mark.parametrize("binary", [False, True])
def test_synthetic_values(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.arange(48, dtype=np.float32).reshape(3, 16)
    inp = httpclient.InferInput("INPUT", [3, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("synthetic", [inp], model_version="1")
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x * 2 + 1)


def test_binary_output_only(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 16), dtype=np.float32)
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    out = httpclient.InferRequestedOutput("OUTPUT", binary_data=True)
    result = client.infer("synthetic", [inp], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), np.full((1, 16), 3.0))
    assert result.get_output("OUTPUT")["parameters"]["binary_data_size"] == 64


def test_statistics_count_requests(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("stub")["model_stats"][0]
    image = _image(2)
    for _ in range(3):
        inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
        inp.set_data_from_numpy(image)
        client.infer("stub", [inp])
    after = client.get_inference_statistics("stub", "1")["model_stats"][0]
    assert after["name"] == "stub"
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"][
        "count"] == 3
    assert after["execution_count"] > before["execution_count"]
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"stub", "synthetic", "face", "faulty", "slow"}


def test_face_detector_finds_the_astronaut(client: httpclient.InferenceServerClient) -> None:
    from skimage.data import astronaut

    image = astronaut()[None]  # 1 x 512 x 512 x 3, RGB
    inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image, binary_data=True)
    result = client.infer("face", [inp])
    count = int(result.as_numpy("COUNT")[0, 0])
    boxes = result.as_numpy("BOXES")[0]
    assert count == 1
    x, y, w, h = boxes[0]
    assert 165 <= x and x + w <= 285 and 50 <= y and y + h <= 175
    assert (boxes[1:] == -1).all()


def test_unknown_model_is_404(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("X", [1, 1], "INT32")
    inp.set_data_from_numpy(np.zeros((1, 1), np.int32))
    with pytest.raises(InferenceServerException, match=UNKNOWN_NOPE) as exc:
        client.infer("nope", [inp])
    assert exc.value.status() == "404"
    with pytest.raises(InferenceServerException, match="'faulty' version 9 is not found"):
        client.infer("faulty", [inp], model_version="9")
