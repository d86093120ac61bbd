"""The model repository as this gateway serves it: the v2 repository extension.

It owns the declarations last applied from the registry (``apply``), the models unloaded here
through the API and why (``_unloaded``: they stay unloaded until loaded again, whatever the
registry says), and the config overrides a load brought (``_overrides``: this gateway only,
until the next plain load or an unload). Starting and rolling versions is
``gateway.rollover``'s; stopping servers is the fleet's (``gateway.fleet``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from gateway import availability
from gateway.declaration import ModelDeclaration
from gateway.errors import NotFound, Unavailable, load_failed, unknown_model
from gateway.model_server import ModelServer
from gateway.rollover import Rollover
from gateway.triton_config import load_override

log = logging.getLogger("inferoxy.gateway")


class Repository:
    def __init__(self, declarations: dict[str, ModelDeclaration], rollover: Rollover, *,
                 stop: Callable[[ModelServer, str], Awaitable[None]],
                 stop_soon: Callable[[ModelServer, str], None],
                 draining: Callable[[], bool], startup_timeout_s: float) -> None:
        self.declarations = declarations  # the registry as last applied
        self.rollover = rollover
        self.routing = rollover.routing
        self._stop = stop  # drains a server, then stops its copies
        self._stop_soon = stop_soon  # the same, in the gateway's nursery
        self._draining = draining
        self._startup_timeout_s = startup_timeout_s
        self._unloaded: dict[str, str] = {}  # name -> why it is not loaded
        # name -> its declaration with a load's config override (this gateway only)
        self._overrides: dict[str, ModelDeclaration] = {}

    def index(self) -> list[dict[str, Any]]:
        """Every version of every model the registry knows, with its state (v2 index)."""
        index = []
        for name, declaration in self.declarations.items():
            versions = list(declaration.versions)
            versions += self.routing.leaving_versions(name)
            for version in versions:
                state, reason = self._version_state(name, version)
                index.append({"name": name, "version": version, "state": state,
                              "reason": reason})
        return index

    def _version_state(self, name: str, version: str) -> tuple[str, str]:
        key = (name, version)
        server = self.routing.servers.get(key)
        if server is None:
            return "UNAVAILABLE", self._unloaded.get(name, "unloaded")
        replacement = self.routing.replacing.get(key)
        leaving = key in self.routing.leaving
        if server.ready:
            if replacement is not None:
                return "READY", "serving while its new declaration loads" + (
                    f" ({self.rollover.loading_reason(replacement)})"
                    if self.rollover.loading_reason(replacement) else "")
            if leaving:
                return "READY", ("removed from the model's declaration: serving until another "
                                 "version is ready")
            return "READY", ""
        if availability.unavailable_reason(server):
            return "UNAVAILABLE", availability.unavailable_reason(server)
        return "LOADING", self.rollover.loading_reason(server)

    async def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Start a model's versions and wait (bounded) until one is ready; no-op if loaded.

        ``parameters.config`` (Triton's model config JSON, ``gateway.triton_config``) overrides
        the declaration on this gateway until the next load without one or an unload; an
        invalid override is refused before anything changes, and one that fails to load is
        taken back (the model serves on as before).
        """
        declaration = self.declarations.get(name)
        if declaration is None:
            raise NotFound(load_failed(name, "failed to poll from model repository: no such "
                                             "model is declared"))
        if self._draining():
            raise Unavailable("the server is shutting down")
        override = load_override(declaration, parameters)
        previous = self._overrides.pop(name, None)
        if override is not None:
            self._overrides[name] = override
        target = override or declaration
        self._unloaded.pop(name, None)
        self.rollover.reconcile(target)
        log.info("loading model %s%s", name, " with a config override" if override else "")
        reason = await self._wait_loaded(target)
        if reason is not None:
            if override is not None:  # take it back: what served before serves on
                self._overrides.pop(name, None)
                if previous is not None:
                    self._overrides[name] = previous
                self.rollover.reconcile(previous or declaration)
            raise Unavailable(load_failed(name, reason))

    async def _wait_loaded(self, target: ModelDeclaration) -> str | None:
        """Wait until requests go to ``target``'s configuration and a version is ready (None),
        or its copies all failed or the startup timeout passed (why)."""
        name = target.name
        keys = [(name, v) for v in target.versions]
        routed = self.routing.servers

        def switched() -> bool:
            return all((s := routed.get(k)) is not None and s.config == target.versions[k[1]]
                       for k in keys) and any(routed[k].ready for k in keys)

        def starting() -> list[ModelServer]:
            return [s for k in keys
                    if (s := self.routing.replacing.get(k) or routed.get(k)) is not None
                    and s.config == target.versions[k[1]]]

        with trio.move_on_after(self._startup_timeout_s):
            while not switched():
                servers = starting()
                if not servers or all(availability.failed(s) for s in servers):
                    break
                await trio.sleep(0.02)
        if switched():
            return None
        return next((c.last_error or c.crash_loop for s in starting() for c in s.copies
                     if c.last_error or c.crash_loop), "timed out")

    async def unload(self, name: str) -> None:
        """Stop taking requests for a model, let its pending ones finish, stop its copies."""
        if name not in self.declarations:
            raise unknown_model(name)
        self._unloaded[name] = "unloaded"
        self._overrides.pop(name, None)  # a later load reads the declaration again
        servers = self.routing.drop_model(name)
        if servers:
            log.info("unloading model %s: %d request(s) pending", name,
                     sum(s.pending for s in servers))
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(self._stop, server, "was unloaded")

    def apply(self, models: Mapping[str, ModelDeclaration], serving: bool = True) -> None:
        """Serve ``models`` from now on (a registry snapshot); changes roll without a restart.

        Idempotent: applying the same snapshot twice changes nothing. A model unloaded here
        through the repository API stays unloaded until it is loaded again.
        """
        old, self.declarations = self.declarations, dict(models)
        if not serving:  # not started yet (run() reconciles), or shutting down
            return
        for name in old.keys() - self.declarations.keys():
            self._unloaded.pop(name, None)
            self._overrides.pop(name, None)
            servers = self.routing.drop_model(name)
            if servers:
                log.info("model %s was removed from the registry: draining and stopping it", name)
            for server in servers:
                self._stop_soon(server, "was removed")
        for declaration in self.declarations.values():
            if declaration.name not in self._unloaded:
                self.rollover.reconcile(self._overrides.get(declaration.name, declaration))
