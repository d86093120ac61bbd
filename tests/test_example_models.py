"""The example models, called directly (no gateway), and the models.yaml that declares them."""

from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from examples.models.face_detector import MAX_FACES, FaceDetector
from examples.models.stub import Identity
from examples.models.synthetic import Synthetic

MODELS_YAML = Path(__file__).resolve().parent.parent / "examples" / "models.yaml"
DTYPES = {"UINT8": np.uint8, "INT32": np.int32, "FP32": np.float32, "BYTES": np.object_}

# Where the face is in skimage.data.astronaut() (512x512), judged by eye: the detector's box
# must lie within it and be about face-sized. OpenCV 4.14 finds (177, 67, 93, 93).
FACE_X = (165, 285)
FACE_Y = (50, 175)


def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut())


@pytest.fixture(scope="module")
def face_detector() -> FaceDetector:
    return FaceDetector("cpu")


def load_models() -> dict[str, dict]:
    with MODELS_YAML.open() as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict) and isinstance(config.get("models"), dict)
    return config["models"]


def load_class(entrypoint: str) -> type:
    module_name, _, class_name = entrypoint.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


# --- stub ---------------------------------------------------------------------------------


def test_stub_returns_its_input() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    outputs = Identity("cpu").predict({"IMAGE": images}, {})
    assert list(outputs) == ["IMAGE"]
    assert outputs["IMAGE"] is images


# --- synthetic ----------------------------------------------------------------------------


def test_synthetic_output_is_input_times_two_plus_one() -> None:
    x = np.arange(3 * 16, dtype=np.float32).reshape(3, 16) - 7.5
    outputs = Synthetic("cpu", a_ms=0.0, b_ms=0.0).predict({"INPUT": x}, {})
    assert list(outputs) == ["OUTPUT"]
    assert outputs["OUTPUT"].dtype == np.float32
    assert outputs["OUTPUT"].shape == (3, 16)
    np.testing.assert_array_equal(outputs["OUTPUT"], x * 2 + 1)
    np.testing.assert_array_equal(x, np.arange(3 * 16, dtype=np.float32).reshape(3, 16) - 7.5)


def test_synthetic_batch_costs_a_plus_b_per_row() -> None:
    model = Synthetic("cpu", a_ms=0.0, b_ms=2.0)
    assert model.cost_ms(8) == 16.0
    x = np.zeros((8, 16), dtype=np.float32)
    start = time.perf_counter()
    model.predict({"INPUT": x}, {})
    elapsed_ms = (time.perf_counter() - start) * 1000
    assert elapsed_ms >= 16.0 - 0.1  # a lower bound: the model's contract, not a benchmark


def test_synthetic_reads_its_costs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNTHETIC_A_MS", raising=False)
    monkeypatch.delenv("SYNTHETIC_B_MS", raising=False)
    assert Synthetic("cpu").cost_ms(10) == 5.0 + 1.0 * 10
    monkeypatch.setenv("SYNTHETIC_A_MS", "3")
    monkeypatch.setenv("SYNTHETIC_B_MS", "0.5")
    assert Synthetic("cpu").cost_ms(10) == 3.0 + 0.5 * 10
    assert Synthetic("cpu", a_ms=1.0, b_ms=0.0).cost_ms(10) == 1.0  # arguments win
    monkeypatch.setenv("SYNTHETIC_A_MS", "fast")
    with pytest.raises(ValueError, match="SYNTHETIC_A_MS"):
        Synthetic("cpu")


def test_synthetic_rejects_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="INPUT"):
        Synthetic("cpu", a_ms=0.0, b_ms=0.0).predict({"INPUT": np.zeros((2, 8), np.float32)}, {})


# --- face detector ------------------------------------------------------------------------


def test_face_detector_finds_the_astronauts_face(face_detector: FaceDetector) -> None:
    outputs = face_detector.predict({"IMAGE": astronaut()[np.newaxis]}, {})
    assert outputs["COUNT"].dtype == np.int32 and outputs["COUNT"].shape == (1, 1)
    assert outputs["BOXES"].dtype == np.int32 and outputs["BOXES"].shape == (1, MAX_FACES, 4)
    assert outputs["COUNT"][0, 0] == 1
    x, y, w, h = outputs["BOXES"][0, 0].tolist()
    assert FACE_X[0] <= x and x + w <= FACE_X[1], (x, y, w, h)
    assert FACE_Y[0] <= y and y + h <= FACE_Y[1], (x, y, w, h)
    assert 60 <= w <= 120 and 60 <= h <= 120, (x, y, w, h)


