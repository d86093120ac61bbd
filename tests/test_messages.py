"""The gateway <-> worker messages (``shm.messages``, I/O-free): every message survives the
wire as what it was, and a malformed one is a ``WireError`` naming what is wrong, at the edge,
never a KeyError or a wrong answer deeper in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm import wire
from shm.descriptor import Descriptor
from shm.messages import (
    NOT_PLACED,
    Attach,
    Batch,
    BatchItem,
    Error,
    Fatal,
    Heartbeat,
    Hello,
    Kill,
    OutputTarget,
    Refused,
    Release,
    Reply,
    Result,
    SequenceEnd,
    SequenceRef,
    Stop,
    Timing,
    Unhealthy,
    Welcome,
    decode_control,
    decode_from_worker,
    decode_to_worker,
    encode,
)

X = Descriptor("ifx-1", 64, "float32", (2, 3))
TEXT = Descriptor("ifx-1", 128, "bytes", (2,), 17)


def test_every_message_survives_the_wire_as_itself() -> None:
    batch = Batch(
        7,
        [BatchItem("r1", 2, {"X": X}),
         BatchItem("r2", 1, {"X": X, "T": TEXT}, ("X",), {"Y": OutputTarget("reg", 8, 24)},
                   SequenceRef("cam-4", True, False))],
        {"threshold": 0.5}, max_rows=8, reply=Reply("ipc:///run/producer-9.sock", 9),
        release=[("ifx-w1", 0), ("ifx-w1", 4096)])
    for message in (batch, Batch(8, [BatchItem("", 1, {})], {}), Release([("s", 1)]),
                    SequenceEnd(3, "evicted"), Stop()):
        assert decode_to_worker(encode(message)) == message
    result = Result(3, 7, {"Y": Descriptor("ifx-w1", 0, "float32", (3, 2)),
                           "Z": Descriptor(NOT_PLACED, 0, "int64", (3,)),
                           "T": Descriptor("ifx-w1", 64, "bytes", (3,), 40)},
                    Timing(1, 2, 3), {1: "region too small"})
    assert result.slots() == [("ifx-w1", 0), ("ifx-w1", 64)]  # not the one no slab holds
    for sent in (Hello(3, 1234, "m", "ipc:///run/copy-3-1234.sock"), Heartbeat(3, 0.25),
                 Unhealthy(3, "health() returned False"), Fatal(3, "ImportError: x"), result,
                 Error(3, 7, "ValueError: bad"), Attach({"token": "ab" * 8})):
        assert decode_from_worker(encode(sent)) == sent
    for order in (Welcome(3, "m:C", {"k": 1}, "cuda:0", "ifx-9", 1.0, 5.0), Refused("no"),
                  Stop(), Kill()):
        assert decode_control(encode(order)) == order


def frames(kind: bytes, body: Any) -> list[bytes]:
    return [kind, orjson.dumps(body)]


GOOD_ITEM = {"rid": "r", "rows": 1, "inputs": {"X": ["s", 0, "float32", [1, 3]]}}


@pytest.mark.parametrize(("message", "why"), [
    (frames(wire.BATCH, {"items": [GOOD_ITEM]}), "'id' is not an integer"),
    (frames(wire.BATCH, {"id": 1, "items": []}), "without items"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM | {"rows": "2"}]}), "'rows'"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM | {"rows": -1}]}), "negative rows"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM | {"inputs": {"X": ["s", 0]}}]}),
     "input 'X' is not a descriptor"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM | {"outputs": {"Y": ["s", 0]}}]}),
     "output target"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM | {"sequence": [True, 1, 0]}]}),
     "a sequence"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM], "reply": ["a"]}), "a reply"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM], "release": [["s"]]}), "output slot"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM], "max_rows": 1.5}), "'max_rows'"),
    (frames(wire.BATCH, {"id": 1, "items": "x"}), "'items' is not a list"),
    (frames(wire.RELEASE, {"slots": [[1, 2]]}), "output slot"),
    (frames(wire.SEQUENCE_END, {"sequence_id": [1]}), "'sequence_id'"),
    (frames(wire.HELLO, {"copy": 1}), "HELLO"),  # not for a worker's batch socket
    (frames(b"NOPE", {}), "unknown message kind"),
    ([wire.BATCH, b"{not json"], "not JSON"),
    ([wire.BATCH], "expected 2 frames"),
])
def test_a_malformed_message_to_a_worker_is_refused_with_the_reason(message: list[bytes],
                                                                     why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        decode_to_worker(message)


@pytest.mark.parametrize(("message", "why"), [
    (frames(wire.HELLO, {"copy": "1", "pid": 1, "inbox": "x"}), "'copy'"),
    (frames(wire.HELLO, {"copy": 1, "pid": 1}), "'inbox'"),
    (frames(wire.HEARTBEAT, {"copy": 1, "busy_s": -1}), "'busy_s'"),
    (frames(wire.HEARTBEAT, {"copy": 1, "busy_s": True}), "'busy_s'"),
    (frames(wire.RESULT, {"copy": 1, "id": 2, "outputs": {"Y": ["s", 0, "float32", "x"]}}),
     "output 'Y'"),
    (frames(wire.RESULT, {"copy": 1, "id": 2, "outputs": {}, "item_errors": {"x": "?"}}),
     "item index"),
    (frames(wire.RESULT, {"copy": 1, "id": 2, "timing": {"infer_ns": -5}}), "nanoseconds"),
    (frames(wire.RESULT, {"copy": 1, "outputs": {}}), "'id'"),
    (frames(wire.ERROR, {"copy": 1}), "'id'"),
    (frames(wire.BATCH, {"id": 1, "items": [GOOD_ITEM]}), "BATCH is not a message from"),
])
def test_a_malformed_message_from_a_worker_is_refused_with_the_reason(message: list[bytes],
                                                                       why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        decode_from_worker(message)


def test_a_worker_error_message_is_bounded() -> None:
    error = decode_from_worker(frames(wire.ERROR, {"copy": 1, "id": 2, "message": "x" * 10**5}))
    assert isinstance(error, Error) and len(error.message) == 2000
    assert decode_from_worker(frames(wire.ERROR, {"copy": 1, "id": 2})) == Error(
        1, 2, "model failed")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)
kinds = st.sampled_from(sorted(wire.KINDS))
fields = st.sampled_from(["id", "items", "copy", "rows", "inputs", "outputs", "reply",
                          "release", "slots", "timing", "item_errors", "message", "busy_s",
                          "sequence_id", "pid", "inbox", "max_rows", "parameters"])


@settings(max_examples=300, deadline=None, database=None)  # no deadline: shared machines
@given(kinds, st.dictionaries(fields, json_values, max_size=6))
def test_any_json_body_decodes_or_is_a_wire_error(kind: bytes, body: dict[str, Any]) -> None:
    """Hostile bodies: never anything but a typed message or a ``WireError``."""
    for decode in (decode_to_worker, decode_from_worker, decode_control):
        try:
            decode(frames(kind, body))
        except wire.WireError:
            pass
