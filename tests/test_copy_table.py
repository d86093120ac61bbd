"""The copy table the control process publishes to data-plane processes (``gateway.copy_table``):
its wire round trip, hostile tables, and a data-plane process's link dropping a malformed one.

Milliseconds: no gateway runs here (``tests/test_dataplanes.py`` runs the tables for real).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from gateway import bridge_wire as bw
from gateway.config import ModelConfig, TensorSpec
from gateway.copy_table import (
    CopyEntry,
    CopyTable,
    Missing,
    ModelEntry,
    VersionEntry,
    config_from_wire,
    config_to_wire,
)
from gateway.errors import Unavailable
from gateway.intake import error_from_wire, error_to_wire
from shm.regions import Region
from tests.core_side import core_end, receive_at_core

STATELESS = ModelConfig(
    "tiny", "examples.models.stub:Identity",
    (TensorSpec("INPUT", "FP32", (16,)), TensorSpec("TEXT", "BYTES", (-1,))),
    (TensorSpec("OUTPUT", "FP32", (16,)),),
    version="2", batch_size=16, copies=2, parameters={"scale": [1, 2]}, min_copies=1,
    hang_timeout_s=2.5)
STATEFUL = ModelConfig("sum", "examples.models.stub:RunningSum",
                       (TensorSpec("X", "INT32", (1,)),), (TensorSpec("Y", "INT32", (1,)),),
                       stateless=False)
TINY_1 = ModelConfig("tiny", "examples.models.stub:Identity", (), (), version="1")
RUN_DIR = "/run/inferoxy-test"


def table() -> CopyTable:
    return CopyTable(
        {
            "tiny": ModelEntry("2", {
                "2": VersionEntry(STATELESS, None, (
                    CopyEntry(1, True, f"ipc://{RUN_DIR}/copy-1-100.sock"),
                    CopyEntry(2, False, ""))),
                "1": VersionEntry(
                    TINY_1, error_to_wire(Unavailable("no copy of version 1 is ready", 3))),
            }),
            "sum": ModelEntry("1", {"1": VersionEntry(STATEFUL, None)}),
            "gone": Missing("model 'gone' failed to load"),
        },
        (Region("r0", "/in0", "client-seg", 64, 4096),),
    )


def on_the_wire(t: CopyTable) -> dict[str, Any]:
    """A TABLE body as a data-plane process receives it: JSON, through orjson."""
    return orjson.loads(bw.encode(bw.TABLE, {"gen": 7, **t.to_wire()})[1])


def test_round_trip_gives_the_same_table() -> None:
    sent = table()
    got = CopyTable.from_wire(on_the_wire(sent))
    assert got == sent
    tiny = got.models["tiny"]
    assert isinstance(tiny, ModelEntry) and tiny.default == "2"
    v2 = tiny.versions["2"]
    assert v2.config == STATELESS and v2.config.inputs[1].shape == (-1,)
    assert v2.copies[0] == CopyEntry(1, True, f"ipc://{RUN_DIR}/copy-1-100.sock")
    refusal = tiny.versions["1"].refuse
    assert refusal is not None
    err = error_from_wire(refusal)  # what a data-plane process raises at once
    assert isinstance(err, Unavailable) and err.retry_after_s == 3 and err.http_status == 503
    assert got.models["gone"] == Missing("model 'gone' failed to load")
    assert got.regions == (Region("r0", "/in0", "client-seg", 64, 4096),)


def test_config_round_trip_keeps_every_field() -> None:
    for config in (STATELESS, STATEFUL):
        assert config_from_wire(orjson.loads(orjson.dumps(config_to_wire(config)))) == config


def test_fingerprint_changes_with_what_a_data_plane_process_acts_on() -> None:
    base = table()
    assert base.fingerprint() == table().fingerprint()  # same objects, same table
    tiny = base.models["tiny"]
    assert isinstance(tiny, ModelEntry)

    def with_tiny(**changes: Any) -> CopyTable:
        versions = dict(tiny.versions)
        versions["2"] = VersionEntry(**{"config": STATELESS, "refuse": None,
                                        "copies": versions["2"].copies, **changes})
        return CopyTable({**base.models, "tiny": ModelEntry("2", versions)}, base.regions)

    ready = (CopyEntry(1, True, f"ipc://{RUN_DIR}/copy-1-100.sock"),
             CopyEntry(2, True, f"ipc://{RUN_DIR}/copy-2-101.sock"))
    changed = [
        with_tiny(copies=ready),  # a copy became ready
        with_tiny(copies=ready[:1]),  # a copy left
        with_tiny(refuse=("Unavailable", "draining", 1)),
        # a new declaration is a new object, even when it says the same
        with_tiny(config=config_from_wire(orjson.loads(orjson.dumps(config_to_wire(STATELESS))))),
        CopyTable({**base.models, "tiny": ModelEntry("1", tiny.versions)}, base.regions),
        CopyTable({**base.models, "gone": Missing("another reason")}, base.regions),
        CopyTable(base.models),  # a region was unregistered
    ]
    prints = {base.fingerprint(), *(t.fingerprint() for t in changed)}
    assert len(prints) == len(changed) + 1


def test_missing_regions_mean_none() -> None:
    body = on_the_wire(table())
    del body["regions"]
    assert CopyTable.from_wire(body).regions == ()


HOSTILE: list[tuple[str, Any]] = [
    ("the table is not an object", lambda b: ["models"]),
    ("'models' is not an object", lambda b: b | {"models": [1]}),
    ("a model is not an object", lambda b: b["models"].update(tiny=None)),
    ("missing with other fields", lambda b: b["models"]["gone"].update(default="1")),
    ("missing is not a string", lambda b: b["models"].update(gone={"missing": 3})),
    ("no default", lambda b: b["models"]["tiny"].pop("default")),
    ("a default that is not a version", lambda b: b["models"]["tiny"].update(default="9")),
    ("no versions", lambda b: b["models"]["sum"].pop("versions")),
    ("a version is not an object", lambda b: b["models"]["sum"]["versions"].update({"1": 5})),
    ("no config", lambda b: b["models"]["sum"]["versions"]["1"].pop("config")),
    ("a config of another model", lambda b: _config(b).update(name="sum")),
    ("a config of another version", lambda b: _config(b).update(version="1")),
    ("an unknown config field", lambda b: _config(b).update(gpu_memory=1)),
    ("a config without inputs", lambda b: _config(b).pop("inputs")),
    ("batch_size a string", lambda b: _config(b).update(batch_size="16")),
    ("batch_size a boolean", lambda b: _config(b).update(batch_size=True)),
    ("stateless a number", lambda b: _config(b).update(stateless=1)),
    ("min_copies a float", lambda b: _config(b).update(min_copies=1.5)),
    ("parameters an array", lambda b: _config(b).update(parameters=[])),
    ("inputs an object", lambda b: _config(b).update(inputs={})),
    ("an input without shape", lambda b: _config(b)["inputs"][0].pop("shape")),
    ("an unknown datatype", lambda b: _config(b)["inputs"][0].update(datatype="FP8")),
    ("a shape of strings", lambda b: _config(b)["inputs"][0].update(shape=["16"])),
    ("a dimension under -1", lambda b: _config(b)["inputs"][0].update(shape=[-2])),
    ("a boolean dimension", lambda b: _config(b)["outputs"][0].update(shape=[True])),
    ("refuse a string", lambda b: _version(b, "1").update(refuse="no")),
    ("refuse too short", lambda b: _version(b, "1").update(refuse=["Unavailable", "no"])),
    ("refuse retry a boolean", lambda b: _version(b, "1").update(refuse=["X", "no", True])),
    ("copies an object", lambda b: _version(b).update(copies={})),
    ("a copy as an object", lambda b: _version(b).update(copies=[{"id": 1}])),
    ("a copy id a string", lambda b: _version(b).update(copies=[["1", True, ""]])),
    ("a copy id a boolean", lambda b: _version(b).update(copies=[[True, True, ""]])),
    ("ready a number", lambda b: _version(b).update(copies=[[1, 1, ""]])),
    ("inbox null", lambda b: _version(b).update(copies=[[1, True, None]])),
    ("a copy listed twice", lambda b: _version(b).update(copies=[[1, False, ""]] * 2)),
    ("regions an object", lambda b: b.update(regions={})),
    ("a region too short", lambda b: b.update(regions=[["r", "/k", "s", 0]])),
    ("a negative offset", lambda b: b.update(regions=[["r", "/k", "s", -1, 8]])),
    ("a region size a string", lambda b: b.update(regions=[["r", "/k", "s", 0, "8"]])),
]


def _version(body: dict[str, Any], version: str = "2") -> dict[str, Any]:
    entry: dict[str, Any] = body["models"]["tiny"]["versions"][version]
    return entry


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = _version(body)["config"]
    return config


@pytest.mark.parametrize(("case", "spoil"), HOSTILE, ids=[c for c, _ in HOSTILE])
def test_hostile_table_is_a_wire_error(case: str, spoil: Any) -> None:
    body = on_the_wire(table())
    spoiled = spoil(body)
    with pytest.raises(bw.WireError):
        CopyTable.from_wire(body if spoiled is None else spoiled)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def test_any_value_replaced_decodes_or_is_a_wire_error() -> None:
    """Every value of a real table, replaced by each JSON kind: never another exception."""
    good = on_the_wire(table())
    paths = [p for p in _paths(good) if p]
    assert len(paths) > 80
    decoded = 0
    for path in paths:
        values: tuple[Any, ...] = (None, True, -1, 2**70, 1.5, "", "x", [], {}, [None])
        for value in values:
            body = copy.deepcopy(good)
            parent = body
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
            try:
                CopyTable.from_wire(body)
                decoded += 1
            except bw.WireError:
                pass
    assert decoded > 0  # some replacements are valid tables (a message, a parameter)


# -- a data-plane process's link: a malformed table is dropped, the last one stays -----------

def test_core_link_drops_a_malformed_table(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    applied: list[CopyTable] = []

    async def main() -> None:
        with core_end(str(tmp_path), "ct") as core:
            link, intake, push = core.link, core.intake, core.push
            link.on_table = applied.append
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                good = {"gen": 1, **table().to_wire()}
                push.send_multipart(bw.encode(bw.TABLE, good))
                assert await receive_at_core(intake) == (bw.ACK, {"gen": 1, "b": 0}, [])
                bad = copy.deepcopy(good) | {"gen": 2}
                bad["models"]["tiny"]["default"] = "9"
                push.send_multipart(bw.encode(bw.TABLE, bad))
                # the malformed table is dropped: still gen 1
                assert await receive_at_core(intake) == (bw.ACK, {"gen": 1, "b": 0}, [])
                push.send_multipart(bw.encode(bw.TABLE, {"models": {}}))  # no generation
                push.send_multipart(bw.encode(bw.TABLE, good | {"gen": 3}))
                assert await receive_at_core(intake) == (bw.ACK, {"gen": 3, "b": 0}, [])
                nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="inferoxy.bridge"):
        trio.run(main)
    assert [t == table() for t in applied] == [True, True]
    messages = [r.getMessage() for r in caplog.records]
    assert any("malformed copy table (generation 2)" in m and "'9'" in m for m in messages)
    assert any("TABLE needs 'gen'" in m for m in messages)
