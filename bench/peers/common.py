"""What every peer does with a model: build it from its entrypoint, call it on one batch, and
split the answer per request. Imported by the peers' processes: numpy and stdlib only."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np


def build(entrypoint: str, parameters: dict[str, Any]) -> Any:
    module, _, cls = entrypoint.partition(":")
    return getattr(importlib.import_module(module), cls)("cpu", **parameters)


def run_batch(model: Any, per_request: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Concatenate the requests' inputs along the batch axis, call ``predict`` once, split."""
    sizes = [len(next(iter(r.values()))) for r in per_request]
    if len(per_request) == 1:
        batch = per_request[0]
    else:
        batch = {k: np.concatenate([r[k] for r in per_request]) for k in per_request[0]}
    out = model.predict(batch, {})
    answers, start = [], 0
    for n in sizes:
        answers.append({k: v[start:start + n] for k, v in out.items()})
        start += n
    return answers
