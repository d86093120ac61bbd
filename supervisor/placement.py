"""Where each copy of a model runs. I/O-free (discovery is ``supervisor.gpus``).

Rules
-----
* A GPU model gets at most one copy per GPU (the Inferoxy rule); each copy sees only its
  GPU (``CUDA_VISIBLE_DEVICES``), so inside the copy it is always ``cuda:0``.
* A new copy of a GPU model goes to a GPU that holds no copy of that model, the one with the
  fewest copies of any model; ties go to the lowest index. No such GPU: no copy.
* Simulated GPUs are placed the same way, but the copy's device is ``cpu``.
* CPU models (and GPU models on a host without GPUs) run copies on the CPU, by count.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from supervisor.gpus import discover_gpus

__all__ = ["Placement", "discover_gpus", "env_for", "next_placement", "place"]


@dataclass(frozen=True, slots=True)
class Placement:
    device: str  # "cpu" or "cuda:N" as the model sees it
    visible_devices: str  # CUDA_VISIBLE_DEVICES for the copy ("" hides every GPU)
    gpu: int | None


CPU = Placement("cpu", "", None)


def _on_gpu(gpu: int, simulated: bool) -> Placement:
    return Placement("cpu" if simulated else "cuda:0", str(gpu), gpu)


def place(run_on_gpu: bool, copies: int, gpus: list[int],
          simulated: bool = False) -> list[Placement]:
    """One copy per GPU for a GPU model (the Inferoxy rule); ``copies`` CPU copies otherwise.

    A GPU model on a host without GPUs runs ``copies`` copies on the CPU.
    """
    if run_on_gpu and gpus:
        return [_on_gpu(g, simulated) for g in gpus]
    return [CPU for _ in range(copies)]


def next_placement(run_on_gpu: bool, gpus: list[int], model_gpus: Iterable[int | None],
                   all_gpus: Iterable[int | None], simulated: bool = False) -> Placement | None:
    """Where one more copy of a model goes, or None when every GPU already has one.

    ``model_gpus``: the GPUs of this model's copies; ``all_gpus``: those of every copy of
    every model (a GPU appears once per copy on it).
    """
    if not (run_on_gpu and gpus):
        return CPU
    taken = set(model_gpus)
    load = {g: 0 for g in gpus}
    for g in all_gpus:
        if g in load:
            load[g] += 1
    free = [g for g in gpus if g not in taken]
    if not free:
        return None
    return _on_gpu(min(free, key=lambda g: (load[g], g)), simulated)


def env_for(placement: Placement) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = placement.visible_devices
    if placement.gpu is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's numbering = NVML's = nvidia-smi's
    return env
