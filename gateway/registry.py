"""Where model declarations live: in this process (the embedded default) or in Redis (shared).

Both registries offer the same operations to the model manager (``gateway.manager``): a
snapshot of every model, get, create, put, update (read-modify-write, for PATCH), delete, and
``watch``, a task that calls ``changed()`` whenever the registry may have changed.

Redis layout, every key under one prefix P (``--redis-prefix``, default ``inferoxy:``)::

    P model:<name>   string   the model's declaration as JSON (the fields of models.yaml)
    P seeded         string   written when models.yaml is imported; if a reconnect finds it
                              gone, Redis lost its data (restarted without persistence) and
                              the gateway writes back the models it knew
    P events         channel  pub/sub: {"op": "put"|"delete"|"import"|"restore",
                              "model": name|null, "by": "<host>:<pid>"}, after every write

Every value is validated on every read (``gateway.declaration.parse_declaration``); one that
fails (edited by hand) is reported in the snapshot's ``invalid`` and skipped. Changes reach
other gateways through the channel (and through keyspace notifications for P model:*, if the
server has them enabled, so hand edits are seen too); nothing polls Redis.

redis-py has no Trio backend: its sync client runs in ``trio.to_thread`` (control plane only,
never on the request path). Commands fail fast (1 s to connect, 2 s per reply, no retries):
while Redis is gone the management calls answer 503 at once and inference goes on with the
last snapshot; the watcher reconnects with back-off and then asks for one full reconcile.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import trio

from gateway.config import ConfigError
from gateway.declaration import ModelDeclaration, parse_declaration
from gateway.errors import Conflict, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("inferoxy.registry")

T = TypeVar("T")

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0
LISTEN_SLICE_S = 1.0  # one blocking pub/sub read; cancellation is seen within this


class RegistryUnreachable(Exception):
    """Redis cannot be reached at start (the gateway exits with a clear message)."""


class RegistryUnavailable(Unavailable):
    """Redis was lost while running: management calls answer 503 until it is back."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    models: dict[str, ModelDeclaration]
    invalid: dict[str, str] = field(default_factory=dict)  # name -> why its value was skipped


@dataclass(frozen=True, slots=True)
class ImportReport:
    added: list[str]
    overridden: list[str]  # the registry had them, models.yaml said otherwise: the file won
    unchanged: list[str]
    kept: list[str]  # in the registry, not in models.yaml: kept


class Registry(ABC):
    """The model manager's store. Methods raise ``NotFound``, ``Conflict``,
    ``InvalidArgument`` (a bad declaration) and ``RegistryUnavailable``."""

    kind: str
    where: str

    @property
    def available(self) -> bool:
        return True

    async def open(self) -> None:
        """Connect (raises ``RegistryUnreachable``)."""
        return None

    async def close(self) -> None:
        return None

    @abstractmethod
    async def seed(self, models: Mapping[str, ModelDeclaration]) -> ImportReport: ...

    @abstractmethod
    async def snapshot(self) -> Snapshot: ...

    async def get(self, name: str) -> ModelDeclaration:
        snap = await self.snapshot()
        if name in snap.models:
            return snap.models[name]
        if name in snap.invalid:
            raise InvalidArgument(f"model {name!r} has an invalid stored declaration: "
                                  f"{snap.invalid[name]}")
        raise NotFound(f"unknown model {name!r}")

    @abstractmethod
    async def create(self, declaration: ModelDeclaration) -> None: ...

    @abstractmethod
    async def put(self, declaration: ModelDeclaration) -> bool:
        """Create or replace; True when created."""

    @abstractmethod
    async def update(self, name: str,
                     change: Callable[[dict[str, Any]], ModelDeclaration]) -> ModelDeclaration:
        """Read-modify-write one model atomically (``change`` gets the stored JSON)."""

    @abstractmethod
    async def delete(self, name: str) -> None: ...

    @abstractmethod
    async def watch(self, changed: Callable[[], None]) -> None:
        """Run forever: call ``changed()`` when the registry may have changed."""

    def remember(self, models: Mapping[str, ModelDeclaration]) -> None:
        """The models the gateway serves now (restored if Redis comes back empty)."""
        return None


def _parse_stored(name: str, value: str | bytes) -> ModelDeclaration:
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"model {name!r}: stored value is not JSON: {exc}") from None
    return parse_declaration(name, doc)


