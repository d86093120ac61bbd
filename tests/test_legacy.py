"""Models written for the original Inferoxy (``/app/model.py`` with ``predict_batch``), served
through ``worker.legacy:LegacyModel``: called directly, then through a gateway (local runtime).
The Docker tests run the same model file at ``/app/model.py`` inside a container."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import ROOT, RunningGateway, start_gateway
from worker.legacy import LegacyModel, decode_prediction, encode_predictions

LEGACY_MODEL = ROOT / "tests" / "models" / "legacy_model.py"


def images(n: int, h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def legacy_yaml(path: Path, model_file: Path | str | None = None) -> Path:
    parameters = "" if model_file is None else f"\n    parameters: {{path: {model_file}}}"
    path.write_text(f"""
models:
  legacy:
    entrypoint: worker.legacy:LegacyModel
    batch_size: 4
    max_queue_delay_us: 1000{parameters}
    inputs:
      - {{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}}
    outputs:
      - {{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}}
      - {{name: PREDICTION, datatype: UINT8, shape: [-1]}}
""")
    return path


def infer_legacy(url: str, image: np.ndarray, model: str = "legacy") -> tuple[np.ndarray, dict]:
    with httpclient.InferenceServerClient(url) as client:
        inp = httpclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(image[None])
        result = client.infer(model, [inp])
        drawing = result.as_numpy("IMAGE")
        prediction = result.as_numpy("PREDICTION")
    assert drawing is not None and prediction is not None
    assert prediction.dtype == np.uint8 and prediction.shape[0] == 1
    return drawing[0], decode_prediction(prediction[0])


# -- the adapter, called directly ----------------------------------------------------------


def test_adapter_runs_init_and_passes_draw() -> None:
    model = LegacyModel("cpu", path=str(LEGACY_MODEL))
    batch = images(3)
    out = model.predict({"IMAGE": batch}, {"source": "test"})
    assert set(out) == {"IMAGE", "PREDICTION"}
    np.testing.assert_array_equal(out["IMAGE"], 255 - batch)
    assert out["PREDICTION"].dtype == np.uint8 and out["PREDICTION"].shape[0] == 3
    for row, image in zip(out["PREDICTION"], batch, strict=True):
        assert decode_prediction(row) == {
            "mean": float(image.mean()), "shape": [4, 5, 3], "label": 7, "draw": True,
            "meta": ["source"],
        }


def test_adapter_without_draw_and_without_image(tmp_path: Path) -> None:
    model_file = tmp_path / "model.py"
    (tmp_path / "helper.py").write_text("WORD = 'neighbour'\n")
    model_file.write_text(
        "import helper\n"  # the model's own directory is importable, as it was in /app
        "def predict_batch(samples):\n"
        "    return [{'prediction': [helper.WORD, i]} for i, _ in enumerate(samples)]\n"
    )
    batch = images(2)
    out = LegacyModel("cpu", path=str(model_file)).predict({"IMAGE": batch}, {})
    np.testing.assert_array_equal(out["IMAGE"], batch)  # no drawing: the input image
    assert [decode_prediction(r) for r in out["PREDICTION"]] == [["neighbour", 0],
                                                                  ["neighbour", 1]]


def test_predictions_are_nul_padded_json() -> None:
    rows = encode_predictions([{"a": 1}, [1, 2, 3, "long string"], None])
    assert rows.dtype == np.uint8 and rows.shape == (3, len(b'[1,2,3,"long string"]'))
    assert bytes(rows[0]).rstrip(b"\0") == b'{"a":1}'
    assert [decode_prediction(r) for r in rows] == [{"a": 1}, [1, 2, 3, "long string"], None]


def test_bad_models_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LegacyModel("cpu", path=str(tmp_path / "missing.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ImportError, match="no predict_batch"):
        LegacyModel("cpu", path=str(tmp_path / "empty.py"))
    (tmp_path / "short.py").write_text("def predict_batch(samples):\n    return []\n")
    with pytest.raises(ValueError, match="0 results for 2 samples"):
        LegacyModel("cpu", path=str(tmp_path / "short.py")).predict({"IMAGE": images(2)}, {})
    (tmp_path / "odd.py").write_text(
        "def predict_batch(samples):\n    return [{'prediction': object()} for _ in samples]\n")
    with pytest.raises(TypeError, match="JSON cannot encode"):
        LegacyModel("cpu", path=str(tmp_path / "odd.py")).predict({"IMAGE": images(1)}, {})


# -- through a gateway ---------------------------------------------------------------------


@pytest.fixture
def legacy_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path, legacy_yaml(tmp_path / "models.yaml", LEGACY_MODEL))
    yield gw
    gw.cleanup()


def test_legacy_model_through_the_gateway(legacy_gateway: RunningGateway) -> None:
    image = images(1, 6, 8)[0]
    drawing, prediction = infer_legacy(legacy_gateway.url, image)
    np.testing.assert_array_equal(drawing, 255 - image)
    assert prediction["shape"] == [6, 8, 3] and prediction["label"] == 7
    assert prediction["mean"] == pytest.approx(float(image.mean()))
    with httpclient.InferenceServerClient(legacy_gateway.url) as client:
        meta = client.get_model_metadata("legacy")
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "IMAGE": "UINT8", "PREDICTION": "UINT8"}
