"""Alerts: an I/O-free policy that decides what is worth telling, and a Trio sender.

Theory of operation
-------------------
A *problem* alert (``crash_loop``, ``model_unavailable``, ``scale_limit``) is about a
subject (a model). ``AlertPolicy`` keeps which ``(kind, subject)`` problems are *firing*:

* ``fire``: a problem that is not firing starts firing and is sent; a problem that is
  already firing is a repeat and is not sent (one alert per episode, not one per restart).
* ``resolve``: the subject's problems are over. Quietly (``notify=False``) they stop firing
  at once. Otherwise they stop firing ``recover_hold_s`` later, with one ``recovered``
  alert, handed out by ``due``; a problem that fires for the subject before then cancels
  that silently and the episode goes on (a copy that comes up and dies again is not
  "recovered").
* A global rate limit (a token bucket of ``burst`` alerts refilled at ``per_minute``) drops
  what exceeds it; the count of dropped alerts rides on the next one sent.

``Alerts`` is the Trio adapter: ``fire``/``resolve`` are synchronous and never block (the data
plane and the supervisor call them); every alert the policy passes is logged and put on a
bounded queue; one task POSTs them as JSON to a webhook (Slack-compatible: ``text`` plus
structured fields), each with a timeout and a few retries. With no webhook, alerts are only
logged. A full queue drops the alert (logged), never waits.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import trio

log = logging.getLogger("inferoxy.alerts")


class AlertKind(enum.Enum):
    CRASH_LOOP = "crash_loop"
    MODEL_UNAVAILABLE = "model_unavailable"
    SCALE_LIMIT = "scale_limit"
    RECOVERED = "recovered"


SEVERITY = {
    AlertKind.CRASH_LOOP: "warning",
    AlertKind.MODEL_UNAVAILABLE: "critical",
    AlertKind.SCALE_LIMIT: "warning",
    AlertKind.RECOVERED: "info",
}


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    subject: str  # the model
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # wall-clock time (time.time()) it was raised
    dropped_before: int = 0  # alerts the rate limit dropped since the last one sent

    @property
    def severity(self) -> str:
        return SEVERITY[self.kind]

    def payload(self, source: str) -> dict[str, Any]:
        """The webhook body: Slack's ``text`` plus fields for machines."""
        icon = {"critical": ":red_circle:", "warning": ":warning:", "info": ":white_check_mark:"}
        text = f"{icon[self.severity]} [{source}] {self.message}"
        if self.dropped_before:
            text += f" ({self.dropped_before} earlier alert(s) dropped by the rate limit)"
        return {
            "text": text,
            "alert": self.kind.value,
            "severity": self.severity,
            "model": self.subject,
            "message": self.message,
            "details": self.details,
            "source": source,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "dropped_before": self.dropped_before,
        }


@dataclass(slots=True)
class AlertPolicy:
    recover_hold_s: float = 10.0
    burst: int = 10
    per_minute: float = 10.0
    firing: set[tuple[AlertKind, str]] = field(default_factory=set)
    # subject -> (when, the problems it resolves, the "recovered" alert)
    _pending: dict[str, tuple[float, set[tuple[AlertKind, str]], Alert]] = field(
        default_factory=dict)
    _tokens: float | None = None  # the bucket; full at the first alert
    _refilled: float = 0.0
    dropped: int = 0

    def _admit(self, alert: Alert, now: float) -> list[Alert]:
        tokens = float(self.burst) if self._tokens is None else self._tokens
        tokens = min(float(self.burst), tokens + (now - self._refilled) * self.per_minute / 60.0)
        self._tokens, self._refilled = tokens, now
        if tokens < 1.0:
            self.dropped += 1
            log.warning("alert dropped by the rate limit: %s", alert.message)
            return []
        self._tokens = tokens - 1.0
        alert = replace(alert, dropped_before=self.dropped)
        self.dropped = 0
        return [alert]

    def fire(self, alert: Alert, now: float) -> list[Alert]:
        """A problem was seen: the alert to send now, if it starts an episode."""
        assert alert.kind is not AlertKind.RECOVERED
        self._pending.pop(alert.subject, None)  # not recovered after all
        key = (alert.kind, alert.subject)
        if key in self.firing:
            return []
        self.firing.add(key)
        return self._admit(alert, now)

    def resolve(self, subject: str, now: float, message: str, *,
                kinds: frozenset[AlertKind] | None = None, notify: bool = True) -> None:
        """The subject's problems (of ``kinds``; all when None) are over."""
        gone = {k for k in self.firing
                if k[1] == subject and (kinds is None or k[0] in kinds)}
        if not gone:
            return
        if not notify:
            self.firing -= gone
            return
        if subject in self._pending:
            gone |= self._pending[subject][1]
        recovered = Alert(AlertKind.RECOVERED, subject, message,
                          {"resolved": sorted(k.value for k, _ in gone)}, time.time())
        self._pending[subject] = (now + self.recover_hold_s, gone, recovered)

    def due(self, now: float) -> list[Alert]:
        """Scheduled ``recovered`` alerts whose hold has passed and no problem came back."""
        out: list[Alert] = []
        for subject, (at, gone, alert) in list(self._pending.items()):
            if at <= now:
                del self._pending[subject]
                self.firing -= gone
                out += self._admit(alert, now)
        return out


