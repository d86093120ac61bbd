"""BYTES tensors in their wire form (``shm/bytes_tensor.py``): round trips and bounds."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tritonclient.utils as tu

from shm.bytes_tensor import BytesLimits, BytesTensorError, decode, encode, encode_array

LIMITS = BytesLimits(max_elements=16, max_element_bytes=1000)


def test_the_wire_form_is_tritonclients() -> None:
    """What tritonclient serializes (binary extension, raw_input_contents, shared memory) is
    what ``decode`` reads, and ``encode_array`` writes what tritonclient deserializes."""
    arr = np.array([[b"a", b""], [b"\x00\xffjpeg\x00", "caf\u00e9".encode()]], dtype=object)
    wire = tu.serialize_byte_tensor(arr).item()  # a 0-d object array holding the bytes
    assert wire == encode(arr.reshape(-1).tolist())
    out = decode(wire, (2, 2), LIMITS)
    assert out.dtype == object and out.shape == (2, 2)
    assert out.tolist() == arr.tolist()  # trailing NULs kept: JPEG/PNG bytes are binary
    back = tu.deserialize_bytes_tensor(encode_array(out))
    assert back.tolist() == arr.reshape(-1).tolist()
    strings = np.array(["x", "yz"], dtype=object)
    assert decode(encode_array(strings), (2,), LIMITS).tolist() == [b"x", b"yz"]
    assert decode(encode_array(np.array(["x", "yz"])), (2,), LIMITS).tolist() == [b"x", b"yz"]


@pytest.mark.parametrize("wire, shape, message", [
    (encode([b"a"]), (2,), "ends at element 1 of 2"),
    (encode([b"a", b"b"]), (1,), "5 bytes after its 1 elements"),
    (b"\x05\x00\x00\x00ab", (1,), "claims 5 bytes; only 2 are left"),
    (b"\x01\x00", (1,), "ends at element 0"),
    (encode([b"x" * 1001]), (1,), "more than the limit of 1000"),
    (encode([b""] * 17), (17,), "17 elements, more than the limit of 16"),
])
def test_bounds_and_malformed_data_are_refused(wire: bytes, shape: tuple[int, ...],
                                               message: str) -> None:
    with pytest.raises(BytesTensorError, match=message):
        decode(wire, shape, LIMITS)


def test_outputs_must_hold_bytes_or_strings() -> None:
    with pytest.raises(BytesTensorError, match="dtype float32"):
        encode_array(np.zeros(2, np.float32))
    with pytest.raises(BytesTensorError, match="got int"):
        encode_array(np.array([b"a", 3], dtype=object))


# -- JSON strings, JSON outputs --------------------------------------------------------------


def test_json_strings_flat_or_nested_become_the_wire_form() -> None:
    from shm.bytes_tensor import from_strings, to_json

    wire = from_strings([["a", "bc"], ["", "é"]], (2, 2), LIMITS, "input 'T'")
    assert wire == encode([b"a", b"bc", b"", "é".encode()])
    assert from_strings(["a", "bc", "", "é"], (2, 2), LIMITS, "input 'T'") == wire
    assert to_json(decode(wire, (2, 2), LIMITS), "output 'T'") == ["a", "bc", "", "é"]
    with pytest.raises(BytesTensorError, match="not UTF-8 text"):
        to_json(np.array([b"\xff"], dtype=object), "output 'T'")


@pytest.mark.parametrize("data, message", [
    ([1, "a"], "must be strings, got int"),
    (["a"], "data has 1 elements, shape [2] needs 2"),
    (["a", "b", "c"], "more than the 2 elements"),
    (["a", "x" * 1001], "1001 bytes, more than the limit of 1000"),
    ("ab", "data has 1 elements"),
])
def test_json_strings_refused(data: object, message: str) -> None:
    from shm.bytes_tensor import from_strings

    with pytest.raises(BytesTensorError, match=re.escape(message)):
        from_strings(data, (2,), LIMITS, "input 'T'")
    with pytest.raises(BytesTensorError, match="17 elements, more than the limit of 16"):
        from_strings([], (17,), LIMITS, "input 'T'")


# -- the worker's side: BYTES outputs and decoupled responses ---------------------------------


def test_decoupled_responses_are_stacked_per_name() -> None:
    from worker.batch import BatchError, stack_responses

    def responses(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield {"BOX": np.full((1, 4), i, np.int32),
                   "LABEL": np.array([[f"l{i}".encode()]], dtype=object)}

    out = stack_responses(responses(3), 1)
    assert out["BOX"].shape == (1, 3, 4) and out["BOX"][0, :, 0].tolist() == [0, 1, 2]
    assert out["LABEL"].shape == (1, 3, 1) and out["LABEL"][0, 2, 0] == b"l2"
    assert stack_responses(responses(0), 1) == {}
    assert stack_responses([], 1) == {}

    def failing():  # type: ignore[no-untyped-def]
        yield {"BOX": np.zeros((1, 4), np.int32)}
        raise RuntimeError("camera unplugged")

    with pytest.raises(BatchError, match="RuntimeError: camera unplugged"):
        stack_responses(failing(), 1)
    with pytest.raises(BatchError, match="expected a dict of arrays"):
        stack_responses(None, 1)
    with pytest.raises(BatchError, match="response 1 has outputs"):
        stack_responses([{"A": np.zeros((1, 1))}, {"B": np.zeros((1, 1))}], 1)
    with pytest.raises(BatchError, match="response 0 is int"):
        stack_responses([3], 1)
    with pytest.raises(BatchError, match="differ in shape"):
        stack_responses([{"A": np.zeros((1, 1))}, {"A": np.zeros((1, 2))}], 1)


def test_decoupled_declarations_and_overrides() -> None:
    from gateway.config import ConfigError, parse_model
    from gateway.declaration import ModelDeclaration
    from gateway.errors import InvalidArgument
    from gateway.triton_config import apply_override

    base = {"entrypoint": "tests.models.repeat:Repeat", "batch_size": 1,
            "inputs": [{"name": "N", "datatype": "INT32", "shape": [1]}],
            "outputs": [{"name": "T", "datatype": "BYTES", "shape": [1]}]}
    assert parse_model("m", base | {"decoupled": True}).decoupled
    assert not parse_model("m", base).decoupled
    for bad in ({"batch_size": 4}, {"stateless": False}):
        with pytest.raises(ConfigError, match="decoupled model runs one request at a time"):
            parse_model("m", base | {"decoupled": True} | bad)
    with pytest.raises(ConfigError, match="decoupled must be true or false"):
        parse_model("m", base | {"decoupled": "yes"})
    declaration = ModelDeclaration.single(parse_model("m", base))
    changed = apply_override(declaration, {"model_transaction_policy": {"decoupled": True}})
    assert changed.versions["1"].decoupled
    with pytest.raises(InvalidArgument, match="sets \\['x'\\]"):
        apply_override(declaration, {"model_transaction_policy": {"x": 1}})
