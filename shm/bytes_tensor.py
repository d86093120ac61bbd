"""``BYTES`` tensors in their wire form, and as the model would see them. I/O-free.

Every place the v2 protocol carries a BYTES tensor as bytes — the binary extension, gRPC
``raw_input_contents``, system shared memory — uses one form: each element, in row-major
order, as a 4-byte little-endian length followed by that many bytes. That form is also what
a BYTES tensor would take in a shared-memory slot, so bridges copy it once, as for any
tensor, and ``decode`` builds the model's view of it: a numpy object array of ``bytes``
(what Triton's Python backend hands its models).

Where it is used: bridges write the wire form into a slot (or take it in a client region)
and ``check`` it before the request is submitted; the worker ``decode``s each request's
tensor and joins them along the batch dimension (``worker.batch``); a model's BYTES output is
``encode_array``-ed into the worker's output slot, and the gateway ``decode``s it to split
the batch's rows between requests.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_LENGTH = struct.Struct("<I")
Buffer = bytes | bytearray | memoryview | np.ndarray  # anything memoryview() takes


class BytesTensorError(ValueError):
    """The bytes are not a BYTES tensor of the given shape, or exceed a bound; the message
    is safe for clients (it names counts and sizes, never content)."""


@dataclass(frozen=True, slots=True)
class BytesLimits:
    max_elements: int = 1 << 20  # elements of one BYTES tensor
    max_element_bytes: int = 64 << 20  # one element (a JPEG of an 8K frame is ~10 MB)


def _bytes_view(buf: Buffer) -> memoryview:
    return (buf.data if isinstance(buf, np.ndarray) else memoryview(buf)).cast("B")


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


def from_strings(values: object, shape: tuple[int, ...], limits: BytesLimits,
                 what: str) -> bytes:
    """The wire form of a BYTES tensor given as JSON ``data``: a flat or nested list of
    strings (UTF-8), ``prod(shape)`` of them in row-major order."""
    count = math.prod(shape)
    if count > limits.max_elements:
        raise BytesTensorError(f"{what}: a BYTES tensor of shape {list(shape)} has {count} "
                               f"elements, more than the limit of {limits.max_elements}")
    flat: list[bytes] = []
    stack: list[object] = [values]
    while stack:  # depth-first, left to right: row-major order
        item = stack.pop()
        if isinstance(item, list):  # JSON already parsed: its size is the body's, bounded
            stack.extend(reversed(item))
        elif isinstance(item, str):
            data = item.encode()
            if len(data) > limits.max_element_bytes:
                raise BytesTensorError(f"{what}: BYTES element {len(flat)} has {len(data)} "
                                       f"bytes, more than the limit of "
                                       f"{limits.max_element_bytes}")
            flat.append(data)
            if len(flat) > count:
                raise BytesTensorError(f"{what}: data has more than the {count} elements of "
                                       f"shape {list(shape)}")
        else:
            raise BytesTensorError(f"{what}: BYTES data must be strings, got "
                                   f"{type(item).__name__}")
    if len(flat) != count:
        raise BytesTensorError(f"{what}: data has {len(flat)} elements, shape {list(shape)} "
                               f"needs {count}")
    return encode(flat)


def to_json(arr: np.ndarray, what: str) -> list[str]:
    """A BYTES output as JSON ``data``: its elements as strings, row-major. Bytes that are
    not UTF-8 cannot be JSON strings: the binary extension carries them."""
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    except UnicodeDecodeError:
        raise BytesTensorError(f"{what} holds bytes that are not UTF-8 text; request it with "
                               f"binary_data: true") from None


def check(buf: Buffer, shape: tuple[int, ...], limits: BytesLimits) -> None:
    """Raise ``BytesTensorError`` unless ``buf`` holds exactly ``prod(shape)`` elements within
    ``limits``. Walks the lengths only (no copy)."""
    decode_offsets(buf, shape, limits)


def decode_offsets(buf: Buffer, shape: tuple[int, ...], limits: BytesLimits
                   ) -> list[tuple[int, int]]:
    """(start, end) of each element in ``buf``, checked against ``shape`` and ``limits``."""
    count = math.prod(shape)
    if count > limits.max_elements:
        raise BytesTensorError(f"a BYTES tensor of shape {list(shape)} has {count} elements, "
                               f"more than the limit of {limits.max_elements}")
    view = _bytes_view(buf)
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


def decode(buf: Buffer, shape: tuple[int, ...], limits: BytesLimits
           ) -> np.ndarray:
    """The model's view: an object array of ``bytes`` of ``shape`` (one copy per element)."""
    spans = decode_offsets(buf, shape, limits)
    view = _bytes_view(buf)
    out = np.empty(len(spans), dtype=object)
    out[:] = [bytes(view[a:b]) for a, b in spans]
    return out.reshape(shape)
