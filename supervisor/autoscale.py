"""Autoscaling decisions for one model. I/O-free: the adapter observes, this decides.

Bounds
------
``copy_bounds`` turns a model's declaration into ``(min, max)`` copies. Without
``min_copies``/``max_copies`` both are the model's full size: one copy per GPU for a GPU
model on a GPU host, ``copies`` otherwise — nothing scales unless asked. A GPU model never
has more copies than there are GPUs (one copy per GPU). A model that scales never goes to
zero copies: cold starts are what users of model servers complain about most.

Rules
-----
The adapter calls ``observe`` every tick with a ``Load``: the queue delay (how long requests
wait before a copy takes them), the work done since the last tick in copies' worth
(``busy`` = busy copy-seconds / elapsed seconds), how many copies there are and how many of
them are not serving yet, and whether a GPU (or CPU slot) is free for one more.

1. Below ``min_copies`` with a free slot: UP (a lost copy is always put back).
2. While a copy is starting, nothing else is decided: the capacity is on its way.
3. UP when the queue delay has stayed over ``target_delay_s`` for ``up_after_s`` and a copy
   can be added (under ``max_copies``, a slot free). If it cannot, LIMIT — once, until the
   model has scaled down again (the "scale limit reached" alert).
4. DOWN when, for ``idle_s`` straight, the queue delay stayed at or under the target and one
   copy fewer would have done the work with headroom (``busy <= (copies - 1) * headroom``)
   — and never below ``min_copies``. The window starts again after every decision.

Every decision carries its reason, in words, for the log.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


def copy_bounds(run_on_gpu: bool, copies: int, min_copies: int | None,
                max_copies: int | None, gpu_count: int) -> tuple[int, int]:
    """``(min, max)`` copies of a model on this host (see "Bounds" above)."""
    on_gpus = run_on_gpu and gpu_count > 0
    full = gpu_count if on_gpus else copies
    lo = min_copies if min_copies is not None else (
        min(full, max_copies) if max_copies is not None else full)
    hi = max_copies if max_copies is not None else max(full, lo)
    if on_gpus:
        hi = min(hi, gpu_count)
    if hi > lo:
        lo = max(lo, 1)  # a model that scales keeps one copy warm
    return min(lo, hi), hi


class Action(enum.Enum):
    UP = "up"
    DOWN = "down"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    min_copies: int
    max_copies: int
    target_delay_s: float
    up_after_s: float
    idle_s: float
    headroom: float = 0.7  # scale down only if the rest would run at most this busy

    @property
    def enabled(self) -> bool:
        return self.max_copies > self.min_copies


@dataclass(frozen=True, slots=True)
class Load:
    now: float
    copies: int  # copies that serve or will (not those being removed)
    starting: int  # of those, how many are not serving yet (starting, restarting)
    queue_delay_s: float
    busy: float  # copies' worth of work since the last observation
    slot_free: bool  # a GPU (or, for CPU models, a slot) could take one more copy


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    copies: int  # how many copies there will be (LIMIT: how many there are)
    reason: str


class Autoscaler:
    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._over_since: float | None = None
        self._idle_since: float | None = None
        self._limited = False

    def observe(self, load: Load) -> Decision | None:
        p = self.policy
        delay_ms, target_ms = load.queue_delay_s * 1e3, p.target_delay_s * 1e3
        if load.copies < p.min_copies and load.slot_free:
            self._over_since = self._idle_since = None
            return Decision(Action.UP, load.copies + 1,
                            f"{load.copies} copies is below min_copies {p.min_copies}")
        if load.starting:
            self._over_since = self._idle_since = None
            return None
        if load.queue_delay_s > p.target_delay_s:
            self._idle_since = None
            if self._over_since is None:
                self._over_since = load.now
            if load.now - self._over_since < p.up_after_s:
                return None
            self._over_since = None
            over = f"queue delay {delay_ms:.0f} ms over the {target_ms:.0f} ms target " \
                   f"for {p.up_after_s:g}s"
            if load.copies < p.max_copies and load.slot_free:
                return Decision(Action.UP, load.copies + 1,
                                f"{over}: {load.copies} -> {load.copies + 1} copies")
            if self._limited:
                return None
            self._limited = True
            why = (f"at max_copies {p.max_copies}" if load.copies >= p.max_copies
                   else "no free GPU")
            return Decision(Action.LIMIT, load.copies, f"{over}, but cannot add a copy: {why}")
        self._over_since = None
        spare = load.busy <= (load.copies - 1) * p.headroom
        if load.copies <= p.min_copies or not spare:
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = load.now
        if load.now - self._idle_since < p.idle_s:
            return None
        self._idle_since = None
        self._limited = False
        return Decision(
            Action.DOWN, load.copies - 1,
            f"{load.copies - 1} copies would do for {p.idle_s:g}s (queue delay under the "
            f"{target_ms:.0f} ms target, {load.busy:.2f} copies busy): "
            f"{load.copies} -> {load.copies - 1} copies",
        )
