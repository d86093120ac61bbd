"""The model manager: the registry's operations, and the gateway kept in step with it.

``run`` watches the registry (``Registry.watch``) and reconciles the gateway
(``Gateway.apply``) with a fresh snapshot after every change, one reconcile at a time and
coalescing bursts. The management API (``bridges.rest.admin``) calls the operations here:
each validates the declaration (``InvalidArgument`` names the field), writes the registry,
and reconciles this gateway at once; other gateways on the same Redis follow within a moment.

A stored value that fails validation is reported once and skipped; if the model was being
served, its last valid declaration stays in force until the value is fixed or deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from gateway.config import MODEL_NAME_RE, ConfigError
from gateway.core import Gateway
from gateway.declaration import ModelDeclaration, merge_patch, parse_declaration
from gateway.errors import InferoxyError, InvalidArgument
from gateway.registry import (
    InProcessRegistry,
    RedisRegistry,
    Registry,
    RegistryUnavailable,
    Snapshot,
)

log = logging.getLogger("inferoxy.manager")


def check_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name):
        raise InvalidArgument(f"model name must match {MODEL_NAME_RE.pattern}, got {name!r}")
    return name


def declaration_from(name: str, body: Any) -> ModelDeclaration:
    """Validate a request body as a model declaration (400 naming the field)."""
    check_name(name)
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object: the model's declaration")
    try:
        return parse_declaration(name, body)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None


class ModelManager:
    def __init__(self, gateway: Gateway, registry: Registry) -> None:
        self.gateway = gateway
        self.registry = registry
        self.invalid: dict[str, str] = {}  # stored values skipped at the last reconcile
        self._lock = trio.Lock()
        self._dirty = trio.Event()

    # -- keeping the gateway in step -----------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.registry.watch, self.changed)
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                await self.refresh()

    def changed(self) -> None:
        """The registry may have changed: reconcile soon (bursts coalesce)."""
        self._dirty.set()

    async def refresh(self) -> None:
        """Read the registry and reconcile the gateway with it (no-op while it is lost)."""
        async with self._lock:
            try:
                snap = await self.registry.snapshot()
            except RegistryUnavailable:
                return  # the watcher asks again once it is back
            self.gateway.apply(self._usable(snap))
            self.registry.remember(self.gateway.declarations)

    def _usable(self, snap: Snapshot) -> dict[str, ModelDeclaration]:
        models = dict(snap.models)
        for name, why in snap.invalid.items():
            last = self.gateway.declarations.get(name)
            if self.invalid.get(name) != why:
                log.error("registry: skipping the stored declaration of %r: %s%s", name, why,
                          "; its last valid declaration stays in force" if last else "")
            if last is not None:
                models[name] = last
        for name in self.invalid.keys() - snap.invalid.keys():
            log.info("registry: the declaration of %r is valid again (or gone)", name)
        self.invalid = dict(snap.invalid)
        return models

    # -- the management operations -------------------------------------------------------------

    def describe(self, declaration: ModelDeclaration) -> dict[str, Any]:
        """A model as the management API shows it: declaration, versions and their states."""
        name = declaration.name
        states = {m["version"]: m for m in self.gateway.repository_index() if m["name"] == name}
        try:
            serving: str | None = self.gateway.model(name).config.version
        except InferoxyError:
            serving = None
        return {
            "name": name,
            "declaration": declaration.raw,
            "versions": [
                {"version": v, "state": states.get(v, {}).get("state", "UNAVAILABLE"),
                 "reason": states.get(v, {}).get("reason", "not applied yet")}
                for v in declaration.versions
            ],
            "default_version": serving,  # where a request naming no version goes, here
            "pinned_default_version": declaration.default_version,
        }

    async def list(self) -> dict[str, Any]:
        snap = await self.registry.snapshot()
        return {
            "models": [self.describe(d) for _, d in sorted(snap.models.items())],
            "invalid": [{"name": n, "error": e} for n, e in sorted(snap.invalid.items())],
        }

    async def get(self, name: str) -> dict[str, Any]:
        return self.describe(await self.registry.get(check_name(name)))

    async def create(self, name: str, body: Any) -> dict[str, Any]:
        declaration = declaration_from(name, body)
        await self.registry.create(declaration)
        log.info("model %s added through the management API", name)
        await self.refresh()
        return self.describe(declaration)

    async def replace(self, name: str, body: Any) -> tuple[dict[str, Any], bool]:
        declaration = declaration_from(name, body)
        created = await self.registry.put(declaration)
        log.info("model %s %s through the management API", name,
                 "added" if created else "replaced")
        await self.refresh()
        return self.describe(declaration), created

    async def patch(self, name: str, patch: Any) -> dict[str, Any]:
        check_name(name)
        if not isinstance(patch, dict):
            raise InvalidArgument("the body must be a JSON object: a merge patch of the "
                                  "model's declaration (null removes a field)")
        if "name" in patch:
            raise InvalidArgument("field 'name' cannot be patched: add the model under the "
                                  "new name and delete the old one")
        declaration = await self.registry.update(
            name, lambda stored: declaration_from(name, merge_patch(stored, patch)))
        log.info("model %s patched through the management API: %s", name, sorted(patch))
        await self.refresh()
        return self.describe(declaration)

    async def delete(self, name: str) -> None:
        await self.registry.delete(check_name(name))
        log.info("model %s deleted through the management API", name)
        await self.refresh()



def registry_for(redis_url: str | None, prefix: str) -> Registry:
    return RedisRegistry(redis_url, prefix) if redis_url else InProcessRegistry()


async def open_registry(registry: Registry, models: Mapping[str, ModelDeclaration]
                        ) -> dict[str, ModelDeclaration]:
    """Connect, import ``models`` (models.yaml), and return what to serve at start.

    Raises ``RegistryUnreachable`` when Redis cannot be reached.
    """
    await registry.open()
    report = await registry.seed(models)
    if registry.kind == "redis":
        log.info("model registry: Redis at %s; imported models.yaml: %d added, %d unchanged",
                 registry.where, len(report.added), len(report.unchanged))
        for name in report.overridden:
            log.warning("model registry: models.yaml declares %r differently from the "
                        "registry: the file wins, the stored declaration was replaced", name)
        if report.kept:
            log.info("model registry: kept from the registry (not in models.yaml): %s",
                     ", ".join(report.kept))
    snap = await registry.snapshot()  # invalid values are reported by the first refresh
    return snap.models
