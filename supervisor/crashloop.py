"""Crash-loop detection for one copy. I/O-free: the caller passes the clock.

Rules
-----
Every exit of a copy's process counts, whatever the cause: it crashed, its model failed to
load, it was killed for a hang or a failed health check. Restarts go on regardless, with the
capped back-off of ``supervisor.backoff``; this detector only decides what the copy *is*:

    event \\ state   SERVING                              LOOPING
    exit            LOOPING if >= max_exits exits         LOOPING
                    fell within the last window_s,
                    else SERVING
    ready (HELLO)   SERVING                              SERVING

``on_exit`` returns True exactly once per episode: on the exit that enters LOOPING (the one
alert). ``on_ready`` returns True exactly once: when a looping copy says HELLO again
(recovered). Exits stay in the window after a recovery, so a copy that comes up and dies
again at once is back in the loop on its next exit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class CrashLoopPolicy:
    max_exits: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_exits < 1 or not self.window_s > 0:
            raise ValueError("a crash loop needs max_exits >= 1 and window_s > 0")


@dataclass(slots=True)
class CrashLoop:
    policy: CrashLoopPolicy = field(default_factory=CrashLoopPolicy)
    looping: bool = False
    exits: deque[float] = field(default_factory=deque)

    def recent(self, now: float) -> int:
        """Exits within the window ending at ``now``."""
        while self.exits and self.exits[0] <= now - self.policy.window_s:
            self.exits.popleft()
        return len(self.exits)

    def on_exit(self, now: float) -> bool:
        """Count an exit; True when it starts a crash loop."""
        self.exits.append(now)
        if self.looping or self.recent(now) < self.policy.max_exits:
            return False
        self.looping = True
        return True

    def on_ready(self) -> bool:
        """The copy said HELLO; True when that ends a crash loop."""
        was, self.looping = self.looping, False
        return was
