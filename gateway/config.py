"""Model declarations (``models.yaml``, the Inferoxy format) and their validation.

A model's tensors are declared per item: the batch dimension is implied (as Triton's
``dims`` with ``max_batch_size > 0``) and shown as ``-1`` in metadata. ``-1`` in a declared
shape is a variable dimension. ``batch_size: 0`` (Triton's ``max_batch_size: 0``) declares a
model without a batch dimension: the shapes are whole shapes, as clients send them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shm.datatypes import V2_DATATYPES

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TENSOR_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ConfigError(ValueError):
    """A declaration is invalid; the message names the model and field."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # v2 datatype, e.g. "FP32"
    shape: tuple[int, ...]  # per item; -1 = variable

    def accepts(self, item_shape: tuple[int, ...]) -> bool:
        if item_shape == self.shape:  # the usual case, at the cost of one comparison
            return True
        return len(item_shape) == len(self.shape) and all(
            d == -1 or d == s for d, s in zip(self.shape, item_shape, strict=True)
        )

    def to_metadata(self, batched: bool = True) -> dict[str, Any]:
        shape = [-1, *self.shape] if batched else list(self.shape)
        return {"name": self.name, "datatype": self.datatype, "shape": shape}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    entrypoint: str  # module:Class, for the local runtime
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    address: str = ""  # container image, for the docker runtime
    version: str = "1"
    batch_size: int = 1  # most rows in one batch; 0: no batch dimension (one request a run)
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024
    run_on_gpu: bool = False
    stateless: bool = True
    copies: int = 1
    max_sequence_idle_us: int = 5_000_000  # stateful: an idle sequence is released after this
    max_sequences_per_copy: int = 1  # stateful: 1 = a copy is one client's (Inferoxy's rule)
    parameters: dict[str, Any] = field(default_factory=dict)
    # Autoscaling (``supervisor.autoscale``); None: the model's full size, nothing scales.
    min_copies: int | None = None
    max_copies: int | None = None
    scale_up_queue_delay_us: int | None = None  # None: max(100 ms, 2 x max_queue_delay_us)
    scale_up_after_s: float = 1.0  # the queue delay must stay over target this long
    scale_down_idle_s: float = 300.0  # a copy's worth of capacity idle this long goes
    # One batch (or health check) running longer than this is a hang and the copy is replaced;
    # None: the gateway's --hang-timeout-s. Per model: a detector and a tracker differ 100-fold.
    hang_timeout_s: float | None = None
    # Decoupled (Triton's ``model_transaction_policy { decoupled: true }``): ``predict`` may
    # yield any number of responses per request, served over gRPC ModelStreamInfer only.
    decoupled: bool = False

    @property
    def batched(self) -> bool:
        """Whether requests carry a batch dimension (``batch_size`` > 0)."""
        return self.batch_size > 0

    @property
    def max_rows(self) -> int:
        """The most rows one batch holds. Without a batch dimension each request is one row:
        the gateway gives its tensors a leading dimension of 1 on their way to the model."""
        return self.batch_size or 1

    @property
    def scale_up_delay_s(self) -> float:
        """The queue delay over which a copy is added."""
        if self.scale_up_queue_delay_us is not None:
            return self.scale_up_queue_delay_us / 1e6
        return max(0.1, 2 * self.max_queue_delay_us / 1e6)

    def input(self, name: str) -> TensorSpec | None:
        for t in self.inputs:  # a loop, not next(genexpr): this runs for every request
            if t.name == name:
                return t
        return None

    def output(self, name: str) -> TensorSpec | None:
        for t in self.outputs:
            if t.name == name:
                return t
        return None


_MODEL_FIELDS = {
    "entrypoint", "address", "version", "batch_size", "max_queue_delay_us", "max_queue_size",
    "run_on_gpu", "stateless", "copies", "inputs", "outputs", "parameters",
    "max_sequence_idle_us", "max_sequences_per_copy",
    "min_copies", "max_copies", "scale_up_queue_delay_us", "scale_up_after_s",
    "scale_down_idle_s", "hang_timeout_s", "decoupled",
}


def _int(model: str, key: str, raw: Any, default: int, lo: int, hi: int) -> int:
    value = default if raw is None else raw
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"model {model!r}: {key} must be an integer in [{lo}, {hi}], got {raw!r}")
    return value


def _opt_int(model: str, key: str, raw: Any, lo: int, hi: int) -> int | None:
    return None if raw is None else _int(model, key, raw, 0, lo, hi)


def _seconds(model: str, key: str, raw: Any, default: float, lo: float, hi: float) -> float:
    value = default if raw is None else raw
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(
            f"model {model!r}: {key} must be a number of seconds in [{lo:g}, {hi:g}], got {raw!r}"
        )
    return float(value)


def _bool(model: str, key: str, raw: Any, default: bool) -> bool:
    value = default if raw is None else raw
    if not isinstance(value, bool):
        raise ConfigError(f"model {model!r}: {key} must be true or false, got {raw!r}")
    return value


