"""The seam between the supervisor and whatever runs a copy (a local process, a container)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from supervisor.placement import Placement


@dataclass(frozen=True, slots=True)
class CopySpec:
    """Everything a runtime needs to start one copy's worker."""

    copy_id: int
    model: str
    entrypoint: str
    image: str
    parameters: dict[str, Any]
    placement: Placement
    run_dir: str
    shm_prefix: str  # "<prefix>-<gateway pid>": the worker's segments live under it
    heartbeat_s: float
    health_interval_s: float = 5.0  # how often the worker calls the model's health()
    hang_timeout_s: float | None = None  # the model's own; None: the supervisor's
    version: str = ""  # the model version it serves (an attached copy must announce it)


def worker_args(spec: CopySpec) -> list[str]:
    """The ``python -m worker`` arguments of a copy; every runtime passes the same ones."""
    return [
        "--run-dir", spec.run_dir,
        "--copy-id", str(spec.copy_id),
        "--model", spec.model,
        "--entrypoint", spec.entrypoint,
        "--device", spec.placement.device,
        "--parameters", json.dumps(spec.parameters),
        "--shm-prefix", spec.shm_prefix,
        "--heartbeat-s", str(spec.heartbeat_s),
        "--health-interval-s", str(spec.health_interval_s),
    ]


class RunningCopy(Protocol):
    pid: int | None

    async def wait(self) -> int:
        """Wait for the copy to exit; its exit status."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Runtime(Protocol):
    name: str

    async def start(self, spec: CopySpec) -> RunningCopy:
        """Start one copy; ``OSError`` (with a reason fit for users) when it cannot."""
        ...

    async def sweep_orphans(self) -> int:
        """At gateway start: remove copies left by gateways that died; how many."""
        ...

    def progress(self, image: str) -> str:
        """What starting a copy of ``image`` waits for now (an image pull); "" for nothing."""
        ...
