"""BYTES tensors in their wire form (``shm/bytes_tensor.py``): round trips and bounds."""

from __future__ import annotations

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