class InProcessRegistry(Registry):
    """The embedded default: declarations in this process, seeded from models.yaml."""

    kind = "in-process"
    where = "this process"

    def __init__(self) -> None:
        self._models: dict[str, ModelDeclaration] = {}
        self._changed = trio.Event()

    def _touch(self) -> None:
        self._changed.set()

    async def seed(self, models: Mapping[str, ModelDeclaration]) -> ImportReport:
        added = [n for n in models if n not in self._models]
        overridden = [n for n in models if n in self._models
                      and not models[n].same_as(self._models[n])]
        unchanged = [n for n in models if n not in added and n not in overridden]
        kept = [n for n in self._models if n not in models]
        self._models.update(models)
        self._touch()
        return ImportReport(added, overridden, unchanged, kept)

    async def snapshot(self) -> Snapshot:
        return Snapshot(dict(self._models))

    async def create(self, declaration: ModelDeclaration) -> None:
        if declaration.name in self._models:
            raise Conflict(f"model {declaration.name!r} already exists; replace it with PUT")
        self._models[declaration.name] = declaration
        self._touch()

    async def put(self, declaration: ModelDeclaration) -> bool:
        created = declaration.name not in self._models
        self._models[declaration.name] = declaration
        self._touch()
        return created

    async def update(self, name: str,
                     change: Callable[[dict[str, Any]], ModelDeclaration]) -> ModelDeclaration:
        current = self._models.get(name)
        if current is None:
            raise NotFound(f"unknown model {name!r}")
        new = change(json.loads(current.to_json()))
        self._models[name] = new
        self._touch()
        return new

    async def delete(self, name: str) -> None:
        if self._models.pop(name, None) is None:
            raise NotFound(f"unknown model {name!r}")
        self._touch()

    async def watch(self, changed: Callable[[], None]) -> None:
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            changed()


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisRegistry(Registry):
    kind = "redis"

    def __init__(self, url: str, prefix: str = "inferoxy:") -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis
        self.url = url
        self.where = redact(url)
        self.prefix = prefix
        self.origin = f"{socket.gethostname()}:{os.getpid()}"
        self._model_prefix = f"{prefix}model:"
        self._seeded_key = f"{prefix}seeded"
        self.channel = f"{prefix}events"
        try:
            self._client = redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0,
                socket_keepalive=True, retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:  # a malformed URL
            raise RegistryUnreachable(f"--redis {self.where}: {exc}") from None
        self._db = int(self._client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self._errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._available = False
        self._known: dict[str, ModelDeclaration] = {}

    @property
    def available(self) -> bool:
        return self._available

    def _key(self, name: str) -> str:
        return self._model_prefix + name

    def _event(self, op: str, model: str | None) -> str:
        return json.dumps({"op": op, "model": model, "by": self.origin})

    async def _run(self, fn: Callable[..., T], *args: Any, check: bool = True) -> T:
        if check and not self._available:
            raise RegistryUnavailable(
                f"the model registry (Redis at {self.where}) is unreachable; reconnecting")
        try:
            return await trio.to_thread.run_sync(partial(fn, *args))
        except self._errors as exc:
            raise RegistryUnavailable(
                f"the model registry (Redis at {self.where}) is unreachable: {exc}") from None

    # -- start -------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._run(self._client.ping, check=False)
        except RegistryUnavailable as exc:
            raise RegistryUnreachable(
                f"cannot reach Redis at {self.where} (--redis / INFEROXY_REDIS): {exc.message}"
            ) from None
        except self._redis.RedisError as exc:  # e.g. a password is needed
            raise RegistryUnreachable(f"Redis at {self.where} refused us: {exc}") from None
        self._available = True

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._client.close)

    async def seed(self, models: Mapping[str, ModelDeclaration]) -> ImportReport:
        report = await self._run(self._seed, dict(models))
        self._known.update(models)
        return report

    def _seed(self, models: dict[str, ModelDeclaration]) -> ImportReport:
        names = self._names()
        stored = dict(zip(names, self._client.mget([self._key(n) for n in names]) if names
                          else [], strict=True))
        pipe = self._client.pipeline(transaction=True)
        added, overridden, unchanged = [], [], []
        for name, declaration in models.items():
            value = stored.get(name)
            if value is None:
                added.append(name)
            elif value == declaration.to_json():
                unchanged.append(name)
                continue
            else:
                overridden.append(name)
            pipe.set(self._key(name), declaration.to_json())
        pipe.set(self._seeded_key, self.origin)
        pipe.publish(self.channel, self._event("import", None))
        pipe.execute()
        kept = sorted(set(stored) - set(models))
        return ImportReport(added, overridden, unchanged, kept)

    # -- reads ---------------------------------------------------------------------------------

    def _names(self) -> list[str]:
        match = _glob_escape(self._model_prefix) + "*"
        return sorted(k[len(self._model_prefix):]
                      for k in self._client.scan_iter(match=match, count=1000))

    async def snapshot(self) -> Snapshot:
        snap = await self._run(self._snapshot)
        self._known = dict(snap.models)
        return snap

    def _snapshot(self) -> Snapshot:
        names = self._names()
        values = self._client.mget([self._key(n) for n in names]) if names else []
        models: dict[str, ModelDeclaration] = {}
        invalid: dict[str, str] = {}
        for name, value in zip(names, values, strict=True):
            if value is None:  # deleted between SCAN and MGET
                continue
            try:
                models[name] = _parse_stored(name, value)
            except ConfigError as exc:
                invalid[name] = str(exc)
        return Snapshot(models, invalid)

    async def get(self, name: str) -> ModelDeclaration:
        value = await self._run(self._client.get, self._key(name))
        if value is None:
            raise NotFound(f"unknown model {name!r}")
        try:
            return _parse_stored(name, value)
        except ConfigError as exc:
            raise InvalidArgument(f"model {name!r} has an invalid stored declaration: {exc}"
                                  ) from None

    # -- writes (each publishes an event in the same transaction) ------------------------------

    async def create(self, declaration: ModelDeclaration) -> None:
        created = await self._run(self._write, declaration, True)
        if not created:
            raise Conflict(f"model {declaration.name!r} already exists; replace it with PUT")

    async def put(self, declaration: ModelDeclaration) -> bool:
        return await self._run(self._write, declaration, False)

    def _write(self, declaration: ModelDeclaration, only_new: bool) -> bool:
        pipe = self._client.pipeline(transaction=True)
        if only_new:
            pipe.set(self._key(declaration.name), declaration.to_json(), nx=True)
        else:
            pipe.set(self._key(declaration.name), declaration.to_json(), get=True)
        pipe.publish(self.channel, self._event("put", declaration.name))
        result = pipe.execute()[0]
        return bool(result) if only_new else result is None

    async def update(self, name: str,
                     change: Callable[[dict[str, Any]], ModelDeclaration]) -> ModelDeclaration:
        return await self._run(self._update, name, change)

    def _update(self, name: str,
                change: Callable[[dict[str, Any]], ModelDeclaration]) -> ModelDeclaration:
        key = self._key(name)
        result: list[ModelDeclaration] = []

        def transaction(pipe: Any) -> None:
            value = pipe.get(key)
            if value is None:
                raise NotFound(f"unknown model {name!r}")
            try:
                doc = json.loads(value)
            except ValueError:
                doc = {}  # a hand-broken value: the change must be a whole declaration
            new = change(doc if isinstance(doc, dict) else {})
            pipe.multi()
            pipe.set(key, new.to_json())
            pipe.publish(self.channel, self._event("put", name))
            result[:] = [new]

        self._client.transaction(transaction, key)
        return result[0]

    async def delete(self, name: str) -> None:
        deleted = await self._run(self._delete, name)
        if not deleted:
            raise NotFound(f"unknown model {name!r}")

    def _delete(self, name: str) -> int:
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._key(name))
        pipe.publish(self.channel, self._event("delete", name))
        return int(pipe.execute()[0])

    def remember(self, models: Mapping[str, ModelDeclaration]) -> None:
        self._known = dict(models)

    # -- watching ------------------------------------------------------------------------------

    async def watch(self, changed: Callable[[], None]) -> None:
        delay = RECONNECT_MIN_S
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._run(self._subscribe, pubsub, check=False)
                was_lost = not self._available
                await self._run(self._restore_if_empty, check=False)
                self._client.connection_pool.disconnect()  # no stale sockets after a restart
                self._available = True
                if was_lost:
                    log.warning("model registry: Redis at %s is back; reconciling", self.where)
                changed()  # one full reconcile after every (re)connect
                delay = RECONNECT_MIN_S
                while True:
                    message = await trio.to_thread.run_sync(
                        pubsub.get_message, True, LISTEN_SLICE_S, abandon_on_cancel=True)
                    if message is not None:
                        changed()
            except RegistryUnavailable as exc:
                if self._available:
                    log.error("model registry lost: %s. Inference goes on with the last known "
                              "models; management calls answer 503 until it is back",
                              exc.message)
                self._available = False
            except self._redis.RedisError as exc:
                if not isinstance(exc, self._errors):
                    log.exception("model registry: unexpected answer from Redis at %s",
                                  self.where)
                elif self._available:
                    log.error("model registry lost: Redis at %s: %s. Inference goes on with "
                              "the last known models; management calls answer 503 until it "
                              "is back", self.where, exc)
                self._available = False
            except OSError as exc:
                if self._available:
                    log.error("model registry lost: Redis at %s: %s", self.where, exc)
                self._available = False
            finally:
                try:
                    pubsub.close()
                except Exception:  # the connection is gone anyway
                    pass
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _subscribe(self, pubsub: Any) -> None:
        pubsub.subscribe(self.channel)
        # Hand edits too, where the server has keyspace notifications on (harmless if not).
        pubsub.psubscribe(f"__keyspace@{self._db}__:{_glob_escape(self._model_prefix)}*")
        pubsub.get_message(timeout=0.0)  # surfaces a connection error now, not later

    def _restore_if_empty(self) -> None:
        """Redis lost its data (restarted without persistence): write back what we knew."""
        if self._client.exists(self._seeded_key):
            return
        known = dict(self._known)
        if not known:
            self._client.set(self._seeded_key, self.origin, nx=True)
            return
        pipe = self._client.pipeline(transaction=True)
        for name, declaration in known.items():
            pipe.set(self._key(name), declaration.to_json(), nx=True)
        pipe.set(self._seeded_key, self.origin, nx=True)
        pipe.publish(self.channel, self._event("restore", None))
        pipe.execute()
        log.warning("model registry: Redis at %s came back without our keys (restarted "
                    "without persistence?); restored the %d model(s) this gateway knew",
                    self.where, len(known))
