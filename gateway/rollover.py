"""Rolling a model's versions to a new declaration while requests flow.

``reconcile`` compares a declaration with the routing table (``gateway.routing``): a new
version starts and is routed at once; a changed version starts a replacement next to the old
server; a version dropped from the declaration is marked leaving. ``run`` then switches to
each replacement once it is ready and stops dropped versions once another version of their
model is ready; the servers that no longer get requests are handed to ``stop`` (which drains
them first, ``gateway.fleet.Fleet.stop_server``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from gateway.availability import failed, loading_reason
from gateway.config import ModelConfig
from gateway.declaration import ModelDeclaration
from gateway.model_server import ModelServer
from gateway.routing import Key, RoutingTable

log = logging.getLogger("inferoxy.gateway")

QUIET_S = 0.5  # a replaced server is stopped once idle this long (see Fleet.stop_server)
TICK_S = 0.05

Start = Callable[[ModelConfig], ModelServer]
Stop = Callable[[ModelServer, str, float], None]  # (server, why, quiet_s): starts stopping it


class Rollover:
    def __init__(self, routing: RoutingTable[ModelServer], start: Start, stop: Stop,
                 progress: Callable[[str], str]) -> None:
        self.routing = routing
        self._start = start
        self._stop = stop
        self._progress = progress  # the runtime's word on a copy being set up (an image pull)
        self._wake = trio.Event()

    def reconcile(self, declaration: ModelDeclaration) -> None:
        """Serve ``declaration``'s versions: start, replace and mark leaving (see above)."""
        name, routing = declaration.name, self.routing
        for version, config in declaration.versions.items():
            key = (name, version)
            routing.keep(key)
            active, pending = routing.servers.get(key), routing.replacing.get(key)
            if active is None:
                log.info("model %s version %s: starting", name, version)
                routing.route(key, self._start(config))
            elif active.config == config:
                if pending is not None:  # changed back before the replacement was ready
                    routing.cancel_replacement(key)
                    self._stop(pending, "was superseded", 0.0)
            elif pending is None or pending.config != config:
                log.info("model %s version %s changed: starting the new declaration; the old "
                         "one serves until it is ready", name, version)
                superseded = routing.start_replacement(key, self._start(config))
                if superseded is not None:
                    self._stop(superseded, "was superseded", 0.0)
        for version in routing.versions(name):
            if version not in declaration.versions and routing.leave((name, version)):
                log.info("model %s version %s was removed from its declaration: it serves "
                         "until another version is ready", name, version)
        self._wake.set()

    async def run(self) -> None:
        """Switch to replacements once ready; stop dropped versions once another is ready."""
        warned: set[Key] = set()
        while True:
            if self.routing.settled:
                warned.clear()
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            for key, old in self.routing.switch_ready():
                log.info("model %s version %s: the new declaration is ready; switched to "
                         "it, draining the old one", *key)
                if old is not None:
                    self._stop(old, "was replaced", QUIET_S)
            for key, new in self.routing.replacing.items():
                if failed(new) and key not in warned:
                    warned.add(key)
                    log.error("model %s version %s: the new declaration fails to load (%s); "
                              "the old one keeps serving", *key, self.loading_reason(new))
            for key, old in self.routing.settle_leaving():
                log.info("model %s version %s: another version is ready; draining and "
                         "stopping this one", *key)
                self._stop(old, "was removed", QUIET_S)
            await trio.sleep(TICK_S)

    def loading_reason(self, server: ModelServer) -> str:
        return loading_reason(server, self._progress)
