"""GPU discovery and where each copy of a model runs. Placement is I/O-free."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Placement:
    device: str  # "cpu" or "cuda:N" as the model sees it
    visible_devices: str  # CUDA_VISIBLE_DEVICES for the copy ("" hides every GPU)
    gpu: int | None


def discover_gpus(override: str | None = None) -> list[int]:
    """GPU indices: ``override`` ("0,1,3", or "" for none) wins; else ``nvidia-smi -L``."""
    if override is not None:
        return [int(g) for g in override.split(",") if g.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def place(run_on_gpu: bool, copies: int, gpus: list[int]) -> list[Placement]:
    """One copy per GPU for a GPU model (the Inferoxy rule); ``copies`` CPU copies otherwise.

    A GPU model on a host without GPUs runs ``copies`` copies on the CPU.
    """
    if run_on_gpu and gpus:
        # Each copy sees only its GPU, so inside the copy it is always device 0.
        return [Placement("cuda:0", str(g), g) for g in gpus]
    return [Placement("cpu", "", None) for _ in range(copies)]


def env_for(placement: Placement) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = placement.visible_devices
    return env
