"""Per-model counters behind the v2 statistics endpoint (and the metrics, which read them).

Durations are cumulative nanoseconds, as the v2 statistics extension reports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


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

    def record_batch(self, requests: int, rows: int, timing: dict[str, int]) -> None:
        """A batch ran: per-request compute time is the batch's (as Triton reports it)."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        t_in, t_inf, t_out = (int(timing.get(k, 0)) for k in ("input_ns", "infer_ns", "output_ns"))
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
