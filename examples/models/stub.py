"""The stub model: returns its input unchanged.

Input ``IMAGE`` (UINT8, per-item shape ``[-1, -1, 3]``), output ``IMAGE`` = the same array.
It does no work at all, so a benchmark against it measures the serving path alone.
"""

from __future__ import annotations

import numpy as np


class Identity:
    """``IMAGE -> IMAGE``, unchanged."""

    def __init__(self, device: str) -> None:
        self.device = device

    def predict(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
    ) -> dict[str, np.ndarray]:
        # The input array itself: the worker copies outputs into shared memory, and this
        # model keeps no reference to it once predict returns.
        return {"IMAGE": inputs["IMAGE"]}
