"""What the servers say about themselves during a window: the v2 statistics endpoint
(Inferoxy, Triton, PyTriton: queue / compute / success time, executions) and Inferoxy's
``inferoxy_batch_size`` Prometheus histogram. Read before and after; the difference is the
window's."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any


def v2_stats(http: str, model: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=5) as r:
            doc = json.loads(r.read())
        return dict(doc["model_stats"][0])
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _ns(stats: dict[str, Any], kind: str) -> tuple[int, int]:
    entry = stats.get("inference_stats", {}).get(kind, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


def successes(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Requests the server answered successfully between the two reads."""
    return _ns(after, "success")[0] - _ns(before, "success")[0]


def breakdown(before: dict[str, Any], after: dict[str, Any]
              ) -> tuple[float | None, float | None, float | None, float | None]:
    """(avg batch, queue µs, compute µs, overhead µs) per request over the window."""
    def delta(kind: str) -> tuple[int, int]:
        c1, n1 = _ns(before, kind)
        c2, n2 = _ns(after, kind)
        return c2 - c1, n2 - n1

    count, success_ns = delta("success")
    if count <= 0:
        return None, None, None, None
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    queue = delta("queue")[1] / count / 1e3
    compute = sum(delta(k)[1] for k in ("compute_input", "compute_infer", "compute_output"))
    compute_us = compute / count / 1e3
    total = success_ns / count / 1e3
    avg_batch = inferences / executions if executions > 0 else None
    return avg_batch, queue, compute_us, max(0.0, total - queue - compute_us)


BUCKET = re.compile(r'^inferoxy_batch_size_bucket\{([^}]*)\}\s+([0-9.eE+]+)', re.M)


def batch_histogram(metrics_text: str, model: str) -> dict[float, float]:
    """Cumulative counts by upper bound (``le``) of ``model``'s batch sizes."""
    out: dict[float, float] = {}
    for labels, value in BUCKET.findall(metrics_text):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.get("model") != model:
            continue
        le = float("inf") if pairs.get("le") == "+Inf" else float(pairs.get("le", "nan"))
        out[le] = out.get(le, 0.0) + float(value)
    return out


def histogram_delta(before: dict[float, float], after: dict[float, float]
                    ) -> list[tuple[str, float]]:
    """Per-bucket counts (not cumulative) over the window: [(label, count)]."""
    bounds = sorted(after)
    out, previous, lower = [], 0.0, 0.0
    for le in bounds:
        cumulative = after[le] - before.get(le, 0.0)
        label = f"≤{le:g}" if le != float("inf") else f">{lower:g}"
        out.append((label, cumulative - previous))
        previous, lower = cumulative, le
    return out


def metrics_text(url: str | None) -> str:
    if not url:
        return ""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""
