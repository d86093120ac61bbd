"""The WebSocket stream's message format, I/O-free: a client's frame parsed and checked, a
reply encoded (the bridge's half), and the other two directions (the client's half).

The format (``[uint32 LE N][N bytes of JSON header][raw tensor bytes]``, the header's
keys both ways) is specified in ``docs/protocols/websocket.md``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inferoxy.protocol.errors import FrameError
from shm.datatypes import V2_TO_NUMPY

_LEN = struct.Struct("<I")
MAX_HEADER_BYTES = 64 << 10  # the default of --max-frame-header-bytes


@dataclass(frozen=True, slots=True)
class Frame:
    header: dict[str, Any]
    payload: memoryview  # the tensor bytes after the header


def parse_frame(message: bytes | str, max_header_bytes: int = MAX_HEADER_BYTES) -> Frame:
    if isinstance(message, str):
        raise FrameError("frames are binary messages: [uint32 LE length][JSON][tensors]")
    view = memoryview(message)
    if len(view) < _LEN.size:
        raise FrameError("frame is shorter than its 4-byte header length")
    (n,) = _LEN.unpack_from(view)
    if n > max_header_bytes:
        raise FrameError(f"frame header of {n} bytes is larger than the limit of "
                              f"{max_header_bytes} (--max-frame-header-bytes)")
    if n == 0 or _LEN.size + n > len(view):
        raise FrameError(
            f"frame header length {n} does not fit the frame ({len(view)} bytes)"
        )
    try:
        header = orjson.loads(view[_LEN.size : _LEN.size + n])
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    if "id" in header and not isinstance(header["id"], str):
        raise FrameError("'id' must be a string")
    if not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise FrameError("'inputs' must be a non-empty array")
    if not isinstance(header.get("parameters", {}), dict):
        raise FrameError("'parameters' must be an object")
    if not isinstance(header.get("end", False), bool):
        raise FrameError("'end' must be true or false")
    return Frame(header, view[_LEN.size + n :])


def encode_reply(header: dict[str, Any], arrays: list[np.ndarray] | None = None) -> bytes:
    raw = orjson.dumps(header)
    blobs = [np.ascontiguousarray(a).data for a in arrays or []]
    return b"".join([_LEN.pack(len(raw)), raw, *blobs])


def encode_frame(header: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """A client's frame."""
    return encode_reply(header, arrays)


def decode_reply(message: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A client's view of a reply: the header, and the outputs as arrays."""
    (n,) = _LEN.unpack_from(message)
    header = orjson.loads(message[_LEN.size : _LEN.size + n])
    arrays: dict[str, np.ndarray] = {}
    pos = _LEN.size + n
    for out in header.get("outputs", []):
        dtype = V2_TO_NUMPY[out["datatype"]]
        count = int(np.prod(out["shape"]))
        arrays[out["name"]] = np.frombuffer(message, dtype, count, pos).reshape(out["shape"])
        pos += count * dtype.itemsize
    return header, arrays
