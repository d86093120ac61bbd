"""Version routing: which server each (model, version) request goes to. I/O-free.

The table owns every map of the routing, so they change together:

* ``servers``: (model, version) -> the server its requests go to (and, by model, its versions);
* ``replacing``: a version whose declaration changed -> the new server, starting next to the
  old one, which keeps serving until the new one is ready (``switch_ready``);
* ``leaving``: versions dropped from their model's declaration; they keep serving until
  another version of the model is ready (``settle_leaving``).

A request that names no version gets the model's pinned default version, else its latest
READY version that is not leaving, else its latest (while it loads). ``gateway.rollover``
drives the table over time; ``gateway.core.Gateway`` is its facade for bridges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from gateway.errors import unknown_version

Key = tuple[str, str]  # (model, version)


class Routed(Protocol):
    """What the table needs of a server (``gateway.model_server.ModelServer``)."""

    versions: tuple[str, ...]  # its model's routed versions, for metadata; the table sets it

    @property
    def ready(self) -> bool: ...


S = TypeVar("S", bound=Routed)


def _by_number(version: str) -> int:
    return int(version)


class RoutingTable(Generic[S]):
    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.servers: dict[Key, S] = {}
        self._by_name: dict[str, dict[str, S]] = {}  # the same as servers, by model
        self.replacing: dict[Key, S] = {}
        self.leaving: set[Key] = set()
        # Called before every change of the routing (data-plane processes mirror it).
        self._on_change = on_change or (lambda: None)

    # -- reading -----------------------------------------------------------------------------

    def versions(self, name: str) -> dict[str, S]:
        """A model's routed versions -> their servers (a copy)."""
        return dict(self._by_name.get(name, {}))

    def versions_of(self, name: str) -> list[str]:
        """A model's routed versions, ascending."""
        return sorted(self._by_name.get(name, ()), key=_by_number)

    def resolve(self, name: str, version: str | None, pinned: str | None = None) -> S | None:
        """The server of ``version`` of a model, or of its default version (``pinned`` if
        routed); None when the model has no routed version; raises NotFound for a version
        the model does not have."""
        versions = self._by_name.get(name)
        if not versions:
            return None
        if version:
            server = versions.get(version)
            if server is None:
                raise unknown_version(name, version)
            return server
        if len(versions) == 1:
            return next(iter(versions.values()))
        if pinned and pinned in versions:
            return versions[pinned]
        return max(versions.items(), key=lambda kv: (
            kv[1].ready, (name, kv[0]) not in self.leaving, _by_number(kv[0])))[1]

    def running(self) -> list[S]:
        """Every server the table knows: routed ones and replacements starting."""
        return [*self.servers.values(), *self.replacing.values()]

    def is_replacement(self, server: S) -> bool:
        return any(s is server for s in self.replacing.values())

    def leaving_versions(self, name: str) -> list[str]:
        return sorted((v for n, v in self.leaving if n == name), key=_by_number)

    @property
    def settled(self) -> bool:
        """Nothing to roll over: no replacement starting, no version leaving."""
        return not self.replacing and not self.leaving

    # -- changing ----------------------------------------------------------------------------

    def route(self, key: Key, server: S) -> S | None:
        """Send ``key``'s requests to ``server``; returns the server they went to before."""
        self._on_change()
        old = self.servers.get(key)
        self.servers[key] = server
        self._by_name.setdefault(key[0], {})[key[1]] = server
        self._tell_versions(key[0])
        return old

    def unroute(self, key: Key) -> S | None:
        """Stop routing ``key``; returns the server its requests went to."""
        self._on_change()
        server = self.servers.pop(key, None)
        versions = self._by_name.get(key[0], {})
        versions.pop(key[1], None)
        if not versions:
            self._by_name.pop(key[0], None)
        self._tell_versions(key[0])
        return server

    def start_replacement(self, key: Key, server: S) -> S | None:
        """``server`` replaces ``key``'s once ready; returns a replacement it supersedes."""
        old = self.replacing.get(key)
        self.replacing[key] = server
        server.versions = tuple(self.versions_of(key[0]))
        return old

    def cancel_replacement(self, key: Key) -> S | None:
        """The declaration changed back: the starting replacement is not wanted (returned)."""
        return self.replacing.pop(key, None)

    def keep(self, key: Key) -> None:
        """``key`` is declared (again): it is not leaving."""
        self.leaving.discard(key)

    def leave(self, key: Key) -> bool:
        """``key`` was dropped from its declaration; True if that is news."""
        if key in self.leaving or key not in self.servers:
            return False
        self.leaving.add(key)
        return True

    def drop_model(self, name: str) -> list[S]:
        """Stop routing every version of a model; returns its servers (to stop)."""
        servers = [s for (n, _), s in self.replacing.items() if n == name]
        for key in [k for k in self.replacing if k[0] == name]:
            del self.replacing[key]
        self.leaving -= {k for k in self.leaving if k[0] == name}
        for version in list(self._by_name.get(name, {})):
            server = self.unroute((name, version))
            if server is not None:
                servers.append(server)
        return servers

    def switch_ready(self) -> list[tuple[Key, S | None]]:
        """Route every replacement that is ready; returns (key, the server it replaced)."""
        switched: list[tuple[Key, S | None]] = []
        for key, new in list(self.replacing.items()):
            if new.ready:
                del self.replacing[key]
                switched.append((key, self.route(key, new)))
        return switched

    def settle_leaving(self) -> list[tuple[Key, S]]:
        """Unroute every leaving version once another version of its model is ready;
        returns (key, its server)."""
        gone: list[tuple[Key, S]] = []
        for key in list(self.leaving):
            others = [s for v, s in self._by_name.get(key[0], {}).items()
                      if (key[0], v) not in self.leaving and s.ready]
            if others or key not in self.servers:
                self.leaving.discard(key)
                old = self.unroute(key)
                if old is not None:
                    gone.append((key, old))
        return gone

    def _tell_versions(self, name: str) -> None:
        """Tell every server of the model which versions there are (for metadata)."""
        versions = tuple(self.versions_of(name))
        for server in self._by_name.get(name, {}).values():
            server.versions = versions
        for (n, _), server in self.replacing.items():
            if n == name:
                server.versions = versions
