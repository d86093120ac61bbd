"""``BYTES`` tensors in their wire form, and as the model would see them. I/O-free.

Every place the v2 protocol carries a BYTES tensor as bytes — the binary extension, gRPC
``raw_input_contents``, system shared memory — uses one form: each element, in row-major
order, as a 4-byte little-endian length followed by that many bytes. That form is also what
a BYTES tensor would take in a shared-memory slot, so bridges copy it once, as for any
tensor, and ``decode`` builds the model's view of it: a numpy object array of ``bytes``
(what Triton's Python backend hands its models).

Not yet wired into the data plane (see the note of issue 19); the bounds are the ones a
bridge will check before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_LENGTH = struct.Struct("<I")


class BytesTensorError(ValueError):
    """The bytes are not a BYTES tensor of the given shape, or exceed a bound; the message
    is safe for clients (it names counts and sizes, never content)."""


@dataclass(frozen=True, slots=True)
class BytesLimits:
    max_elements: int = 1 << 20  # elements of one BYTES tensor
    max_element_bytes: int = 64 << 20  # one element (a JPEG of an 8K frame is ~10 MB)


def encode(elements: Iterable[bytes | str]) -> bytes:
    """The wire form of ``elements`` (``str`` as UTF-8), in order."""
    parts: list[bytes] = []
    for e in elements:
        data = e.encode() if isinstance(e, str) else bytes(e)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def encode_array(arr: np.ndarray) -> bytes:
    """The wire form of a model's BYTES output (object array of ``bytes``/``str``, or numpy
    ``S``/``U`` strings), row-major."""
    flat = arr.reshape(-1)
    if arr.dtype.kind == "S":  # numpy drops trailing NULs of S strings: take them as given
        return encode(flat.tolist())
    if arr.dtype.kind not in "OU":
        raise BytesTensorError(f"a BYTES output must hold bytes or str, got dtype {arr.dtype}")
    items = flat.tolist()
    bad = next((type(x).__name__ for x in items if not isinstance(x, bytes | str)), None)
    if bad is not None:
        raise BytesTensorError(f"a BYTES output must hold bytes or str, got {bad}")
    return encode(items)


def check(buf: bytes | memoryview, shape: tuple[int, ...], limits: BytesLimits) -> None:
    """Raise ``BytesTensorError`` unless ``buf`` holds exactly ``prod(shape)`` elements within
    ``limits``. Walks the lengths only (no copy)."""
    decode_offsets(buf, shape, limits)


def decode_offsets(buf: bytes | memoryview, shape: tuple[int, ...], limits: BytesLimits
                   ) -> list[tuple[int, int]]:
    """(start, end) of each element in ``buf``, checked against ``shape`` and ``limits``."""
    count = math.prod(shape)
    if count > limits.max_elements:
        raise BytesTensorError(f"a BYTES tensor of shape {list(shape)} has {count} elements, "
                               f"more than the limit of {limits.max_elements}")
    view = memoryview(buf).cast("B")
    size = len(view)
    spans: list[tuple[int, int]] = []
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise BytesTensorError(f"BYTES data ends at element {i} of {count} "
                                   f"({size} bytes; each element is a 4-byte length and bytes)")
        (length,) = _LENGTH.unpack_from(view, pos)
        if length > limits.max_element_bytes:
            raise BytesTensorError(f"BYTES element {i} has {length} bytes, more than the limit "
                                   f"of {limits.max_element_bytes}")
        start, pos = pos + 4, pos + 4 + length
        if pos > size:
            raise BytesTensorError(f"BYTES element {i} claims {length} bytes; only "
                                   f"{size - start} are left")
        spans.append((start, pos))
    if pos != size:
        raise BytesTensorError(f"BYTES data has {size - pos} bytes after its {count} elements")
    return spans


def decode(buf: bytes | memoryview, shape: tuple[int, ...], limits: BytesLimits
           ) -> np.ndarray:
    """The model's view: an object array of ``bytes`` of ``shape`` (one copy per element)."""
    spans = decode_offsets(buf, shape, limits)
    view = memoryview(buf).cast("B")
    out = np.empty(len(spans), dtype=object)
    out[:] = [bytes(view[a:b]) for a, b in spans]
    return out.reshape(shape)
