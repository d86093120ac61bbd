"""A model whose answer says which declaration served it: ``Y = X * factor``.

Versions and replacements of one model differ in ``factor`` (its ``parameters``), so a test
sees which one answered. ``load_s`` makes loading slow (a new version that takes a while to
get ready).
"""

from __future__ import annotations

import time

import numpy as np


class Scaled:
    def __init__(self, device: str, factor: float = 1.0, load_s: float = 0.0) -> None:
        self.device = device
        self.factor = float(factor)
        time.sleep(float(load_s))

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        return {"Y": np.multiply(inputs["X"], self.factor, dtype=np.float32)}
