"""A model's declaration: its numbered versions, each a ``ModelConfig``, and its default.

The declaration is what the registry stores (one JSON value per model, the same fields as
``models.yaml``) and what the management API reads and writes. Two forms:

* flat, as ever: the model-level fields declare one version, ``version`` (default ``"1"``);
* versioned: ``versions`` maps version numbers to the fields that differ from the model-level
  ones, which every version shares::

      synthetic:
        entrypoint: examples.models.synthetic:Synthetic
        inputs: [...]
        outputs: [...]
        default_version: "1"        # optional pin; default: the latest READY version
        versions:
          "1": {parameters: {a_ms: 20.0}}
          "2": {parameters: {a_ms: 5.0}, batch_size: 32}

  A version's fields replace the model-level ones key by key (a version's ``parameters``
  replaces the shared ``parameters`` whole). Every version is validated as a flat model
  (``gateway.config.parse_model``); errors name the version and the field.

Version numbers are positive integers, kept as strings (as the v2 protocol carries them);
"latest" means the highest number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gateway.config import MODEL_NAME_RE, ConfigError, ModelConfig, parse_model, read_models_file

VERSIONED_FIELDS = {"versions", "default_version"}
MAX_VERSIONS = 32


def _version_key(raw: Any, name: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ConfigError(f"model {name!r}: versions keys must be positive integers, got {raw!r}")
    key = str(raw)
    if not key.isdigit() or int(key) < 1 or len(key) > 9:
        raise ConfigError(f"model {name!r}: versions keys must be positive integers, got {raw!r}")
    return str(int(key))  # "01" -> "1"


@dataclass(frozen=True, slots=True, eq=False)
class ModelDeclaration:
    """One model as declared: ``versions`` ordered by number, and the JSON it came from."""

    name: str
    versions: dict[str, ModelConfig]  # version -> config, ascending
    default_version: str | None  # pinned; None: the latest READY version
    raw: dict[str, Any]  # the declaration as stored (JSON-able, normalised keys)

    @property
    def latest(self) -> str:
        return next(reversed(self.versions))

    def same_as(self, other: ModelDeclaration | None) -> bool:
        return other is not None and self.raw == other.raw

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True, separators=(",", ":"))

    @classmethod
    def single(cls, config: ModelConfig) -> ModelDeclaration:
        """A one-version declaration around an already parsed config (embedding, tests)."""
        return cls(config.name, {config.version: config}, None, config_to_raw(config))


def config_to_raw(config: ModelConfig) -> dict[str, Any]:
    """The flat declaration that parses back to ``config``."""
    raw: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "name" or value is None:
            continue
        if f.name in ("inputs", "outputs"):
            value = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                     for t in value]
        raw[f.name] = value
    return json.loads(json.dumps(raw))


def parse_declaration(name: Any, raw: Any) -> ModelDeclaration:
    """Validate a declaration (flat or versioned); raises ``ConfigError`` naming the field."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise ConfigError(f"model name must match {MODEL_NAME_RE.pattern}, got {name!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"model {name!r}: declaration must be a mapping")
    try:
        normal = json.loads(json.dumps(raw))  # what the registry will store, and read back
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: declaration must be plain JSON data: {exc}") from None
    shared = {k: v for k, v in normal.items() if k not in VERSIONED_FIELDS}
    versions: dict[str, ModelConfig] = {}
    if "versions" in raw:
        table = raw["versions"]
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"model {name!r}: versions must be a non-empty mapping of version "
                              "numbers to fields")
        if len(table) > MAX_VERSIONS:
            raise ConfigError(f"model {name!r}: versions: at most {MAX_VERSIONS} versions")
        if "version" in shared:
            raise ConfigError(f"model {name!r}: version and versions are exclusive; "
                              "number the versions under versions")
        normal_table: dict[str, Any] = {}
        for key_raw, fields in table.items():
            key = _version_key(key_raw, name)
            if key in normal_table:
                raise ConfigError(f"model {name!r}: versions: version {key!r} is declared twice")
            fields = {} if fields is None else fields
            if not isinstance(fields, dict):
                raise ConfigError(f"model {name!r}: versions.{key} must be a mapping of fields")
            bad = sorted(set(fields) & (VERSIONED_FIELDS | {"version"}))
            if bad:
                raise ConfigError(f"model {name!r}: versions.{key}: field(s) {bad} belong to "
                                  "the model, not a version")
            normal_table[key] = json.loads(json.dumps(fields))
        for key in sorted(normal_table, key=int):
            versions[key] = _parse_version(name, key, {**shared, **normal_table[key],
                                                       "version": key})
        normal["versions"] = {k: normal_table[k] for k in sorted(normal_table, key=int)}
    else:
        config = parse_model(name, shared)
        versions[config.version] = config
    default = raw.get("default_version")
    if default is not None:
        default = _version_key(default, name) if str(default).isdigit() else str(default)
        if default not in versions:
            raise ConfigError(f"model {name!r}: default_version {default!r} is not one of the "
                              f"declared versions {list(versions)}")
        normal["default_version"] = default
    return ModelDeclaration(name, versions, default, normal)


def _parse_version(name: str, version: str, fields: dict[str, Any]) -> ModelConfig:
    try:
        return parse_model(name, fields)
    except ConfigError as exc:
        prefix = f"model {name!r}:"
        message = str(exc)
        if message.startswith(prefix):
            message = f"model {name!r} version {version!r}:" + message[len(prefix):]
        raise ConfigError(message) from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: mappings merge recursively, ``null`` removes a key."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_declarations(path: str | Path) -> dict[str, ModelDeclaration]:
    """Parse and validate a ``models.yaml``; raises ``ConfigError`` naming the bad field."""
    return {str(name): parse_declaration(name, raw)
            for name, raw in read_models_file(path).items()}


def as_declarations(
    models: Mapping[str, ModelConfig | ModelDeclaration],
) -> dict[str, ModelDeclaration]:
    return {
        name: m if isinstance(m, ModelDeclaration) else ModelDeclaration.single(m)
        for name, m in models.items()
    }
