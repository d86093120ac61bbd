"""A repository load's configuration override (``parameters.config``), read as Triton clients
write it: Triton's ``ModelConfig`` JSON, mapped onto the model's declaration. I/O-free.

The override changes the fields it names and keeps the rest of the declaration (Triton would
take it whole; a partial override such as ``{"max_batch_size": 2}`` is what clients send).
What it can say, and the declaration field each maps to:

* ``max_batch_size`` -> ``batch_size`` (0: no batch dimension);
* ``input`` / ``output``: ``[{name, data_type: "TYPE_FP32", dims}]`` -> ``inputs`` / ``outputs``;
* ``dynamic_batching``: ``max_queue_delay_microseconds``, ``default_queue_policy.max_queue_size``
  (and a stateless model); ``sequence_batching``: ``max_sequence_idle_microseconds`` (stateful);
* ``instance_group``: one group, ``count`` -> ``copies``, ``kind`` -> ``run_on_gpu``;
* ``model_transaction_policy``: ``decoupled`` -> ``decoupled``;
* ``parameters``: ``{k: {"string_value": v}}`` -> ``parameters`` (``v`` read as JSON when it is a
  number or a boolean, else kept as the string);
* ``name`` (must be the model's), ``platform``, ``backend``, ``version_policy`` are accepted
  and change nothing: what runs is the declared entrypoint, in the declared versions.

Anything else, a value of the wrong type, or a result the declaration's own validation
refuses, is an ``InvalidArgument`` — and nothing is changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.config import ConfigError
from gateway.declaration import ModelDeclaration, parse_declaration
from gateway.errors import InvalidArgument

ACCEPTED_IGNORED = frozenset({"name", "platform", "backend", "version_policy"})
_TOP = ACCEPTED_IGNORED | {"max_batch_size", "input", "output", "dynamic_batching",
                           "sequence_batching", "instance_group", "parameters",
                           "model_transaction_policy"}
CONFIG_TO_V2 = {"TYPE_STRING": "BYTES"}  # the rest: TYPE_<v2 name>


def load_override(declaration: ModelDeclaration, parameters: Mapping[str, Any] | None
                  ) -> ModelDeclaration | None:
    """The declaration a load with ``parameters`` asks for; None without ``config``."""
    parameters = parameters or {}
    files = sorted(k for k in parameters if k.startswith("file:"))
    if files:
        raise InvalidArgument(f"model files in a load request ({files[0]}, ...) are not "
                              "supported: declare the model and load it by name")
    raw = parameters.get("config")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidArgument("parameters.config must be a string of JSON (a model config)")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"parameters.config is not valid JSON: {exc}") from None
    return apply_override(declaration, doc)


def apply_override(declaration: ModelDeclaration, doc: Any) -> ModelDeclaration:
    fields = override_fields(declaration.name, doc)
    raw = {**declaration.raw, **fields}
    if "versions" in raw:  # the override wins over what a version says of the same field
        raw["versions"] = {v: {k: x for k, x in f.items() if k not in fields}
                           for v, f in raw["versions"].items()}
    try:
        return parse_declaration(declaration.name, raw)
    except ConfigError as exc:
        raise InvalidArgument(f"the config override is invalid: {exc}") from None


def override_fields(model: str, doc: Any) -> dict[str, Any]:
    """The declaration fields a Triton model config names."""
    if not isinstance(doc, dict):
        raise InvalidArgument("parameters.config must be a JSON object (a model config)")
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise InvalidArgument(f"the config override sets {unknown}, which this server "
                              f"cannot honour (it takes {sorted(_TOP)})")
    if "name" in doc and doc["name"] != model:
        raise InvalidArgument(f"the config override names model {doc['name']!r}, not "
                              f"{model!r}")
    fields: dict[str, Any] = {}
    if "max_batch_size" in doc:
        fields["batch_size"] = _int(doc["max_batch_size"], "max_batch_size")
    for key, field in (("input", "inputs"), ("output", "outputs")):
        if key in doc:
            fields[field] = _tensors(doc[key], key)
    if "dynamic_batching" in doc and "sequence_batching" in doc:
        raise InvalidArgument("the config override sets both dynamic_batching and "
                              "sequence_batching")
    if "dynamic_batching" in doc:
        fields |= {"stateless": True} | _dynamic(_obj(doc["dynamic_batching"],
                                                      "dynamic_batching"))
    if "sequence_batching" in doc:
        fields |= {"stateless": False} | _sequence(_obj(doc["sequence_batching"],
                                                        "sequence_batching"))
    if "instance_group" in doc:
        fields |= _instances(doc["instance_group"])
    if "parameters" in doc:
        fields["parameters"] = _parameters(_obj(doc["parameters"], "parameters"))
    if "model_transaction_policy" in doc:
        policy = _obj(doc["model_transaction_policy"], "model_transaction_policy")
        _only(policy, "model_transaction_policy", {"decoupled"})
        if not isinstance(policy.get("decoupled", False), bool):
            raise InvalidArgument("config override: model_transaction_policy.decoupled must be "
                                  "true or false")
        fields["decoupled"] = policy.get("decoupled", False)
    return fields


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"config override: {where} must be an object")
    return value


def _only(doc: dict[str, Any], where: str, allowed: set[str]) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise InvalidArgument(f"config override: {where} sets {extra}, which this server "
                              f"cannot honour (it takes {sorted(allowed)})")


def _int(value: Any, where: str) -> int:
    # Protobuf's JSON form writes 64-bit integers as strings ("100").
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"config override: {where} must be an integer, got {value!r}")
    return value


def _tensors(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidArgument(f"config override: {where} must be an array of tensors")
    tensors = []
    for i, t in enumerate(value):
        t = _obj(t, f"{where}[{i}]")
        _only(t, f"{where}[{i}]", {"name", "data_type", "dims"})
        data_type = t.get("data_type")
        if not isinstance(data_type, str) or not data_type.startswith("TYPE_"):
            raise InvalidArgument(f"config override: {where}[{i}].data_type must be a "
                                  f"TYPE_* name, got {data_type!r}")
        dims = t.get("dims")
        if not isinstance(dims, list):
            raise InvalidArgument(f"config override: {where}[{i}].dims must be an array")
        tensors.append({
            "name": t.get("name"),
            "datatype": CONFIG_TO_V2.get(data_type, data_type.removeprefix("TYPE_")),
            "shape": [_int(d, f"{where}[{i}].dims") for d in dims],
        })
    return tensors


def _dynamic(doc: dict[str, Any]) -> dict[str, Any]:
    _only(doc, "dynamic_batching", {"max_queue_delay_microseconds", "default_queue_policy"})
    fields: dict[str, Any] = {}
    if "max_queue_delay_microseconds" in doc:
        fields["max_queue_delay_us"] = _int(doc["max_queue_delay_microseconds"],
                                            "dynamic_batching.max_queue_delay_microseconds")
    if "default_queue_policy" in doc:
        policy = _obj(doc["default_queue_policy"], "dynamic_batching.default_queue_policy")
        _only(policy, "dynamic_batching.default_queue_policy", {"max_queue_size"})
        if "max_queue_size" in policy:
            fields["max_queue_size"] = _int(
                policy["max_queue_size"], "dynamic_batching.default_queue_policy.max_queue_size")
    return fields


def _sequence(doc: dict[str, Any]) -> dict[str, Any]:
    _only(doc, "sequence_batching", {"max_sequence_idle_microseconds", "direct"})
    if "max_sequence_idle_microseconds" in doc:
        return {"max_sequence_idle_us": _int(doc["max_sequence_idle_microseconds"],
                                             "sequence_batching.max_sequence_idle_microseconds")}
    return {}


def _instances(value: Any) -> dict[str, Any]:
    if not isinstance(value, list) or len(value) != 1:
        raise InvalidArgument("config override: instance_group must hold one group")
    group = _obj(value[0], "instance_group[0]")
    _only(group, "instance_group[0]", {"name", "kind", "count", "gpus"})
    fields: dict[str, Any] = {}
    if "count" in group:
        fields["copies"] = _int(group["count"], "instance_group[0].count")
    kind = group.get("kind")
    if kind is not None:
        if kind not in ("KIND_CPU", "KIND_GPU"):
            raise InvalidArgument(f"config override: instance_group[0].kind must be KIND_CPU or "
                                  f"KIND_GPU, got {kind!r}")
        fields["run_on_gpu"] = kind == "KIND_GPU"
    return fields


def _parameters(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if not isinstance(value, dict) or set(value) != {"string_value"} or not isinstance(
                value["string_value"], str):
            raise InvalidArgument(f"config override: parameters.{key} must be "
                                  '{"string_value": "..."}')
        text = value["string_value"]
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        out[key] = parsed if isinstance(parsed, int | float | bool) else text
    return out
