"""The seam between the supervisor and whatever runs a copy (a local process, a container)."""

from __future__ import annotations

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


class RunningCopy(Protocol):
    pid: int | None

    async def wait(self) -> int:
        """Wait for the copy to exit; its exit status."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Runtime(Protocol):
    name: str

    async def start(self, spec: CopySpec) -> RunningCopy: ...
