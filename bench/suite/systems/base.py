"""The contract every server adapter keeps.

``System.start(ctx, stack)`` starts the server on ``ctx.models`` (the same names, tensors,
batch sizes, delays and copies for every system), registers its shutdown on ``stack`` (one
owner per process: ``procs.owned``), waits until every model answers ready, and returns a
``Running``: where it listens, the pid whose process tree is the server (for CPU), and what it
offers. ``offers`` lists the scenario paths the system speaks; a scenario a system cannot run
is skipped for it, with the reason in the report.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.suite.procs import Pinning
from bench.suite.scenario import Model

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class StartContext:
    models: tuple[Model, ...]
    work: Path  # this system's own directory under the run's (configs, logs)
    pinning: Pinning
    startup_timeout_s: float = 180.0
    extra_args: tuple[str, ...] = ()  # appended to the server's command line (Inferoxy only)


@dataclass
class Running:
    name: str
    pid: int  # root of the server's process tree (CPU accounting)
    http: str | None = None  # host:port
    grpc: str | None = None  # host:port
    zmq: str | None = None  # tcp://host:port
    metrics: str | None = None  # http://host:port (Prometheus)
    v2_stats: bool = False  # serves /v2/models/<m>/stats (latency breakdown)
    version: str = ""
    command: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class System(Protocol):
    name: str
    offers: tuple[str, ...]

    def available(self) -> str | None:
        """None if the system can start here, else why not (e.g. its venv is missing)."""

    def start(self, ctx: StartContext, stack: contextlib.ExitStack) -> Running: ...


def venv_python(name: str) -> Path:
    """The interpreter of a peer's own virtual environment (``make bench-peers``)."""
    base = Path(os.environ.get(f"INFEROXY_BENCH_{name.upper()}_VENV",
                               ROOT / f".venv-bench-{name}"))
    return base / "bin" / "python"


def missing_venv(name: str) -> str | None:
    python = venv_python(name)
    if not python.exists():
        return f"{python.parent.parent} is missing: run `make bench-peers`"
    return None


def base_env(extra_path: list[str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(extra_path or []), str(ROOT)])
    env.pop("VIRTUAL_ENV", None)
    return env


def main_python() -> str:
    return sys.executable
