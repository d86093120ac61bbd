"""A synthetic GPU-like model: a batch of ``n`` rows costs ``a + b*n`` milliseconds.

The cost is spent in ``time.sleep``, so it takes no CPU, the way a GPU kernel leaves the host
free. That makes it the model to measure batching with: a fixed per-batch cost ``a`` rewards
larger batches, a per-row cost ``b`` bounds what they gain.

``a`` and ``b`` come from the constructor's ``a_ms`` / ``b_ms`` keyword arguments (in
``models.yaml``: the model's ``parameters``) or, when those are not given, from the environment
variables ``SYNTHETIC_A_MS`` (default 5.0) and ``SYNTHETIC_B_MS`` (default 1.0).

Input ``INPUT`` (FP32, per-item shape ``[16]``); output ``OUTPUT = INPUT * 2 + 1`` (FP32).
"""

from __future__ import annotations

import os
import time

import numpy as np

DEFAULT_A_MS = 5.0
DEFAULT_B_MS = 1.0


def _setting(value: float | None, env_var: str, default: float) -> float:
    if value is None:
        raw = os.environ.get(env_var)
        try:
            value = default if raw is None or raw == "" else float(raw)
        except ValueError:
            raise ValueError(f"{env_var} must be a number of milliseconds, got {raw!r}") from None
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{env_var.lower()} must be >= 0 milliseconds, got {value}")
    return value


class Synthetic:
    """``OUTPUT = INPUT * 2 + 1`` after sleeping ``a_ms + b_ms * batch_size`` milliseconds."""

    def __init__(self, device: str, a_ms: float | None = None, b_ms: float | None = None) -> None:
        self.device = device
        self.a_ms = _setting(a_ms, "SYNTHETIC_A_MS", DEFAULT_A_MS)
        self.b_ms = _setting(b_ms, "SYNTHETIC_B_MS", DEFAULT_B_MS)

    def cost_ms(self, batch_size: int) -> float:
        """What one batch of ``batch_size`` rows costs, in milliseconds."""
        return self.a_ms + self.b_ms * batch_size

    def predict(
        self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
    ) -> dict[str, np.ndarray]:
        x = inputs["INPUT"]
        if x.ndim != 2 or x.shape[1] != 16:
            raise ValueError(f"INPUT must have shape [batch, 16], got {list(x.shape)}")
        time.sleep(self.cost_ms(x.shape[0]) / 1000.0)
        out = np.multiply(x, 2, dtype=np.float32)
        out += 1
        return {"OUTPUT": out}
