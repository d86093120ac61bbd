"""The copy table: what the control process publishes to data-plane processes. I/O-free.

A data-plane process (``--workers N``) resolves and checks requests, and batches stateless
models' requests to their copies, without asking the control process. What it needs for that
is this table, sent in a ``TABLE`` message (docs/protocols/control-dataplane.md) whenever it
changes:

- per model, either a ``ModelEntry`` (its default version and each ``VersionEntry``: the
  configuration, the ``Refusal`` the control process would raise now or None, and — for
  stateless models, which data-plane processes serve themselves — each ``CopyEntry``: id,
  whether it is ready, its batch socket) or ``Missing`` (declared, but not served: why);
- the client shared-memory regions registered now (a replica of the control process's
  registry).

Theory of operation:

- **Decoded once, at the edge.** ``CopyTable.from_wire`` checks the whole message — every
  key, type and cross-reference (the default version is one of the versions, a
  configuration names its own model and version) — and raises ``WireError`` on anything
  else, so a malformed table is one logged line where it arrives, never a ``KeyError`` deep in
  the data plane. What comes out is frozen: the data-plane process reads attributes.
- **Cheap to compare.** The control process rebuilds the table whenever what it is made of
  may have changed and republishes it only when ``fingerprint()`` differs: configurations
  compare by identity (a new declaration is a new object), the rest by value.
- Whether a copy's batch socket lies in the run directory is the receiver's check
  (``shm.wire.in_run_dir``), which knows its run directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.bridge_wire import WireError
from gateway.config import ModelConfig, TensorSpec
from shm.datatypes import V2_DATATYPES
from shm.regions import Region

# ``[error type name, message, retry_after_s]``: the error ``ensure_accepting`` raises now
# (``gateway.intake.error_to_wire``; ``error_from_wire`` turns it back into one).
Refusal = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class CopyEntry:
    """One copy of a stateless model: where data-plane processes send its batches."""

    id: int
    ready: bool
    inbox: str  # the copy's batch socket (``shm.wire.copy_address``); "" before it binds one


@dataclass(frozen=True, slots=True)
class VersionEntry:
    config: ModelConfig
    refuse: Refusal | None  # why the version refuses requests now; None: it takes them
    copies: tuple[CopyEntry, ...] = ()  # stateless models only (the others are forwarded)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    default: str  # the version a request that names none goes to; a key of ``versions``
    versions: Mapping[str, VersionEntry]


@dataclass(frozen=True, slots=True)
class Missing:
    """A declared model that serves nothing now; ``why`` is the NotFound message."""

    why: str


@dataclass(frozen=True, slots=True)
class CopyTable:
    models: Mapping[str, ModelEntry | Missing]
    regions: tuple[Region, ...] = ()

    def fingerprint(self) -> Hashable:
        """Equal for two tables that say the same, configurations compared by identity."""
        models = frozenset(
            (name, entry.why) if isinstance(entry, Missing) else (name, entry.default, frozenset(
                (v, id(e.config), e.refuse, e.copies) for v, e in entry.versions.items()))
            for name, entry in self.models.items())
        return models, self.regions

    def to_wire(self) -> dict[str, Any]:
        """The ``models`` and ``regions`` of a ``TABLE`` body (JSON-ready)."""
        models: dict[str, Any] = {}
        for name, entry in self.models.items():
            if isinstance(entry, Missing):
                models[name] = {"missing": entry.why}
                continue
            models[name] = {"default": entry.default, "versions": {
                v: {"config": config_to_wire(e.config),
                    "refuse": None if e.refuse is None else list(e.refuse),
                    "copies": [[c.id, c.ready, c.inbox] for c in e.copies]}
                for v, e in entry.versions.items()}}
        regions = [[r.name, r.key, r.segment, r.offset, r.byte_size] for r in self.regions]
        return {"models": models, "regions": regions}

    @classmethod
    def from_wire(cls, body: object) -> CopyTable:
        """The table a ``TABLE`` body holds; ``WireError`` naming what is wrong otherwise."""
        raw = _dict(body, "the table")
        models: dict[str, ModelEntry | Missing] = {}
        for name, entry in _dict(raw.get("models"), "'models'").items():
            models[name] = _model_from_wire(name, entry)
        raw_regions = raw.get("regions")
        regions = () if raw_regions is None else tuple(
            _region_from_wire(i, r) for i, r in enumerate(_list(raw_regions, "'regions'")))
        return cls(models, regions)


# -- configurations -----------------------------------------------------------------------

def config_to_wire(config: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


_CONFIG_HINTS = typing.get_type_hints(ModelConfig)
_CONFIG_REQUIRED = frozenset(
    f.name for f in dataclasses.fields(ModelConfig)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _accepts(hint: Any, value: object) -> object:
    """``value`` as the field annotated ``hint`` holds it; raises ``TypeError`` otherwise."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        base = typing.get_origin(option) or option
        if base is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)  # JSON writes 1.0 as 1 in some encoders
        if isinstance(value, bool) and base is not bool:
            continue  # True is an int to Python, not to the table
        if isinstance(value, base):
            return value
    raise TypeError