def _tensors(model: str, key: str, raw: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"model {model!r}: {key} must be a non-empty list of tensors")
    specs: list[TensorSpec] = []
    for i, t in enumerate(raw):
        where = f"model {model!r}: {key}[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{where} must be a mapping with name, datatype, shape")
        name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or not TENSOR_NAME_RE.match(name):
            raise ConfigError(f"{where}.name must match {TENSOR_NAME_RE.pattern}, got {name!r}")
        if datatype not in V2_DATATYPES:
            raise ConfigError(
                f"{where}.datatype must be one of {sorted(V2_DATATYPES)}, got {datatype!r}"
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape
        ):
            raise ConfigError(f"{where}.shape must be a list of positive ints or -1, got {shape!r}")
        if any(s.name == name for s in specs):
            raise ConfigError(f"{where}.name {name!r} is declared twice")
        specs.append(TensorSpec(name, datatype, tuple(shape)))
    return tuple(specs)


def parse_model(name: Any, raw: Any) -> ModelConfig:
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise ConfigError(f"model name must match {MODEL_NAME_RE.pattern}, got {name!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"model {name!r}: declaration must be a mapping")
    unknown = sorted(set(raw) - _MODEL_FIELDS)
    if unknown:
        raise ConfigError(f"model {name!r}: unknown field(s) {unknown}")
    entrypoint = raw.get("entrypoint")
    if not isinstance(entrypoint, str) or not ENTRYPOINT_RE.match(entrypoint):
        raise ConfigError(f"model {name!r}: entrypoint must be 'module:Class', got {entrypoint!r}")
    address = raw.get("address", "")
    if not isinstance(address, str):
        raise ConfigError(f"model {name!r}: address must be a string")
    version = str(raw.get("version", "1"))
    if not version.isdigit():
        raise ConfigError(f"model {name!r}: version must be a positive integer, got {version!r}")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise ConfigError(f"model {name!r}: parameters must be a mapping of names to values")
    return ModelConfig(
        name=name,
        entrypoint=entrypoint,
        address=address,
        version=version,
        inputs=_tensors(name, "inputs", raw.get("inputs")),
        outputs=_tensors(name, "outputs", raw.get("outputs")),
        batch_size=_int(name, "batch_size", raw.get("batch_size"), 1, 0, 4096),
        max_queue_delay_us=_int(
            name, "max_queue_delay_us", raw.get("max_queue_delay_us"), 0, 0, 10_000_000
        ),
        max_queue_size=_int(name, "max_queue_size", raw.get("max_queue_size"), 1024, 1, 1 << 20),
        run_on_gpu=_bool(name, "run_on_gpu", raw.get("run_on_gpu"), False),
        stateless=_bool(name, "stateless", raw.get("stateless"), True),
        copies=_int(name, "copies", raw.get("copies"), 1, 0, 64),
        max_sequence_idle_us=_int(
            name, "max_sequence_idle_us", raw.get("max_sequence_idle_us"), 5_000_000, 0,
            24 * 3600 * 1_000_000,
        ),
        max_sequences_per_copy=_int(
            name, "max_sequences_per_copy", raw.get("max_sequences_per_copy"), 1, 1, 4096
        ),
        parameters=dict(parameters),
        decoupled=_decoupled(name, raw),
        hang_timeout_s=None if raw.get("hang_timeout_s") is None else _seconds(
            name, "hang_timeout_s", raw.get("hang_timeout_s"), 0.0, 0.1, 24 * 3600.0),
        **_scaling(name, raw),
    )


def _decoupled(name: str, raw: dict[str, Any]) -> bool:
    decoupled = _bool(name, "decoupled", raw.get("decoupled"), False)
    if decoupled and (raw.get("batch_size", 1) not in (0, 1) or raw.get("stateless") is False):
        raise ConfigError(f"model {name!r}: a decoupled model runs one request at a time: "
                          "batch_size must be 0 or 1, and the model stateless")
    return decoupled


def _scaling(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    lo = _opt_int(name, "min_copies", raw.get("min_copies"), 1, 64)
    hi = _opt_int(name, "max_copies", raw.get("max_copies"), 1, 64)
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"model {name!r}: min_copies {lo} is more than max_copies {hi}")
    return {
        "min_copies": lo,
        "max_copies": hi,
        "scale_up_queue_delay_us": _opt_int(
            name, "scale_up_queue_delay_us", raw.get("scale_up_queue_delay_us"), 1, 600_000_000
        ),
        "scale_up_after_s": _seconds(
            name, "scale_up_after_s", raw.get("scale_up_after_s"), 1.0, 0.0, 3600.0
        ),
        "scale_down_idle_s": _seconds(
            name, "scale_down_idle_s", raw.get("scale_down_idle_s"), 300.0, 0.0, 7 * 86400.0
        ),
    }


def read_models_file(path: str | Path) -> dict[Any, Any]:
    """The ``models`` mapping of a ``models.yaml``; ``ConfigError`` if unreadable or misshapen."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read models file {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'models' mapping at the top")
    models: dict[Any, Any] = doc["models"]
    return models


def load_models(path: str | Path) -> dict[str, ModelConfig]:
    """Parse and validate a ``models.yaml``; raises ``ConfigError`` naming the bad field."""
    return {name: parse_model(name, raw) for name, raw in read_models_file(path).items()}
