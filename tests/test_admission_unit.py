"""Admission without sockets: what every bridge's request meets before it reaches a model.

``InputChecker`` against a model's declaration and the request limits; ``Admission`` giving
inputs their slots (and giving them back when a request is refused half-way); the sequence
and timeout parameters. Messages must name the field and what was expected.
"""

from __future__ import annotations

import os

import pytest
import trio

from gateway.admission import (
    Admission,
    InputChecker,
    Limits,
    check_timeout,
    parse_sequence,
)
from gateway.config import parse_model
from gateway.errors import InvalidArgument, PayloadTooLarge, Unavailable
from gateway.model_server import ModelServer
from shm.regions import RegionRegistry
from shm.segment import SegmentCache
from shm.slab import SlabAllocator

MODEL = parse_model("det", {
    "entrypoint": "examples.models.stub:Identity", "batch_size": 4,
    "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, 8, 3]},
               {"name": "SCALE", "datatype": "FP32", "shape": [1]}],
    "outputs": [{"name": "BOXES", "datatype": "FP32", "shape": [4]}],
})
UNBATCHED = parse_model("whole", {
    "entrypoint": "examples.models.stub:Identity", "batch_size": 0,
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [3, 2]}],
    "outputs": [{"name": "X", "datatype": "FP32", "shape": [3, 2]}],
})


def checker(limits: Limits | None = None) -> InputChecker:
    return InputChecker(MODEL, limits or Limits())


def test_a_well_formed_request_gives_its_rows_and_sizes() -> None:
    c = checker()
    image = c.check("inputs[0]", "IMAGE", "UINT8", [2, 5, 8, 3])
    scale = c.check("inputs[1]", "SCALE", "FP32", [2, 1])
    assert c.finish() == 2
    assert image.nbytes == 2 * 5 * 8 * 3 and scale.nbytes == 8
    assert image.shape == (2, 5, 8, 3)