def config_from_wire(raw: object, where: str = "a configuration") -> ModelConfig:
    """A ``ModelConfig`` from ``config_to_wire``'s form; ``WireError`` otherwise."""
    fields = _dict(raw, where)
    unknown = fields.keys() - _CONFIG_HINTS.keys()
    if unknown:
        raise WireError(f"{where} has unknown fields {sorted(unknown)}")
    lacking = _CONFIG_REQUIRED - fields.keys()
    if lacking:
        raise WireError(f"{where} lacks {sorted(lacking)}")
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("inputs", "outputs"):
            values[key] = tuple(_spec_from_wire(f"{where}: {key}[{i}]", t)
                                for i, t in enumerate(_list(value, f"{where}: {key}")))
            continue
        try:
            values[key] = _accepts(_CONFIG_HINTS[key], value)
        except TypeError:
            raise WireError(f"{where}: {key} has the wrong type ({type(value).__name__})"
                            ) from None
    return ModelConfig(**values)


def _spec_from_wire(where: str, raw: object) -> TensorSpec:
    spec = _dict(raw, where)
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if (not isinstance(name, str) or not isinstance(datatype, str)
            or datatype not in V2_DATATYPES or not isinstance(shape, list)
            or not all(_is_int(d) and d >= -1 for d in shape) or len(spec) != 3):
        raise WireError(f"{where} is not a tensor {{name, datatype, shape}}")
    return TensorSpec(name, datatype, tuple(shape))


# -- entries ----------------------------------------------------------------------------------

def _model_from_wire(name: str, raw: object) -> ModelEntry | Missing:
    where = f"model {name!r}"
    entry = _dict(raw, where)
    if "missing" in entry:
        why = entry["missing"]
        if not isinstance(why, str) or len(entry) != 1:
            raise WireError(f"{where}: 'missing' must be the only field, a string")
        return Missing(why)
    default = entry.get("default")
    versions = {v: _version_from_wire(name, v, e)
                for v, e in _dict(entry.get("versions"), f"{where}: 'versions'").items()}
    if not isinstance(default, str) or default not in versions:
        raise WireError(f"{where}: the default version {default!r} is not one of its versions")
    return ModelEntry(default, versions)


def _version_from_wire(name: str, version: str, raw: object) -> VersionEntry:
    where = f"model {name!r} version {version!r}"
    entry = _dict(raw, where)
    config = config_from_wire(entry.get("config"), f"{where}: 'config'")
    if config.name != name or config.version != version:
        raise WireError(f"{where}: its configuration is of {config.name!r} version "
                        f"{config.version!r}")
    refuse = entry.get("refuse")
    if refuse is not None:
        if not (isinstance(refuse, list) and len(refuse) == 3 and isinstance(refuse[0], str)
                and isinstance(refuse[1], str) and _is_int(refuse[2])):
            raise WireError(f"{where}: 'refuse' must be null or [type, message, retry_after_s]")
        refuse = (refuse[0], refuse[1], refuse[2])
    copies = tuple(_copy_from_wire(f"{where}: copies[{i}]", c)
                   for i, c in enumerate(_list(entry.get("copies", []), f"{where}: 'copies'")))
    if len({c.id for c in copies}) != len(copies):
        raise WireError(f"{where}: a copy is listed twice")
    return VersionEntry(config, refuse, copies)


def _copy_from_wire(where: str, raw: object) -> CopyEntry:
    if not (isinstance(raw, list) and len(raw) == 3 and _is_int(raw[0])
            and isinstance(raw[1], bool) and isinstance(raw[2], str)):
        raise WireError(f"{where} is not [id, ready, inbox]")
    return CopyEntry(raw[0], raw[1], raw[2])


def _region_from_wire(i: int, raw: object) -> Region:
    if not (isinstance(raw, list) and len(raw) == 5
            and all(isinstance(x, str) for x in raw[:3])
            and _is_int(raw[3]) and raw[3] >= 0 and _is_int(raw[4]) and raw[4] >= 0):
        raise WireError(f"regions[{i}] is not [name, key, segment, offset, byte_size]")
    return Region(raw[0], raw[1], raw[2], raw[3], raw[4])


# -- shapes -------------------------------------------------------------------------------------

def _is_int(value: object) -> typing.TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _dict(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise WireError(f"{where} is not an object")
    return raw


def _list(raw: object, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise WireError(f"{where} is not an array")
    return raw
