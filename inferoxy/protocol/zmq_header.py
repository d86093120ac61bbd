"""The ZeroMQ bridge's JSON header frame, both ways: a request's header parsed and checked,
a reply's header encoded. The message layout is in ``docs/protocols/zeromq-arrow.md``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from inferoxy.protocol.errors import FrameError, RequestId

__all__ = ["HEADER_KEYS", "MAX_HEADER_BYTES", "MAX_ID_CHARS", "FrameError", "Header",
           "RequestId", "encode_error", "encode_header", "parse_header", "peek_request_id"]

MAX_HEADER_BYTES = 64 << 10
MAX_ID_CHARS = 256
HEADER_KEYS = frozenset({"model", "id", "version", "parameters", "timeout_us", "shape"})


# -- the header --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    id: RequestId
    model: str
    version: str | None = None
    parameters: dict[str, Any] | None = None
    timeout_us: int | None = None
    shape: dict[str, tuple[int, ...]] | None = None


def _request_id(doc: dict[str, Any]) -> RequestId | None:
    rid = doc.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    if isinstance(rid, str) and len(rid) > MAX_ID_CHARS:
        return None
    if isinstance(rid, int) and not -(2**63) <= rid < 2**64:
        return None
    return rid


def parse_header(raw: bytes | memoryview, max_bytes: int = MAX_HEADER_BYTES) -> Header:
    """The request header, validated; ``FrameError`` naming the field otherwise."""
    if len(raw) > max_bytes:
        raise FrameError(f"the header frame of {len(raw)} bytes is larger than the limit of "
                         f"{max_bytes} (--max-frame-header-bytes)")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"the header frame is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FrameError("the header frame must be a JSON object")
    rid = _request_id(doc)
    if rid is None:
        raise FrameError(
            f"header 'id' must be a string of at most {MAX_ID_CHARS} characters or an integer"
        )
    unknown = sorted(set(doc) - HEADER_KEYS)
    if unknown:
        raise FrameError(
            f"unknown header key(s) {unknown}; allowed: {sorted(HEADER_KEYS)}", rid
        )
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise FrameError("header 'model' must be a non-empty string", rid)
    version = doc.get("version")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise FrameError("header 'version' must be a string or an integer", rid)
        version = str(version)
    params = doc.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise FrameError("header 'parameters' must be an object", rid)
        for key, value in params.items():
            if not isinstance(value, str | int | float | bool):
                raise FrameError(f"header parameters.{key} must be a string, number or bool", rid)
    timeout = doc.get("timeout_us")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0
    ):
        raise FrameError("header 'timeout_us' must be a non-negative integer", rid)
    shape = doc.get("shape")
    shapes: dict[str, tuple[int, ...]] | None = None
    if shape is not None:
        if not isinstance(shape, dict):
            raise FrameError("header 'shape' must be an object of input name: per-item shape",
                             rid)
        shapes = {}
        for name, dims in shape.items():
            if not isinstance(dims, list) or len(dims) > 32 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in dims
            ):
                raise FrameError(
                    f"header shape.{name} must be a list of non-negative integers", rid
                )
            shapes[name] = tuple(dims)
    return Header(rid, model, version, params, timeout or None, shapes)


def peek_request_id(raw: bytes | memoryview, max_bytes: int = MAX_HEADER_BYTES
                    ) -> RequestId | None:
    """The id of a header that is otherwise unusable, if it has one (for error replies)."""
    if len(raw) > max_bytes:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return _request_id(doc) if isinstance(doc, dict) else None


def encode_header(header: Mapping[str, Any]) -> bytes:
    return orjson.dumps(header)


def encode_error(request_id: RequestId | None, code: int, message: str) -> bytes:
    return orjson.dumps(
        {"id": request_id, "status": "error", "code": code, "message": message[:4000]}
    )
