"""How many cores this process may use: its CPU affinity, capped by its cgroup's CPU quota.

``inferoxy serve --workers auto`` starts one data-plane process per such core. A container
limited with ``--cpus 4`` on a 64-core host sees 64 CPUs in its affinity mask but may only
use 4 cores' worth of time; starting 64 processes there would only add switching. Below
``SMALL_HOST_CORES`` it starts one: on two cores the load generator, the copies and one
data-plane process already fill the machine, and a second process cost 15-25 % of tiny-JSON
throughput in the same runs (docs/decisions/data-plane-processes.md).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """Cores' worth of CPU time the cgroup allows (v2 ``cpu.max``, v1 CFS quota); None: no
    limit, or none readable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cores(root: Path = CGROUP) -> int:
    """Cores this process may run on at once (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


SMALL_HOST_CORES = 4
MAX_WORKERS = 256  # rows of the load board (gateway.loadboard), less the control process's


def parse_workers(value: str, root: Path = CGROUP) -> int:
    """``--workers``: ``auto`` (one data-plane process per usable core; one on a host of
    fewer than ``SMALL_HOST_CORES``) or a count >= 0."""
    text = value.strip().lower()
    if text == "auto":
        cores = min(usable_cores(root), MAX_WORKERS)
        return cores if cores >= SMALL_HOST_CORES else 1
    if not text.isdecimal() or int(text) > MAX_WORKERS:
        raise ValueError(f"--workers must be 'auto' or a number of processes up to "
                         f"{MAX_WORKERS}, not {value!r}")
    return int(text)
