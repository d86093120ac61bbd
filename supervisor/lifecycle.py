"""The life of one model copy, as a table. I/O-free.

Rules
-----
A copy is a slot for one worker process (one per GPU, or N on the CPU). Its process is
started (STARTING); it becomes READY when the worker says HELLO. Only READY copies get
batches. When the process exits — or is killed for missing heartbeats, failing to start in
time, or a model that will not load (FATAL) — the copy is DEAD: its in-flight batches are
retried elsewhere or failed, and it is restarted after a back-off. Shutdown moves any state
to STOPPING, and STOPPED once the process is gone; nothing leaves STOPPED.

    event \\ state   STARTING    READY       DEAD        STOPPING
    hello           READY       -           -           -
    exited          DEAD        DEAD        -           STOPPED
    restart         -           -           STARTING    -
    stop            STOPPING    STOPPING    STOPPED     -

Events not in the table for a state are ignored (a late HELLO from a process being stopped,
a second ``exited``), which makes every transition idempotent.
"""

from __future__ import annotations

import enum


class CopyState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"
    STOPPING = "stopping"
    STOPPED = "stopped"


class CopyEvent(enum.Enum):
    HELLO = "hello"
    EXITED = "exited"
    RESTART = "restart"
    STOP = "stop"


S, E = CopyState, CopyEvent
TRANSITIONS: dict[tuple[CopyState, CopyEvent], CopyState] = {
    (S.STARTING, E.HELLO): S.READY,
    (S.STARTING, E.EXITED): S.DEAD,
    (S.READY, E.EXITED): S.DEAD,
    (S.STOPPING, E.EXITED): S.STOPPED,
    (S.DEAD, E.RESTART): S.STARTING,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.READY, E.STOP): S.STOPPING,
    (S.DEAD, E.STOP): S.STOPPED,
}


def next_state(state: CopyState, event: CopyEvent) -> CopyState:
    """The state after ``event``; unchanged when the table has no entry."""
    return TRANSITIONS.get((state, event), state)
