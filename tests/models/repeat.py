"""A decoupled model: for a request asking ``N`` (INT32 ``[1]``) it yields ``N`` responses,
``INDEX`` (INT32 ``[1]``: 0..N-1) and ``WORD`` (BYTES ``[1]``: ``b"word-<i>"``). A negative
``N`` raises after the first response (a model failing mid-stream)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class Repeat:
    def __init__(self, device: str) -> None:
        self.device = device

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> Iterator[dict[str, np.ndarray]]:
        n = int(inputs["N"].reshape(-1)[0])
        for i in range(abs(n)):
            if n < 0 and i == 1:
                raise ValueError("asked to fail after one response")
            yield {"INDEX": np.array([[i]], np.int32),
                   "WORD": np.array([[f"word-{i}".encode()]], dtype=object)}