def test_face_detector_batch_of_face_and_blank(face_detector: FaceDetector) -> None:
    face = astronaut()
    batch = np.stack([face, np.zeros_like(face)])
    batch.flags.writeable = False  # like a view into shared memory the model must not touch
    outputs = face_detector.predict({"IMAGE": batch}, {})
    boxes, count = outputs["BOXES"], outputs["COUNT"]
    assert boxes.shape == (2, MAX_FACES, 4) and count.shape == (2, 1)
    assert count[:, 0].tolist() == [1, 0]
    assert (boxes[0, 0] >= 0).all() and (boxes[0, 0, 2:] > 0).all()
    assert (boxes[0, 1:] == -1).all()  # padding past the one face
    assert (boxes[1] == -1).all()  # no face at all
    np.testing.assert_array_equal(batch[0], face)


def test_face_detector_handles_an_empty_batch(face_detector: FaceDetector) -> None:
    outputs = face_detector.predict({"IMAGE": np.zeros((0, 40, 40, 3), np.uint8)}, {})
    assert outputs["BOXES"].shape == (0, MAX_FACES, 4)
    assert outputs["COUNT"].shape == (0, 1)


def test_face_detector_rejects_a_grayscale_batch(face_detector: FaceDetector) -> None:
    with pytest.raises(ValueError, match="IMAGE"):
        face_detector.predict({"IMAGE": np.zeros((1, 40, 40), np.uint8)}, {})


def test_face_detector_says_clearly_when_the_cascade_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cv2_data = pytest.importorskip("cv2.data")
    monkeypatch.setattr(cv2_data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(RuntimeError, match=r"haarcascade_frontalface_default\.xml"):
        FaceDetector("cpu")


# --- models.yaml --------------------------------------------------------------------------


def test_models_yaml_declares_the_examples() -> None:
    models = load_models()
    assert set(models) == {"stub", "synthetic", "face", "running_sum", "face_files",
                           "face_stream"}
    for name, spec in models.items():
        assert isinstance(spec["entrypoint"], str) and ":" in spec["entrypoint"], name
        assert isinstance(spec["address"], str), name
        assert isinstance(spec["batch_size"], int) and spec["batch_size"] >= 1, name
        assert isinstance(spec["max_queue_delay_us"], int), name
        assert isinstance(spec["run_on_gpu"], bool), name
        assert isinstance(spec["stateless"], bool), name
        assert isinstance(spec["copies"], int) and spec["copies"] >= 1, name
        for tensor in [*spec["inputs"], *spec["outputs"]]:
            assert set(tensor) == {"name", "datatype", "shape"}, name
            assert tensor["datatype"] in DTYPES, name
    assert models["synthetic"]["run_on_gpu"] is True
    assert models["synthetic"]["parameters"] == {"a_ms": 5.0, "b_ms": 1.0}


@pytest.mark.parametrize("name", ["stub", "synthetic", "face"])
def test_models_yaml_entrypoint_imports_and_takes_its_parameters(name: str) -> None:
    spec = load_models()[name]
    cls = load_class(spec["entrypoint"])
    assert inspect.isclass(cls)
    assert callable(getattr(cls, "predict", None))
    inspect.signature(cls).bind("cpu", **spec.get("parameters", {}))


@pytest.mark.parametrize("name", ["stub", "synthetic", "face"])
def test_models_yaml_declarations_match_what_the_models_return(name: str) -> None:
    spec = load_models()[name]
    model = load_class(spec["entrypoint"])("cpu", **spec.get("parameters", {}))
    batch = 2
    inputs = {
        t["name"]: np.zeros(
            [batch, *(48 if d == -1 else d for d in t["shape"])], DTYPES[t["datatype"]]
        )
        for t in spec["inputs"]
    }
    outputs = model.predict(inputs, {})
    assert set(outputs) == {t["name"] for t in spec["outputs"]}
    for t in spec["outputs"]:
        out = outputs[t["name"]]
        assert out.dtype == DTYPES[t["datatype"]], t
        assert out.shape[0] == batch, t
        assert len(out.shape) == len(t["shape"]) + 1, t
        for got, declared in zip(out.shape[1:], t["shape"], strict=True):
            assert declared == -1 or got == declared, t
