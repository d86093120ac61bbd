"""PNG plots of a run (matplotlib, Agg backend: no display needed).

* ``<scenario>-throughput-p99.png``: items/s against p99 latency, one line per system and path,
  one point per concurrency (labelled);
* ``batch-sizes.png``: the batch sizes Inferoxy formed per scenario (its ``inferoxy_batch_size``
  histogram over the headline window);
* ``latency-breakdown.png``: mean queue / compute / overhead per request from the v2
  statistics endpoint, per scenario and system (the systems that serve it).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.suite.report import Row


def throughput_p99(scenario: str, title: str, rows: list[Row], out: Path) -> Path | None:
    series: dict[str, list[Row]] = {}
    for r in rows:
        if r.measured and r.p99_ms is not None and r.system != "ideal":
            series.setdefault(f"{r.system} ({r.path})", []).append(r)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort(key=lambda r: r.concurrency)
        xs = [p.items_per_s or 0.0 for p in points]
        ys = [p.p99_ms or 0.0 for p in points]
        ax.plot(xs, ys, marker="o", label=label)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"c={p.concurrency}", (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("throughput (items/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_xscale("log")  # the ceiling and the peers sit decades apart
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    path = out / f"{scenario}-throughput-p99.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def batch_sizes(histograms: dict[str, list[tuple[str, float]]], out: Path) -> Path | None:
    shown = {k: v for k, v in histograms.items() if sum(c for _, c in v) > 0}
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 1, figsize=(7, 1.8 * len(shown) + 0.6), squeeze=False)
    for ax, (scenario, all_buckets) in zip(axes[:, 0], sorted(shown.items()), strict=True):
        last = max(i for i, (_, c) in enumerate(all_buckets) if c > 0)
        buckets = all_buckets[: last + 1]  # no row of empty bars past the largest batch
        labels = [b for b, _ in buckets]
        total = sum(c for _, c in buckets)
        ax.bar(labels, [100 * c / total for _, c in buckets])
        ax.set_ylabel("% of batches", fontsize=7)
        ax.set_title(f"{scenario}: batch sizes Inferoxy formed", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    path = out / "batch-sizes.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency_breakdown(rows: list[Row], out: Path) -> Path | None:
    shown = [r for r in rows if r.queue_us is not None and r.compute_us is not None]
    if not shown:
        return None
    labels = [f"{r.scenario} · {r.system} · c={r.concurrency}" for r in shown]
    queue = [r.queue_us or 0.0 for r in shown]
    compute = [r.compute_us or 0.0 for r in shown]
    overhead = [r.overhead_us or 0.0 for r in shown]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(shown) + 1.2))
    ys = range(len(shown))
    ax.barh(ys, queue, label="queue")
    ax.barh(ys, compute, left=queue, label="compute (input + infer + output)")
    ax.barh(ys, overhead, left=[q + c for q, c in zip(queue, compute, strict=True)],
            label="overhead (rest of the server's time)")
    ax.set_yticks(list(ys), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("mean µs per request (v2 statistics)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "latency-breakdown.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
