"""Scenarios: the small declarative files in ``bench/scenarios/`` (pure: no I/O but reading).

A scenario names a model of ``bench/suite/models.yaml``, the *path* a request takes (wire
format and transport), the load (concurrency points and window length per mode) and the
systems that run it::

    name: image-binary
    title: stub, 224x224x3 uint8, HTTP + binary tensor extension
    model: image
    path: http-binary
    fallback: http-json      # a system that lacks the path uses its best one instead
    concurrency: {quick: [16], full: [1, 4, 16, 64]}
    headline: 16             # the concurrency the summary's ratios are taken at
    systems: [inferoxy, triton, pytriton, mlserver, ray]

Optional: ``duration_s`` ({quick, full}; defaults below), ``items_per_request`` (ZeroMQ: rows
per message), ``sequence_length`` (stateful: requests per sequence), ``modes`` (the modes the
scenario runs in; default both). The ideal (the model in-process, no server) is added to every
scenario; the load generator's ceiling (a trivial responder) where the load generator has one.

Every field is checked when loaded; an error names the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MODES = ("quick", "full")
PATHS = ("http-json", "http-binary", "http-shm", "grpc", "grpc-shm", "zmq", "sequence-http")
SYSTEMS = ("inferoxy", "triton", "pytriton", "mlserver", "ray")
DEFAULT_DURATION_S = {"quick": 2.0, "full": 15.0}
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
MODELS_FILE = Path(__file__).resolve().parent / "models.yaml"
DATATYPES = {"FP32": "float32", "UINT8": "uint8", "INT32": "int32", "FP16": "float16",
             "INT64": "int64"}


class ScenarioError(ValueError):
    """A scenario or model file that does not say what the suite needs."""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # per item, batch dimension implied

    @property
    def dtype(self) -> str:
        return DATATYPES[self.datatype]

    @property
    def item_bytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * {"float32": 4, "uint8": 1, "int32": 4, "float16": 2, "int64": 8}[self.dtype]


@dataclass(frozen=True)
class Model:
    """A model as every system serves it (the fields of Inferoxy's models.yaml we use)."""

    name: str
    entrypoint: str  # module:Class
    batch_size: int
    max_queue_delay_us: int
    copies: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    parameters: dict[str, Any]
    stateless: bool
    raw: dict[str, Any]  # the declaration as written (Inferoxy's models.yaml entry)

    def cost_ms(self, batch: int) -> float | None:
        """``a + b*n`` for the synthetic model, None for a model with no declared cost."""
        a, b = self.parameters.get("a_ms"), self.parameters.get("b_ms")
        if a is None or b is None:
            return None
        return float(a) + float(b) * batch


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    model: str
    path: str
    fallback: str | None
    concurrency: dict[str, tuple[int, ...]]
    duration_s: dict[str, float]
    headline: int
    systems: tuple[str, ...]
    items_per_request: int
    sequence_length: int
    modes: tuple[str, ...]
    source: str

    def path_for(self, offered: tuple[str, ...]) -> str | None:
        """The path a system that offers ``offered`` takes: the scenario's, else the fallback."""
        if self.path in offered:
            return self.path
        if self.fallback is not None and self.fallback in offered:
            return self.fallback
        return None


def _need(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise ScenarioError(f"{where}: missing field {key!r}")
    value = doc[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ScenarioError(f"{where}: {key!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number",
                        "list": "a list", "dict": "a mapping", "bool": "true or false"}
                       .get(k.__name__, k.__name__) for k in kinds)


def _positive_ints(value: Any, where: str, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ScenarioError(f"{where}: {key!r} must be a non-empty list of positive integers, "
                            f"got {value!r}")
    return tuple(value)


def parse_scenario(doc: Any, source: str, models: dict[str, Model]) -> Scenario:
    if not isinstance(doc, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping, got {type(doc).__name__}")
    known = {"name", "title", "model", "path", "fallback", "concurrency", "duration_s",
             "headline", "systems", "items_per_request", "sequence_length", "modes"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ScenarioError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
    name = _need(doc, "name", str, source)
    where = f"{source} (scenario {name!r})"
    model = _need(doc, "model", str, where)
    if model not in models:
        raise ScenarioError(f"{where}: model {model!r} is not in {MODELS_FILE.name} "
                            f"(known: {sorted(models)})")
    path = _need(doc, "path", str, where)
    fallback = doc.get("fallback")
    for key, value in (("path", path), ("fallback", fallback)):
        if value is not None and value not in PATHS:
            raise ScenarioError(f"{where}: {key} {value!r} is not one of {list(PATHS)}")
    conc = _need(doc, "concurrency", dict, where)
    modes = tuple(doc.get("modes", MODES))
    if not modes or any(m not in MODES for m in modes):
        raise ScenarioError(f"{where}: 'modes' must be a list drawn from {list(MODES)}")
    concurrency = {}
    for mode in modes:
        if mode not in conc:
            raise ScenarioError(f"{where}: 'concurrency' has no {mode!r} list")
        concurrency[mode] = _positive_ints(conc[mode], where, f"concurrency.{mode}")
    durations = dict(DEFAULT_DURATION_S)
    raw_durations = doc.get("duration_s", {})
    if not isinstance(raw_durations, dict):
        raise ScenarioError(f"{where}: 'duration_s' must be a mapping of mode -> seconds")
    for mode, seconds in raw_durations.items():
        if mode not in MODES or isinstance(seconds, bool) or not isinstance(
                seconds, int | float) or not 0 < seconds <= 600:
            raise ScenarioError(f"{where}: duration_s.{mode} must be seconds in (0, 600], "
                                f"got {seconds!r}")
        durations[mode] = float(seconds)
    headline = doc.get("headline", max(concurrency[modes[0]]))
    if isinstance(headline, bool) or not isinstance(headline, int) or headline <= 0:
        raise ScenarioError(f"{where}: 'headline' must be a positive integer")
    if headline not in concurrency[modes[0]]:
        raise ScenarioError(f"{where}: headline {headline} is not among the {modes[0]} "
                            f"concurrency points {list(concurrency[modes[0]])}")
    systems = _need(doc, "systems", list, where)
    if not systems or any(s not in SYSTEMS for s in systems):
        raise ScenarioError(f"{where}: 'systems' must be a non-empty list drawn from "
                            f"{list(SYSTEMS)}, got {systems!r}")
    items = doc.get("items_per_request", 1)
    seq = doc.get("sequence_length", 0)
    for key, value in (("items_per_request", items), ("sequence_length", seq)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ScenarioError(f"{where}: {key!r} must be a non-negative integer")
    if path == "sequence-http" and seq < 1:
        raise ScenarioError(f"{where}: a sequence-http scenario needs sequence_length >= 1")
    if path == "sequence-http" and models[model].stateless:
        raise ScenarioError(f"{where}: path sequence-http needs a stateful model, "
                            f"{model!r} is stateless")
    return Scenario(name=name, title=str(doc.get("title", name)), model=model, path=path,
                    fallback=fallback, concurrency=concurrency, duration_s=durations,
                    headline=headline, systems=tuple(systems), items_per_request=max(items, 1),
                    sequence_length=seq, modes=modes, source=source)


def _tensors(raw: Any, where: str, key: str) -> tuple[Tensor, ...]:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f"{where}: {key!r} must be a non-empty list")
    out = []
    for t in raw:
        if not isinstance(t, dict) or t.get("datatype") not in DATATYPES:
            raise ScenarioError(f"{where}: {key} entry {t!r} needs a datatype among "
                                f"{sorted(DATATYPES)}")
        out.append(Tensor(str(t["name"]), t["datatype"],
                          _positive_ints(t.get("shape"), where, f"{key}.shape")))
    return tuple(out)


def parse_model(name: str, raw: Any) -> Model:
    where = f"{MODELS_FILE.name} (model {name!r})"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a model is a mapping")
    return Model(
        name=name,
        entrypoint=_need(raw, "entrypoint", str, where),
        batch_size=_need(raw, "batch_size", int, where),
        max_queue_delay_us=int(raw.get("max_queue_delay_us", 0)),
        copies=int(raw.get("copies", 1)),
        inputs=_tensors(raw.get("inputs"), where, "inputs"),
        outputs=_tensors(raw.get("outputs"), where, "outputs"),
        parameters=dict(raw.get("parameters") or {}),
        stateless=bool(raw.get("stateless", True)),
        raw=dict(raw),
    )


def load_models(path: Path = MODELS_FILE) -> dict[str, Model]:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ScenarioError(f"{path}: expected a 'models' mapping")
    return {name: parse_model(name, raw) for name, raw in doc["models"].items()}


def load_scenarios(directory: Path = SCENARIO_DIR,
                   models: dict[str, Model] | None = None) -> list[Scenario]:
    """Every ``*.yaml`` of ``directory``, sorted by file name; names must be unique."""
    models = load_models() if models is None else models
    out: list[Scenario] = []
    for file in sorted(directory.glob("*.yaml")):
        try:
            doc = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{file.name}: not valid YAML: {exc}") from None
        out.append(parse_scenario(doc, file.name, models))
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScenarioError(f"{directory}: scenario names used twice: {dupes}")
    return out


def select(scenarios: list[Scenario], names: str | None, mode: str) -> list[Scenario]:
    """The scenarios ``--scenarios a,b`` names (all of ``mode``'s when None)."""
    in_mode = [s for s in scenarios if mode in s.modes]
    if not names:
        return in_mode
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name: s for s in scenarios}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise ScenarioError(f"unknown scenario(s) {missing}; known: {sorted(known)}")
    return [known[n] for n in wanted]
