"""A model written for the original Inferoxy: ``init()`` and ``predict_batch(samples, draw)``.

It rates each image's brightness and, asked to draw, returns the image in grey. It is kept as
such a model was written (no type hints, module state set by ``init``); the worker serves it
through ``worker.legacy:LegacyModel``.
"""

import numpy as np

WEIGHTS = {}


def init():
    # An original model loaded its weights here, once, before the first batch.
    WEIGHTS["luma"] = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def predict_batch(samples, draw=False):
    results = []
    for sample in samples:
        image = sample["image"]
        luma = image.astype(np.float32) @ WEIGHTS["luma"]
        brightness = float(luma.mean()) / 255.0
        result = {"prediction": {"brightness": round(brightness, 4),
                                 "label": "dark" if brightness < 0.5 else "bright"}}
        if draw:
            result["image"] = np.repeat(luma.round().astype(np.uint8)[..., None], 3, axis=2)
        results.append(result)
    return results