@pytest.mark.parametrize(("name", "datatype", "shape", "message"), [
    ("LABELS", "UINT8", [1, 5, 8, 3], "'LABELS' is not an input of model 'det'"),
    ("IMAGE", "FP32", [1, 5, 8, 3], "datatype 'FP32', expected 'UINT8'"),
    ("IMAGE", "UINT8", [1, 5, 8], "expected [-1, -1, 8, 3]"),
    ("IMAGE", "UINT8", [1, 5, 9, 3], "expected [-1, -1, 8, 3]"),
    ("IMAGE", "UINT8", [5, 5, 8, 3], "batch dimension 5 must be in [1, 4]"),
    ("IMAGE", "UINT8", [0, 5, 8, 3], "batch dimension 0 must be in [1, 4]"),
    ("IMAGE", "UINT8", [1, -5, 8, 3], "shape must be an array of non-negative ints"),
    ("IMAGE", "UINT8", [1, True, 8, 3], "shape must be an array of non-negative ints"),
    ("IMAGE", "UINT8", "1,5,8,3", "shape must be an array of non-negative ints"),
    (7, "UINT8", [1, 5, 8, 3], "is not an input of model"),
])
def test_each_wrong_field_is_named(name: object, datatype: object, shape: object,
                                   message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        checker().check("inputs[0]", name, datatype, shape)
    assert message in refused.value.message
    assert refused.value.http_status == 400 and refused.value.grpc_code == "INVALID_ARGUMENT"


def test_inputs_must_agree_on_rows_appear_once_and_all_be_there() -> None:
    c = checker()
    c.check("inputs[0]", "IMAGE", "UINT8", [2, 5, 8, 3])
    with pytest.raises(InvalidArgument, match="batch dimension 3, other inputs have 2"):
        c.check("inputs[1]", "SCALE", "FP32", [3, 1])
    c = checker()
    c.check("inputs[0]", "SCALE", "FP32", [1, 1])
    with pytest.raises(InvalidArgument, match="given twice"):
        c.check("inputs[1]", "SCALE", "FP32", [1, 1])
    with pytest.raises(InvalidArgument, match=r"missing input\(s\) \['IMAGE'\]"):
        c.finish()


def test_limits_bound_what_a_header_can_ask_for() -> None:
    small = Limits(max_tensor_bytes=1000, max_tensor_elements=500, max_inputs=1,
                   max_outputs=1)
    with pytest.raises(PayloadTooLarge, match="more than the limit of 1000 bytes") as big:
        InputChecker(MODEL, small).check("inputs[0]", "IMAGE", "UINT8", [4, 100, 8, 3])
    assert big.value.http_status == 413
    with pytest.raises(InvalidArgument, match="more than the limit of 500"):
        InputChecker(MODEL, Limits(max_tensor_elements=500)).check(
            "inputs[0]", "IMAGE", "UINT8", [4, 100, 8, 3])
    c = InputChecker(MODEL, small)
    c.check("inputs[0]", "SCALE", "FP32", [1, 1])
    with pytest.raises(InvalidArgument, match="limit of 1 inputs"):
        c.check("inputs[1]", "IMAGE", "UINT8", [1, 1, 8, 3])
    with pytest.raises(InvalidArgument, match="limit of 1"):
        small.check_outputs(2)


def test_a_model_without_a_batch_dimension_takes_whole_shapes() -> None:
    c = InputChecker(UNBATCHED, Limits())
    checked = c.check("inputs[0]", "X", "FP32", [3, 2])
    assert checked.shape == (1, 3, 2)  # the model still gets a batch of one
    assert c.finish() == 1
    with pytest.raises(InvalidArgument, match="no batch dimension"):
        InputChecker(UNBATCHED, Limits()).check("inputs[0]", "X", "FP32", [1, 3, 2])


@pytest.mark.parametrize(("params", "message"), [
    ({"sequence_id": 0, "sequence_start": True}, "need a non-zero sequence_id"),
    ({"sequence_id": 1.5}, "must be an integer or a string"),
    ({"sequence_id": 2**64}, "in [1, 2**64)"),
    ({"sequence_id": "s" * 300}, "at most 256 characters"),
    ({"sequence_id": 3, "sequence_end": "yes"}, "true or false"),
])
def test_bad_sequence_parameters_are_refused(params: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_sequence(dict(params))
    assert message in refused.value.message


def test_sequence_and_timeout_parameters_that_are_fine() -> None:
    seq = parse_sequence({"sequence_id": "cam-7", "sequence_start": True})
    assert seq is not None and seq.id == "cam-7" and seq.start and not seq.end
    assert parse_sequence({}) is None
    assert check_timeout(2500) == 2500 and check_timeout(None) is None
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(InvalidArgument, match="timeout"):
            check_timeout(bad)


def test_an_admission_gives_back_its_slots_unless_submitted() -> None:
    async def main() -> None:
        slab = SlabAllocator(f"ifxa-{os.getpid()}", limit_bytes=1 << 16, segment_bytes=1 << 14)
        try:
            server = ModelServer(MODEL, lambda *_: True, slab, SegmentCache())
            regions = RegionRegistry(enabled=False, own_prefix="ifxa")
            admission = Admission(server, slab, regions, 5.0)
            c = checker()
            admission.slot(c.check("inputs[0]", "IMAGE", "UINT8", [1, 5, 8, 3]))
            admission.slot(c.check("inputs[1]", "SCALE", "FP32", [1, 1]))
            assert slab.slots_in_use == 2
            admission.release()  # refused half-way (say, a later check failed)
            admission.release()  # idempotent
            assert slab.slots_in_use == 0
            # past the byte limit: a clear 503, nothing kept
            greedy = Admission(server, slab, regions, 5.0)
            big = InputChecker(MODEL, Limits()).check("inputs[0]", "IMAGE", "UINT8",
                                                      [4, 1000, 8, 3])
            with pytest.raises(Unavailable, match="out of request memory"):
                greedy.slot(big)
            assert slab.slots_in_use == 0
        finally:
            slab.close()

    trio.run(main)
