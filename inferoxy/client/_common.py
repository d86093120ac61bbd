"""What every transport shares: the arrays' shape of a call, timeouts, rows split into
requests, and the two transport interfaces (blocking, Trio)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

Arrays = dict[str, np.ndarray]
DEFAULT_WAIT_S = 120.0  # how long a call waits for its answer when it sets no timeout
WAIT_MARGIN_S = 5.0  # beyond a request's own timeout, for the answer to travel


def host_port(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def wait_s_for(timeout: float | None, default: float) -> float:
    return default if timeout is None else timeout + WAIT_MARGIN_S


def timeout_us(timeout: float | None) -> int | None:
    if timeout is None:
        return None
    if timeout <= 0:
        raise ValueError("timeout must be positive (seconds)")
    return max(1, round(timeout * 1e6))


def row_slices(inputs: Mapping[str, np.ndarray], rows_per_request: int) -> list[slice]:
    if rows_per_request < 1:
        raise ValueError("rows_per_request must be at least 1")
    counts = {np.shape(a)[0] if np.ndim(a) else 0 for a in inputs.values()}
    if len(counts) != 1:
        raise ValueError(f"all inputs must have the same number of rows, got {sorted(counts)}")
    rows = counts.pop()
    if rows == 0:
        raise ValueError("inputs have no rows")
    return [slice(i, min(i + rows_per_request, rows)) for i in range(0, rows, rows_per_request)]


def concat(parts: list[Arrays]) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class Transport(Protocol):
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays: ...

    def close(self) -> None: ...


def version_text(version: str | int | None) -> str | None:
    return None if version is None else str(version)


class AsyncTransport(Protocol):
    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
                    timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays: ...
