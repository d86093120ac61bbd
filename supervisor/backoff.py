"""Restart back-off: exponential, capped, and forgiven after a copy has run stably.

The supervisor also forgets failures that fell out of the crash-loop window (``forget``), so
a copy outside a crash loop is never kept waiting by exits the crash-loop detector no longer
counts; only a copy in a crash loop (a verdict given) backs off towards ``max_s``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    initial_s: float = 0.2
    factor: float = 2.0
    max_s: float = 30.0
    stable_after_s: float = 60.0
    failures: int = 0

    def on_exit(self, ran_for_s: float) -> float:
        """Record an exit after ``ran_for_s`` seconds of life; return the delay before restart."""
        if ran_for_s >= self.stable_after_s:
            self.failures = 0
        delay = min(self.max_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        return delay

    def forget(self, keep: int) -> None:
        """Count at most the last ``keep`` failures (the others are forgiven)."""
        self.failures = min(self.failures, max(0, keep))
