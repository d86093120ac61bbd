"""The stub model: returns its inputs unchanged.

In ``examples/models.yaml`` it serves ``IMAGE`` (UINT8, per-item shape ``[-1, -1, 3]``) ->
``IMAGE``; it echoes whatever inputs a declaration gives it, each as the output of the same
name. It does no work at all, so a benchmark against it measures the serving path alone.
"""

from __future__ import annotations

import numpy as np


class Identity:
    """Every input, unchanged, as the output of the same name."""

    def __init__(self, device: str) -> None:
        self.device = device

    def predict(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
    ) -> dict[str, np.ndarray]:
        # The input arrays themselves: the worker copies outputs into shared memory, and this
        # model keeps no reference to them once predict returns.
        return dict(inputs)
