"""The Trio adapter of autoscaling: one task per scaling model, in that model's nursery.

Every ``TICK_S`` it measures the model's load, asks ``supervisor.autoscale.Autoscaler`` what to
do, and does it through the fleet (``gateway.fleet``): a new copy starts the way the model's
first copies did (``Fleet.add_copy``); a copy that goes is taken out of dispatch first,
finishes what it runs, then stops for good (``Fleet.retire_copy``). Decisions are logged
with their reason; "scale limit reached" is also an alert.

What it measures:

* queue delay: the larger of the age of the oldest request no copy has taken yet (for a
  stateful model, also a sequence's request parked until a copy has a slot for it) and the
  mean time the requests dispatched since the last tick waited in the queue;
* busy: copies' worth of work since the last tick (worker-measured batch time / elapsed
  time), and at least the number of copies running a batch right now.

Scaling down takes an idle copy; a stateful model's copy goes only while it holds no
sequence (their state lives in it), so a sequence is never ended by scaling.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from gateway.model_server import ModelServer
from supervisor.alerts import AlertKind, Alerts
from supervisor.autoscale import Action, Autoscaler, Decision, Load, ScalePolicy
from supervisor.copy import Copy
from supervisor.lifecycle import CopyState

log = logging.getLogger("inferoxy.autoscale")

TICK_S = 0.2


class Fleet(Protocol):
    """What the scaler needs of the copies it scales (``gateway.fleet.Fleet``)."""

    alerts: Alerts

    @property
    def draining(self) -> bool: ...

    def add_copy(self, server: ModelServer) -> Copy | None: ...

    async def retire_copy(self, server: ModelServer, copy: Copy) -> None: ...

    def slot_free(self, server: ModelServer) -> bool: ...

    def queued_elsewhere_s(self, server: ModelServer) -> float: ...


def _busy_ns(server: ModelServer) -> int:
    return sum(b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns
               for b in server.stats.batches.values())


class ModelScaler:
    def __init__(self, fleet: Fleet, server: ModelServer, policy: ScalePolicy) -> None:
        self.fleet = fleet
        self.server = server
        self.autoscaler = Autoscaler(policy)
        self._at = 0.0
        self._busy_ns = 0
        self._queued = (0, 0)  # stats.queue (count, ns) at the last tick

    def observe(self) -> Load:
        server, now = self.server, trio.current_time()
        stats = server.stats
        head_age = max(server.waiting_since(now), self.fleet.queued_elsewhere_s(server))
        count, ns = stats.queue.count - self._queued[0], stats.queue.ns - self._queued[1]
        recent = ns / count / 1e9 if count > 0 else 0.0
        busy_ns = _busy_ns(server)
        elapsed = max(now - self._at, 1e-6)
        rate = (busy_ns - self._busy_ns) / 1e9 / elapsed
        self._at, self._busy_ns, self._queued = now, busy_ns, (stats.queue.count, stats.queue.ns)
        copies = server.copies
        return Load(
            now=now,
            copies=len(copies),
            starting=sum(1 for c in copies if not c.ready and not c.crash_loop
                         and c.state is not CopyState.STOPPED),
            queue_delay_s=max(head_age, recent),
            busy=max(rate, float(sum(1 for c in copies if c.outstanding))),
            slot_free=self.fleet.slot_free(server),
        )

    async def run(self) -> None:
        self.observe()  # the baseline
        async with trio.open_nursery() as nursery:
            while not self.fleet.draining:
                await trio.sleep(TICK_S)
                if self.fleet.draining:
                    break
                decision = self.autoscaler.observe(self.observe())
                if decision is not None:
                    self.apply(decision, nursery)

    def apply(self, decision: Decision, nursery: trio.Nursery) -> None:
        name = self.server.config.name
        if decision.action is Action.UP:
            copy = self.fleet.add_copy(self.server)
            if copy is None:
                log.warning("autoscale %s: wanted to scale up (%s) but no copy could be placed",
                            name, decision.reason)
                return
            log.info("autoscale %s: up: %s; copy %d on %s", name, decision.reason, copy.id,
                     copy.placement.device if copy.placement.gpu is None
                     else f"GPU {copy.placement.gpu}")
        elif decision.action is Action.DOWN:
            candidates = [c for c in self.server.copies if self.server.retirable(c)]
            if not candidates:  # stateful: every copy holds sequences; try again later
                log.debug("autoscale %s: down wanted (%s), but every copy holds sequences",
                          name, decision.reason)
                return
            victim = min(candidates,
                         key=lambda c: (not c.crash_loop, c.outstanding, c.last_dispatch))
            self.server.on_copy_retiring(victim)  # now, before another sequence lands on it
            log.info("autoscale %s: down: %s; copy %d goes", name, decision.reason, victim.id)
            self.fleet.alerts.resolve(name, "", kinds=frozenset({AlertKind.SCALE_LIMIT}),
                                      notify=False)
            nursery.start_soon(self.fleet.retire_copy, self.server, victim)
        else:
            log.warning("autoscale %s: limit: %s", name, decision.reason)
            self.fleet.alerts.fire(
                AlertKind.SCALE_LIMIT, name, f"model {name!r} reached its scale limit: "
                f"{decision.reason}", copies=decision.copies,
                max_copies=self.autoscaler.policy.max_copies,
            )
