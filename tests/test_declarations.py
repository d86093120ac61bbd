"""Model declarations (flat and versioned) and merge patches: I/O-free."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, load_models
from gateway.declaration import ModelDeclaration, merge_patch, parse_declaration
from tests.conftest import ROOT

BASE: dict[str, Any] = {
    "entrypoint": "m:C",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
}


def test_the_flat_form_is_one_version() -> None:
    d = parse_declaration("m", {**BASE, "batch_size": 4})
    assert list(d.versions) == ["1"] and d.latest == "1" and d.default_version is None
    assert d.versions["1"].batch_size == 4
    assert list(parse_declaration("m", {**BASE, "version": 3}).versions) == ["3"]


def test_versions_share_the_model_fields_and_override_them() -> None:
    d = parse_declaration("m", {**BASE, "batch_size": 4, "parameters": {"a": 1, "b": 2},
                                "versions": {10: {"parameters": {"a": 5}}, "2": None,
                                             "1": {"batch_size": 8}}})
    assert list(d.versions) == ["1", "2", "10"] and d.latest == "10"
    assert d.versions["1"].batch_size == 8 and d.versions["2"].batch_size == 4
    assert d.versions["10"].parameters == {"a": 5}  # replaced whole, not merged
    assert d.versions["2"].parameters == {"a": 1, "b": 2}
    assert all(c.version == v for v, c in d.versions.items())
    assert list(d.raw["versions"]) == ["1", "2", "10"]  # normalised, JSON-able


@pytest.mark.parametrize(("raw", "message"), [
    ({"versions": {}}, "versions must be a non-empty mapping"),
    ({"versions": {"one": {}}}, "versions keys must be positive integers"),
    ({"versions": {"0": {}}}, "versions keys must be positive integers"),
    ({"versions": {"1": []}}, "versions.1 must be a mapping"),
    ({"versions": {"1": {"default_version": "1"}}}, "belong to the model"),
    ({"version": "1", "versions": {"1": {}}}, "version and versions are exclusive"),
    ({"versions": {"1": {}, "2": {"copies": -1}}}, "model 'm' version '2': copies"),
    ({"versions": {"1": {}}, "default_version": "2"}, "default_version '2' is not one of"),
    ({"parameters": {"when": object()}}, "plain JSON"),
    ({"versions": {"1": {"hang_timeout_s": 0}}}, "hang_timeout_s must be a number of seconds"),
])
def test_invalid_declarations_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_declaration("m", {**BASE, **raw})


@pytest.mark.parametrize("name", ["../etc", "a:b", "a*", "", "-x", 7])
def test_names_are_validated(name: Any) -> None:
    with pytest.raises(ConfigError, match="model name"):
        parse_declaration(name, BASE)


def test_merge_patch() -> None:
    target = {"a": 1, "p": {"x": 1, "y": 2}, "l": [1, 2]}
    assert merge_patch(target, {"p": {"x": None, "z": 3}, "l": [3], "a": None}) == {
        "p": {"y": 2, "z": 3}, "l": [3]}
    assert target == {"a": 1, "p": {"x": 1, "y": 2}, "l": [1, 2]}  # not changed in place


def test_a_parsed_config_round_trips_through_its_declaration() -> None:
    for name, config in load_models(ROOT / "tests" / "models.yaml").items():
        declaration = ModelDeclaration.single(config)
        assert parse_declaration(name, declaration.raw).versions == {config.version: config}
