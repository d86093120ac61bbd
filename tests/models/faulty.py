"""A model that misbehaves on request, to prove errors reach clients and workers survive.

``X`` values pick the failure: 1 = raise, 2 = wrong output dtype, 3 = wrong batch size,
4 = exit the process (the copy dies mid-batch); anything else = identity.
"""

from __future__ import annotations

import os

import numpy as np


class Faulty:
    def __init__(self, device: str) -> None:
        self.device = device

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        x = inputs["X"]
        mode = int(x.flat[0]) if x.size else 0
        if mode == 1:
            raise ValueError("the model refused this input")
        if mode == 2:
            return {"Y": x.astype(np.float64)}
        if mode == 3:
            return {"Y": np.concatenate([x, x])}
        if mode == 4:
            os._exit(7)
        return {"Y": x.copy()}
