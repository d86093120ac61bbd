"""A model written for the original Inferoxy: ``predict_batch(samples, draw)`` and ``init()``.

Served through ``worker.legacy:LegacyModel``; the Docker tests put it at ``/app/model.py``.
"""

import numpy as np

STATE: dict[str, bool] = {}


def init() -> None:
    STATE["ready"] = True


def predict_batch(samples, draw=False):
    if not STATE.get("ready"):
        raise RuntimeError("init() was not called")
    results = []
    for sample in samples:
        image = sample["image"]
        results.append({
            "prediction": {
                "mean": float(image.mean()),
                "shape": list(image.shape),
                "label": np.int64(7),
                "draw": draw,
                "meta": sorted(sample["meta"]),
            },
            "image": 255 - image if draw else image,
        })
    return results
