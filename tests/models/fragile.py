"""Models that fail the way real ones do, for the supervision tests.

``Fragile`` (input ``X``, INT32; output ``Y`` = ``X``): ``X[0] == 99`` hangs the batch
(forever, as a deadlocked model would); ``X[0] == 7`` answers, then makes ``health()`` fail.
``CrashAtLoad`` never loads: its constructor raises, as a model whose weights are missing.
"""

from __future__ import annotations

import time

import numpy as np

HANG = 99
SICKEN = 7


class Fragile:
    def __init__(self, device: str) -> None:
        self.device = device
        self.sick = False

    def health(self) -> bool:
        if self.sick:
            raise RuntimeError(f"input {SICKEN} made this copy sick")
        return True

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        x = inputs["X"]
        mode = int(x.flat[0]) if x.size else 0
        if mode == HANG:
            time.sleep(3600)
        if mode == SICKEN:
            self.sick = True
        return {"Y": x.copy()}


class CrashAtLoad:
    def __init__(self, device: str) -> None:
        raise RuntimeError("model weights are missing")

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        raise AssertionError("never loaded")