class Alerts:
    """The Trio side: log every alert, POST it to the webhook from one task."""

    def __init__(self, webhook: str | None, policy: AlertPolicy | None = None, *,
                 queue_size: int = 64, timeout_s: float = 5.0, attempts: int = 3,
                 retry_delay_s: float = 0.5) -> None:
        self.webhook = webhook or None
        self.policy = policy or AlertPolicy()
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.retry_delay_s = retry_delay_s
        self.source = f"inferoxy@{socket.gethostname()}:{os.getpid()}"
        self.sent = 0
        self.failed = 0
        self._send, self._recv = trio.open_memory_channel[Alert](queue_size)
        self._http: Any = None

    # -- called from anywhere in the Trio thread; never blocks ---------------------------

    def fire(self, kind: AlertKind, subject: str, message: str, **details: Any) -> None:
        alert = Alert(kind, subject, message, details, time.time())
        for a in self.policy.fire(alert, trio.current_time()):
            self._emit(a)

    def resolve(self, subject: str, message: str, *, kinds: frozenset[AlertKind] | None = None,
                notify: bool = True) -> None:
        self.policy.resolve(subject, trio.current_time(), message, kinds=kinds, notify=notify)

    def _emit(self, alert: Alert) -> None:
        level = logging.INFO if alert.kind is AlertKind.RECOVERED else logging.WARNING
        log.log(level, "ALERT %s [%s] %s", alert.kind.value, alert.severity, alert.message)
        if self.webhook is None:
            return
        try:
            self._send.send_nowait(alert)
        except trio.WouldBlock:
            self.failed += 1
            log.error("alert queue full; not sent to the webhook: %s", alert.message)

    # -- the sender task -------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._due_loop)
            async for alert in self._recv:
                await self._deliver(alert)

    async def _due_loop(self) -> None:
        while True:
            await trio.sleep(0.25)
            for alert in self.policy.due(trio.current_time()):
                self._emit(alert)

    async def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alert.payload(self.source)).encode()
        delay = self.retry_delay_s
        for attempt in range(1, self.attempts + 1):
            error = "timed out"
            with trio.move_on_after(self.timeout_s):
                try:
                    status = await trio.to_thread.run_sync(
                        self._post, body, abandon_on_cancel=True
                    )
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    if 200 <= status < 300:
                        self.sent += 1
                        return
                    error = f"HTTP {status}"
            log.warning("alert webhook attempt %d/%d failed (%s)", attempt, self.attempts, error)
            if attempt < self.attempts:
                await trio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.error("alert not delivered to the webhook: %s", alert.message)

    def _post(self, body: bytes) -> int:
        import urllib3

        if self._http is None:
            self._http = urllib3.PoolManager(num_pools=2, maxsize=1)
        assert self.webhook is not None
        response = self._http.request(
            "POST", self.webhook, body=body,
            headers={"Content-Type": "application/json", "User-Agent": "inferoxy-alerts"},
            timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
            retries=False, redirect=False,
        )
        return int(response.status)
