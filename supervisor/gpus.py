"""GPU discovery: NVML (``nvidia-ml-py``), an explicit list, or simulated devices.

Rules
-----
* ``--simulate-gpus N`` (N > 0) wins: N fake GPUs ``0 .. N-1``. Copies of GPU models are
  placed on them as on real ones (one copy of a model per GPU, ``CUDA_VISIBLE_DEVICES`` set)
  but run on the CPU. For tests and for trying placement and autoscaling on a laptop.
* ``--gpus 0,1,3`` lists the GPU indices to use (``''``: none). No NVML call is made.
* Otherwise NVML is asked for the device count. ``pynvml`` is imported lazily; no library,
  no driver, or any NVML error means "no GPUs" (logged), never a crash: GPU models then run
  their ``copies`` on the CPU.

Indices are NVML's (PCI bus order, as ``nvidia-smi`` shows them); copies are started with
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA numbers the devices the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("inferoxy.gpus")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_bytes: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_gpus() -> list[GpuInfo]:
    """Every GPU NVML sees; ``[]`` when NVML is missing or fails (the reason is logged)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        log.info("nvidia-ml-py is not installed: no GPU discovery")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        log.info("NVML is not available (%s): no GPUs", exc)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append(GpuInfo(
                index=i,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            ))
        return gpus
    except Exception as exc:
        log.warning("NVML failed while listing GPUs (%s): no GPUs", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def parse_gpu_list(override: str) -> list[int]:
    """``"0,1,3"`` -> ``[0, 1, 3]``; ``""`` -> ``[]``. Raises ValueError on anything else."""
    gpus = []
    for part in override.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"--gpus takes GPU indices like 0,1,3; got {override!r}")
        if int(part) not in gpus:
            gpus.append(int(part))
    return gpus


def discover_gpus(override: str | None = None, simulate: int = 0) -> list[int]:
    """The GPU indices copies may be placed on (see the rules at the top)."""
    if simulate > 0:
        log.info("simulating %d GPU(s): GPU copies run on the CPU", simulate)
        return list(range(simulate))
    if override is not None:
        return parse_gpu_list(override)
    found = nvml_gpus()
    for gpu in found:
        log.info("GPU %d: %s, %.1f GiB, %s", gpu.index, gpu.name, gpu.memory_bytes / 2**30,
                 gpu.uuid)
    return [gpu.index for gpu in found]
