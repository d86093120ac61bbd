"""The typed items of the control process <-> data-plane process link (``gateway.bridge_wire``):
INFER and ANSWER items are checked once where they arrive; a bad one still gets its one answer.

Milliseconds: real ZeroMQ sockets and a real ``CoreLink``, no gateway (``tests/test_dataplanes.py``
runs the whole link).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from gateway import bridge_wire as bw
from tests.core_side import core_end, receive_at_core

GOOD_TO_CORE: list[tuple[bytes, dict[str, Any]]] = [
    (bw.HELLO, {"b": 0, "pid": 1234, "listening": False}),
    (bw.INFER, {"b": 0, "items": []}),
    (bw.CANCEL, {"b": 0, "id": 3}),
    (bw.DONE, {"b": 0, "ids": [3, 4]}),
    (bw.CALL, {"b": 0, "id": 3, "method": "GET", "path": "/v2", "query": "", "headers": []}),
    (bw.REPORT, {"b": 1, "answers": [], "stats": [], "pending": []}),
    (bw.ACK, {"b": 0, "gen": 2}),
]
GOOD_TO_BRIDGE: list[tuple[bytes, dict[str, Any]]] = [
    (bw.TABLE, {"gen": 1, "models": {}, "regions": []}),
    (bw.ANSWER, {"items": []}),
    (bw.FREE, {"id": 3}),
    (bw.REPLY, {"id": 3, "status": 200, "headers": []}),
    (bw.STOP, {}),
    (bw.FLUSH, {"gen": 5}),
]


def test_each_kind_decodes_with_what_it_needs() -> None:
    for kinds, messages in ((bw.TO_CORE, GOOD_TO_CORE), (bw.TO_BRIDGE, GOOD_TO_BRIDGE)):
        assert {kind for kind, _ in messages} == kinds  # every kind is covered
        for kind, body in messages:
            assert bw.decode(bw.encode(kind, body), kinds) == (kind, body, [])


@pytest.mark.parametrize(("kind", "body"), [
    (bw.HELLO, {"b": 0, "pid": "1234", "listening": True}),
    (bw.HELLO, {"b": 0, "pid": 1234}),
    (bw.INFER, {"items": []}),  # no sender
    (bw.INFER, {"b": True, "items": []}),
    (bw.INFER, {"b": 0, "items": {}}),
    (bw.CANCEL, {"b": 0, "id": None}),
    (bw.DONE, {"b": 0, "ids": 3}),
    (bw.CALL, {"b": 0, "id": 3, "method": "GET", "path": "/v2", "headers": {}}),
    (bw.REPORT, {"answers": []}),
    (bw.ACK, {"b": 0, "gen": 1.0}),
    (bw.TABLE, {"models": {}}),
    (bw.TABLE, {"gen": 2, "models": []}),
    (bw.ANSWER, {"items": None}),
    (bw.FREE, {"id": "3"}),
    (bw.REPLY, {"id": 3, "status": "200", "headers": []}),
    (bw.FLUSH, {"gen": None}),
])
def test_body_without_what_its_kind_needs_is_a_wire_error(kind: bytes,
                                                          body: dict[str, Any]) -> None:
    kinds = bw.TO_CORE if kind in bw.TO_CORE else bw.TO_BRIDGE
    with pytest.raises(bw.WireError):
        bw.decode(bw.encode(kind, body), kinds)


@pytest.mark.parametrize("frames", [
    [bw.ACK], [bw.ACK, b"{}", b"", b""], [b"NOPE", b"{}"], [bw.STOP, b"{}"],  # to the core
    [bw.ACK, b"{not json"], [bw.ACK, b"[1]"],
])
def test_frames_of_another_shape_are_a_wire_error(frames: list[bytes]) -> None:
    with pytest.raises(bw.WireError):
        bw.decode(frames, bw.TO_CORE)


def infer() -> dict[str, Any]:
    return {"id": 7, "model": "sum", "version": "1", "rows": 1,
            "inputs": [["X", "INT32", [1, 1], ["seg", 0, "int32", [1, 1]], None]],
            "outputs": {}, "parameters": {"sequence_id": 3}, "timeout_us": None,
            "request_id": "r-1"}


def answer() -> dict[str, Any]:
    return {"id": 7, "status": 200, "freed": True, "outputs": {"Y": ["int32", [1, 1], 0]}}


def test_well_formed_items_pass_as_they_are() -> None:
    item = infer()
    assert bw.infer_item(item) is item
    assert bw.infer_item(infer() | {"timeout_us": 5000})["timeout_us"] == 5000
    a = answer()
    assert bw.answer_item(a) is a
    error = {"id": 1, "status": 503, "freed": False, "error": ["Unavailable", "busy", 1]}
    assert bw.answer_item(error)["error"] == ["Unavailable", "busy", 1]


@pytest.mark.parametrize("change", [
    {"id": None}, {"id": True}, {"id": "7"}, {"model": 1}, {"version": None}, {"rows": 1.0},
    {"inputs": {}}, {"outputs": []}, {"parameters": None}, {"timeout_us": "5"},
    {"timeout_us": False}, {"request_id": None},
])
def test_bad_infer_item_is_a_wire_error(change: dict[str, Any]) -> None:
    with pytest.raises(bw.WireError):
        bw.infer_item(infer() | change)


@pytest.mark.parametrize("key", ["id", "model", "version", "rows", "inputs", "outputs",
                                 "parameters", "timeout_us", "request_id"])
def test_infer_item_lacking_a_field_is_a_wire_error(key: str) -> None:
    item = infer()
    del item[key]
    with pytest.raises(bw.WireError):
        bw.infer_item(item)


@pytest.mark.parametrize("raw", [
    None, [], {"status": 200, "freed": True}, answer() | {"id": 1.0},
    answer() | {"status": "200"}, answer() | {"freed": 1}, answer() | {"error": "busy"},
    answer() | {"outputs": []}, answer() | {"in_regions": [1]}, answer() | {"held": "yes"},
])
def test_bad_answer_item_is_a_wire_error(raw: Any) -> None:
    with pytest.raises(bw.WireError):
        bw.answer_item(raw)


def test_core_link_answers_each_request_once_even_a_malformed_answer(tmp_path: Path) -> None:
    """Two requests through a real ``CoreLink``: the core's answer to one is malformed. Its
    handler gets an error (not a hang), the other its answer; slots are freed only when the
    core says no worker reads them (``freed``, or a later ``FREE``)."""
    got: dict[int, bw.AnswerItem] = {}

    async def main() -> None:
        with core_end(str(tmp_path), "bw") as core:
            link, slab, intake, push = core.link, core.slab, core.intake, core.push
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                nursery.start_soon(link.run_flusher)
                ids = []
                for _ in range(2):
                    item = bw.infer_item(infer() | {"id": link.new_id()})
                    link.submit(item, [slab.allocate(64)])
                    ids.append(item["id"])
                kind, body, _ = await receive_at_core(intake)
                assert kind == bw.INFER and [i["id"] for i in body["items"]] == ids
                assert all(bw.infer_item(i) for i in body["items"])  # as the core checks them
                assert slab.slots_in_use == 2

                async def wait(msg_id: int) -> None:
                    got[msg_id] = (await link.wait(msg_id))[0]

                for msg_id in ids:
                    nursery.start_soon(wait, msg_id)
                await trio.sleep(0.01)
                bad = {"id": ids[0], "status": "200", "freed": True}
                good = {"id": ids[1], "status": 200, "freed": True, "outputs": {}}
                push.send_multipart(bw.encode(bw.ANSWER, {"items": [bad, good]}, b""))
                with trio.fail_after(5):
                    while len(got) < 2:
                        await trio.sleep(0.002)
                assert slab.slots_in_use == 1  # the malformed one's may still be read
                push.send_multipart(bw.encode(bw.FREE, {"id": ids[0]}))
                with trio.fail_after(5):
                    while slab.slots_in_use:
                        await trio.sleep(0.002)
                nursery.cancel_scope.cancel()

    trio.run(main)
    first, second = sorted(got)
    assert got[first]["status"] == 500 and "malformed" in got[first]["error"][1]
    assert got[second]["status"] == 200 and "error" not in got[second]


def test_report_keeps_only_entries_of_its_shape() -> None:
    """A REPORT is read entry by entry: one of another shape is skipped, the rest counts."""
    from gateway.intake import BridgeReports

    reports = BridgeReports()
    report = reports.report(1, {
        "answers": [["rest", "2xx", 5], ["grpc", 3, 1], "junk", ["rest", "5xx", -1]],
        "stats": [["tiny", "1", {"n": [1, 1]}], ["tiny", 1, {}], ["x", "y"], None],
        "pending": [["tiny", "1", 2, 0.5], ["tiny", "2", "2", 0], ["sum"]],
        "slots_in_use": -1, "bytes_in_use": 4096, "flush": 3,
    })
    assert report.answers == [("rest", "2xx", 5)] and reports.answers == {1: 5}
    assert report.stats == [("tiny", "1", {"n": [1, 1]})] and report.flush == 3
    assert reports.pending_of("tiny", "1") == 2 and reports.head_age("tiny", "1") == 0.5
    assert reports.pending_of("tiny", "2") == 0
    assert reports.slots_in_use == {} and reports.bytes_in_use == {1: 4096}
    empty = reports.report(2, {"flush": "3", "stats": {"tiny": 1}})
    assert empty.answers == [] and empty.stats == [] and empty.flush is None
    reports.gone(1)
    assert reports.pending_of("tiny", "1") == 0 and reports.bytes_in_use == {}
