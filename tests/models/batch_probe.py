"""A model that tells each request which ``predict`` call served it, and with how many rows.

``Y = X * 2``; ``CALL`` is the number of the ``predict`` call (1, 2, ...) and ``ROWS`` the
rows that call ran, on every row. Each call takes ``delay_ms``, so batches queue up behind
it. Tests use it to see batches from several data-plane processes run as one.
"""

from __future__ import annotations

import time

import numpy as np


class BatchProbe:
    def __init__(self, device: str, delay_ms: float = 30.0) -> None:
        self.delay_s = delay_ms / 1000
        self.calls = 0

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        self.calls += 1
        x = inputs["X"]
        rows = x.shape[0]
        time.sleep(self.delay_s)
        return {"Y": x * 2, "CALL": np.full((rows, 1), self.calls, dtype=np.int64),
                "ROWS": np.full((rows, 1), rows, dtype=np.int64)}
