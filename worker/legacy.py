"""Models written for the original Inferoxy, served as they are.

An original Inferoxy model image has ``/app/model.py`` exporting ``predict_batch(samples)``
and, optionally, ``init()``. ``samples`` is a list of dicts with an ``image`` (an RGB
``uint8`` array, H x W x 3); it returns one dict per sample with a ``prediction`` (anything
JSON can encode: dicts, lists, numbers, numpy scalars and arrays) and an ``image`` (the
drawing, ``uint8`` H x W x 3). Rebuilding such an image ``FROM`` Inferoxy's worker base image
(``worker/Dockerfile``) and declaring it with this adapter is all a move takes::

    face:
      entrypoint: worker.legacy:LegacyModel
      address: registry.example.com/models/face:v5
      parameters: {path: /app/model.py}       # the default
      inputs:
        - {name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}
      outputs:
        - {name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}
        - {name: PREDICTION, datatype: UINT8, shape: [-1]}

Tensors
-------
``IMAGE`` in: a batch of images of one size. ``IMAGE`` out: each sample's drawing (the
input image when a result has none); every drawing of a batch must have one shape.
``PREDICTION`` out: each sample's prediction as UTF-8 JSON bytes in a ``UINT8`` vector.
Rows of a batch are one length, so shorter documents are padded with NUL bytes — decode
with ``json.loads(bytes(row).rstrip(b"\\0"))`` (JSON text never contains a raw NUL).
A model that needs no drawing can leave ``IMAGE`` out of its declared outputs.

Behaviour kept from the original runner: the model file's directory is put on ``sys.path``
(so it can import its neighbours), ``init()`` runs once before the first batch, and
``predict_batch`` is called with ``draw=True`` when it accepts a ``draw`` argument. Each
sample also carries ``meta``: the request's parameters. The images are views of shared
memory valid during the call: a model that keeps one past the call must copy it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

DEFAULT_PATH = "/app/model.py"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"prediction holds a {type(value).__name__}, which JSON cannot encode")


def encode_predictions(predictions: list[Any]) -> np.ndarray:
    """One row per prediction: its UTF-8 JSON, NUL-padded to the longest. ``uint8 (N, L)``."""
    docs = [json.dumps(p, default=_jsonable, separators=(",", ":")).encode() for p in predictions]
    width = max((len(d) for d in docs), default=0)
    out = np.zeros((len(docs), width), dtype=np.uint8)
    for row, doc in zip(out, docs, strict=True):
        row[: len(doc)] = np.frombuffer(doc, dtype=np.uint8)
    return out


def decode_prediction(row: np.ndarray | bytes) -> Any:
    """The prediction one ``PREDICTION`` row holds."""
    return json.loads(bytes(row).rstrip(b"\0"))


def load_module(path: str) -> ModuleType:
    """Import the model file at ``path`` as module ``model`` (the original runner's name)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"legacy model file {path} does not exist")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("model", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "predict_batch", None)):
        raise ImportError(f"{path} has no predict_batch(samples) function")
    return module


class LegacyModel:
    """``worker.legacy:LegacyModel``: an original Inferoxy ``model.py`` as a worker model."""

    def __init__(self, device: str, path: str = DEFAULT_PATH, input: str = "IMAGE") -> None:
        self.device = device
        self.input = input
        self.module = load_module(path)
        self.predict_batch = self.module.predict_batch
        try:
            params = inspect.signature(self.predict_batch).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self.pass_draw = "draw" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )
        init = getattr(self.module, "init", None)
        if callable(init):
            init()

    def predict(self, inputs: dict[str, np.ndarray],
                parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        images = inputs[self.input]
        meta = dict(parameters)
        samples = [{"image": image, "meta": meta} for image in images]
        results = (self.predict_batch(samples, draw=True) if self.pass_draw
                   else self.predict_batch(samples))
        results = list(results)
        if len(results) != len(samples):
            raise ValueError(
                f"predict_batch returned {len(results)} results for {len(samples)} samples"
            )
        drawings = []
        for i, result in enumerate(results):
            if not isinstance(result, dict):
                raise ValueError(f"predict_batch result {i} is a {type(result).__name__}, "
                                 "expected a dict with 'prediction' and 'image'")
            image = result.get("image")
            drawings.append(images[i] if image is None else np.asarray(image, dtype=np.uint8))
        if any(d.shape != drawings[0].shape for d in drawings):
            raise ValueError("predict_batch returned images of different shapes in one batch: "
                             f"{sorted({d.shape for d in drawings})}")
        return {
            "IMAGE": np.stack(drawings),
            "PREDICTION": encode_predictions([r.get("prediction") for r in results]),
        }
