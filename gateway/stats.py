"""Per-model counters behind the v2 statistics endpoint (and the metrics, which read them).

Durations are cumulative nanoseconds, as the v2 statistics extension reports them.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from shm.messages import Timing

# Fixed bucket upper bounds (inclusive, Prometheus ``le``); one more bucket catches the rest.
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(
    int(ms * 1_000_000) for ms in
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
)
BATCH_SIZE_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """Counts per fixed bucket plus a sum: ``observe`` is one bisect and two integer adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self, scale: float = 1.0) -> list[tuple[str, int]]:
        """Prometheus buckets: ``(le, cumulative count)``, bounds divided by ``scale``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((repr(bound / scale) if scale != 1.0 else str(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


@dataclass(slots=True)
class BridgeCounters:
    """Answers per bridge and status class (2xx, 4xx, 5xx): plain integer increments."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def answered(self, bridge: str, status: int) -> None:
        key = (bridge, _STATUS_CLASS[min(status // 100, 5)])
        self.counts[key] = self.counts.get(key, 0) + 1


_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_NS))
    queue_delay: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_NS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))

    def record_batch(self, requests: int, rows: int, timing: Timing) -> None:
        """A batch ran: per-request compute time is the batch's (as Triton reports it)."""
        self.execution_count += 1
        self.inference_count += rows
        self.batch_size.observe(rows)
        self.last_inference_ms = int(time.time() * 1000)
        t_in, t_inf, t_out = timing.input_ns, timing.infer_ns, timing.output_ns
        self.compute_input.add(t_in * requests, requests)
        self.compute_infer.add(t_inf * requests, requests)
        self.compute_output.add(t_out * requests, requests)
        b = self.batches.setdefault(rows, BatchSizeStats())
        b.compute_input.add(t_in)
        b.compute_infer.add(t_inf)
        b.compute_output.add(t_out)

    def record_failure(self, reason: str, ns: int) -> None:
        self.fail.add(ns)
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        zero = Duration().to_json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_json(),
                    "compute_infer": b.compute_infer.to_json(),
                    "compute_output": b.compute_output.to_json(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }


# -- across processes: a data-plane process reports what it counted, the control process adds it

def _durations(s: ModelStats | BatchSizeStats) -> list[Duration]:
    if isinstance(s, BatchSizeStats):
        return [s.compute_input, s.compute_infer, s.compute_output]
    return [s.success, s.fail, s.queue, s.compute_input, s.compute_infer, s.compute_output]


def stats_to_wire(s: ModelStats) -> dict[str, Any]:
    """Every counter of ``s`` as plain numbers (JSON), for ``stats_delta``/``add_stats``."""
    return {
        "n": [s.inference_count, s.execution_count],
        "d": [[d.count, d.ns] for d in _durations(s)],
        "b": {str(size): [[d.count, d.ns] for d in _durations(b)]
              for size, b in s.batches.items()},
        "f": dict(s.failures_by_reason),
        "h": [[*h.counts, h.sum] for h in (s.latency, s.queue_delay, s.batch_size)],
        "last": s.last_inference_ms,
    }


def stats_delta(now: Any, before: Any) -> Any:
    """``now - before`` for two ``stats_to_wire`` forms (counters only grow); ``last`` is
    kept as it is now."""
    if isinstance(now, dict):
        return {k: (v if k == "last" else stats_delta(v, (before or {}).get(k)))
                for k, v in now.items()}
    if isinstance(now, list):
        before = before or [None] * len(now)
        return [stats_delta(a, b) for a, b in zip(now, before, strict=True)]
    return now - (before or 0)


def add_stats(s: ModelStats, delta: dict[str, Any]) -> None:
    """Add a ``stats_delta`` to ``s`` (the control process's stats of the same model)."""
    s.inference_count += int(delta["n"][0])
    s.execution_count += int(delta["n"][1])
    for d, (count, ns) in zip(_durations(s), delta["d"], strict=True):
        d.add(int(ns), int(count))
    for size, durations in delta["b"].items():
        b = s.batches.setdefault(int(size), BatchSizeStats())
        for d, (count, ns) in zip(_durations(b), durations, strict=True):
            d.add(int(ns), int(count))
    for reason, n in delta["f"].items():
        s.failures_by_reason[str(reason)] = s.failures_by_reason.get(str(reason), 0) + int(n)
    for h, raw in zip((s.latency, s.queue_delay, s.batch_size), delta["h"], strict=True):
        if len(raw) != len(h.counts) + 1:
            raise ValueError("histogram of another shape")
        for i, n in enumerate(raw[:-1]):
            h.counts[i] += int(n)
        h.sum += int(raw[-1])
    s.last_inference_ms = max(s.last_inference_ms, int(delta["last"]))
