"""A model of BYTES tensors: what a string model does with them, and what it was given.

``TEXT`` (BYTES, per row ``[-1]``) in; out: ``UPPER`` (BYTES, each element upper-cased),
``LENGTHS`` (INT32, each element's length in bytes). It refuses anything but a numpy object
array of ``bytes`` — the form the gateway promises models.
"""

from __future__ import annotations

import numpy as np


class Strings:
    def __init__(self, device: str) -> None:
        self.device = device

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        text = inputs["TEXT"]
        if text.dtype != object or not all(type(x) is bytes for x in text.reshape(-1)):
            raise TypeError(f"TEXT must be an object array of bytes, got {text.dtype}")
        upper = np.empty(text.shape, dtype=object)
        upper.reshape(-1)[:] = [x.upper() for x in text.reshape(-1)]
        lengths = np.vectorize(len, otypes=[np.int32])(text) if text.size else np.zeros(
            text.shape, np.int32)
        return {"UPPER": upper, "LENGTHS": lengths}
