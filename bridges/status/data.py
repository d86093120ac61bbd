"""What the status page shows, read from the gateway. I/O-free.

``status(gateway, window)`` returns one JSON-able dict: the server's state, and per model
version its declaration summary, its state (as the v2 repository index says it), queue depth,
copies (id, GPU, state, restarts, last error) and recent latency.

*Recent* latency comes from the request-latency histograms (``gateway.stats.Histogram``),
which only ever grow: ``LatencyWindow`` keeps snapshots of their bucket counts, and the
figures are taken over the difference between now and the oldest snapshot of the last
``span_s`` seconds (until that much time has passed: since the gateway started). Percentiles
are interpolated inside their bucket, as Prometheus' ``histogram_quantile`` does, so they are
estimates bounded by the bucket edges (0.1, 0.25, 0.5, 1, 2.5, ... ms).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.stats import LATENCY_BOUNDS_NS

QUANTILES = (0.5, 0.9, 0.99)
Key = tuple[str, str]  # (model, version)


class _Gateway(Protocol):  # what this module reads (gateway.core.Gateway)
    live: bool
    draining: bool
    gpus: list[int]

    @property
    def ready(self) -> bool: ...

    def all_servers(self) -> list[Any]: ...

    def repository_index(self) -> list[dict[str, Any]]: ...

    def live_sequences(self) -> int: ...


def quantile(q: float, counts: list[int], bounds: tuple[int, ...]) -> float | None:
    """The ``q`` quantile of bucketed ``counts`` (one more bucket than ``bounds``: +Inf)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):  # beyond the last bound: the bound is all we know
                return float(bounds[-1])
            lo = bounds[i - 1] if i else 0
            return lo + (bounds[i] - lo) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


@dataclass(slots=True)
class LatencyWindow:
    """Snapshots of each model version's latency histogram, for figures over ``span_s``."""

    span_s: float = 60.0
    _snaps: dict[Key, deque[tuple[float, list[int], int]]] = field(default_factory=dict)

    def recent(self, key: Key, now: float, counts: list[int], total_ns: int
               ) -> tuple[list[int], int, float]:
        """Counts and summed ns since the window's start, and how long that is (s)."""
        snaps = self._snaps.setdefault(key, deque())
        while len(snaps) > 1 and now - snaps[1][0] >= self.span_s:
            snaps.popleft()  # keep one snapshot at least span_s old, if there is one
        if snaps and now - snaps[-1][0] < 1.0:
            pass  # at most one snapshot a second: many open pages cost no memory
        else:
            snaps.append((now, list(counts), total_ns))
        if len(snaps) > 1 and now - snaps[0][0] >= self.span_s:
            t0, c0, s0 = snaps[0]
            return [a - b for a, b in zip(counts, c0, strict=True)], total_ns - s0, now - t0
        return list(counts), total_ns, -1.0  # since the start


def latency(window: LatencyWindow, key: Key, histogram: Any, now: float) -> dict[str, Any]:
    counts, total_ns, span = window.recent(key, now, histogram.counts, histogram.sum)
    n = sum(counts)
    doc: dict[str, Any] = {"count": n, "window_s": round(span, 1) if span > 0 else None}
    if n:
        doc["mean_ms"] = round(total_ns / n / 1e6, 3)
        for q in QUANTILES:
            value = quantile(q, counts, LATENCY_BOUNDS_NS)
            doc[f"p{round(q * 100)}_ms"] = None if value is None else round(value / 1e6, 3)
    return doc


def status(gateway: _Gateway, window: LatencyWindow, now: float) -> dict[str, Any]:
    """The page's data; ``now`` is a monotonic clock in seconds (for the latency window)."""
    states = {(m["name"], m["version"]): m for m in gateway.repository_index()}
    desk = getattr(gateway, "attach_desk", None)  # attached copies run on hosts of their own
    models = []
    for server in sorted(gateway.all_servers(),
                         key=lambda s: (s.config.name, int(s.config.version))):
        config = server.config
        key = (config.name, config.version)
        index = states.get(key, {"state": "READY" if server.ready else "LOADING", "reason": ""})
        running = sum(len(b.requests) for b in server.inflight.values())
        copies = [{
            "id": c.id,
            "gpu": c.placement.gpu,
            "state": "crash loop" if c.crash_loop else c.state.value,
            "restarts": c.restarts,
            # its process: the pid it said HELLO with (an attached copy's, in its own
            # container), and the host an attached copy announced
            "pid": c.pid,
            "host": desk.host_of(c.id) if desk is not None else "",
            "outstanding": c.outstanding,
            "error": c.crash_loop or c.last_error,
        } for c in server.copies]
        entry: dict[str, Any] = {
            "name": config.name,
            "version": config.version,
            "state": index["state"],
            "reason": index["reason"],
            "stateless": config.stateless,
            "batch_size": config.batch_size,
            "run_on_gpu": config.run_on_gpu,
            "queued": max(server.pending - running, 0),
            "running": running,
            "max_queue_size": config.max_queue_size,
            "copies": copies,
            "success": server.stats.success.count,
            "failures": sum(server.stats.failures_by_reason.values()),
            "latency": latency(window, key, server.stats.latency, now),
        }
        sequences = getattr(server, "sequences", None)
        if sequences is not None:
            entry["live_sequences"] = sequences.live_count
        models.append(entry)
    return {
        "server": {"live": gateway.live, "ready": gateway.ready, "draining": gateway.draining,
                   "gpus": list(gateway.gpus), "live_sequences": gateway.live_sequences()},
        "models": models,
    }
