"""One model copy as the gateway sees it: state, placement, load."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.lifecycle import CopyEvent, CopyState, next_state
from supervisor.placement import Placement


@dataclass(eq=False, slots=True)
class Copy:
    id: int
    model: str
    placement: Placement
    state: CopyState = CopyState.STARTING
    pid: int | None = None
    inbox: str = ""  # the batch socket its process bound (shm.wire.copy_address)
    outstanding: int = 0  # batches sent and not yet answered
    last_seen: float = 0.0  # trio time of the last message from the worker
    last_dispatch: float = 0.0
    paused_until: float = 0.0  # trio time before which no batch is sent (socket refused one)
    restarts: int = 0
    last_error: str = ""  # why the copy is not serving (cleared when it says HELLO)
    busy_s: float = 0.0  # how long the worker's current batch (or health check) has run
    crash_loop: str = ""  # set while the copy is in a crash loop: why
    history: list[CopyState] = field(default_factory=list)
    # Output slots the producer is done with, to tell the copy with its next batch (or after
    # a short hold), and since when the oldest has waited (trio time).
    releases: list[tuple[str, int]] = field(default_factory=list)  # (segment, offset)
    releases_since: float = 0.0
    # Called after every change of state (the control process republishes its copy table).
    on_change: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def apply(self, event: CopyEvent) -> CopyState:
        new = next_state(self.state, event)
        if new is not self.state:
            self.history.append(new)
            del self.history[:-16]
            self.state = new
            if self.on_change is not None:
                self.on_change()
        return new

    @property
    def ready(self) -> bool:
        return self.state is CopyState.READY
