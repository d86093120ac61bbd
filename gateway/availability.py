"""Whether a model's server can take requests, read from its copies; and the alerts when
that changes. I/O-free (the alerts are sent by ``supervisor.alerts.Alerts``'s own task).

A request is admitted if a copy can serve it now or soon: a copy that is starting, or
restarting after a crash, will serve the queue when it is ready (the request's deadline
bounds the wait); a model whose copies all failed to load, or are all in a crash loop, is
refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.model_server import ModelServer
from supervisor.alerts import AlertKind, Alerts
from supervisor.copy import Copy
from supervisor.lifecycle import CopyState


def refusal(server: ModelServer) -> str | None:
    """Why a request to ``server`` is refused now (None: admit it)."""
    for c in server.copies:  # the usual case, checked first: it runs for every request
        if c.ready and not c.crash_loop:
            return None
    looping = unavailable_reason(server)
    if looping:
        return f"model {server.config.name!r} is unavailable: {looping}"
    if any(c.ready or (c.state is not CopyState.STOPPED and not c.last_error
                       and not c.crash_loop)
           for c in server.copies):
        return None
    reason = next((c.crash_loop or c.last_error for c in server.copies
                   if c.crash_loop or c.last_error), "")
    return (f"model {server.config.name!r} is not ready"
            + (f" (last error: {reason})" if reason else ""))


def unavailable_reason(server: ModelServer) -> str:
    """Why a model cannot serve although it is loaded (every copy in a crash loop); ""."""
    copies = server.copies
    if copies and all(c.crash_loop for c in copies):
        return copies[0].crash_loop
    return ""


def failed(server: ModelServer) -> bool:
    """Every copy of the server failed (to load, or in a crash loop)."""
    return bool(server.copies) and all(c.last_error or c.crash_loop for c in server.copies)


def loading_reason(server: ModelServer, progress: Callable[[str], str]) -> str:
    """Why a loading server is not ready yet: a copy's last error, else the runtime's
    ``progress`` of its image (e.g. a pull)."""
    reason = next((c.last_error for c in server.copies if c.last_error), "")
    return reason or progress(server.config.address)


def alert_crash_loop(alerts: Alerts, server: ModelServer, copy: Copy, entered: bool) -> None:
    """A copy of ``server`` entered (or left) a crash loop: fire (or resolve) its alert."""
    name = copy.model
    if not entered:
        if not any(c.crash_loop for c in server.copies):
            alerts.resolve(
                name, f"model {name!r} recovered: copy {copy.id} is serving again",
                kinds=frozenset({AlertKind.CRASH_LOOP, AlertKind.MODEL_UNAVAILABLE}),
            )
        return
    details = {"copy": copy.id, "device": copy.placement.device, "gpu": copy.placement.gpu,
               "restarts": copy.restarts, "reason": copy.crash_loop}
    if unavailable_reason(server):
        alerts.fire(AlertKind.MODEL_UNAVAILABLE, name,
                    f"model {name!r} is unavailable: {copy.crash_loop}", **details)
    else:
        serving = sum(c.ready for c in server.copies)
        alerts.fire(AlertKind.CRASH_LOOP, name,
                    f"copy {copy.id} of model {name!r} is in a {copy.crash_loop}; "
                    f"{serving} copy(ies) still serve", **details)
