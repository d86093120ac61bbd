"""The gateway <-> worker wire format, shared by both sides (the only module they share).

Every message is two ZeroMQ frames: ``[kind, body]`` where ``kind`` is one of the byte
strings below and ``body`` is a JSON object. Tensor bytes never travel here: tensors are
``Descriptor.to_wire()`` lists pointing into shared memory. Nothing is ever unpickled.

Sockets (all ``ipc://`` in the gateway's run directory, all bound by the gateway):

* ``inbox.sock`` (gateway PULL, workers PUSH) — worker to gateway:
  ``HELLO {copy, pid, model}``, ``HEARTBEAT {copy, busy_s}`` (``busy_s``: how long the
  batch or health check running now has run; 0 when idle), ``UNHEALTHY {copy, message}``
  (the model's ``health()`` failed),
  ``RESULT {copy, id, outputs: {name: desc}, timing: {input_ns, infer_ns, output_ns},
  item_errors?: {index: message}}`` (one descriptor per output for the whole batch, batch
  dimension first; ``[null, 0, dtype, shape]`` when every item took that output to its own
  client region, so no slab copy exists),
  ``ERROR {copy, id, message}``, ``FATAL {copy, message}`` (the model failed to load).
* ``copy-<id>.sock`` (gateway PUSH, that worker PULL) — gateway to one worker:
  ``BATCH {id, items: [{rid, rows, inputs: {name: desc}, regions?: [input names in client
  regions, re-checked before use], outputs?: {name: [segment, offset, byte_size]}}],
  parameters}`` (``rid``: the request's id, for log lines only — the client's v2 ``id``, or
  one the gateway made up; ``outputs``: client regions the item's rows of that output go to),
  ``RELEASE {slots: [[segment, offset], ...]}`` (output slots the gateway is done with),
  ``SEQUENCE_END {sequence_id, reason}`` (a sequence ended without a request saying so:
  ``evicted`` after idling, ``cancelled``, ``closed``, ``restarted``), ``STOP {}``.
  A BATCH item of a stateful model carries ``sequence: [id, start, end]``.
"""

from __future__ import annotations

import json
from typing import Any

try:  # orjson is faster, but workers must not need it (model images stay slim)
    import orjson
except ImportError:  # pragma: no cover - slim worker images
    orjson = None  # type: ignore[assignment]


def _dumps(obj: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _loads(raw: bytes) -> Any:
    if orjson is not None:
        return orjson.loads(raw)
    return json.loads(raw)

HELLO = b"HELLO"
HEARTBEAT = b"HEARTBEAT"
RESULT = b"RESULT"
ERROR = b"ERROR"
FATAL = b"FATAL"
UNHEALTHY = b"UNHEALTHY"
BATCH = b"BATCH"
RELEASE = b"RELEASE"
STOP = b"STOP"
SEQUENCE_END = b"SEQUENCE_END"

KINDS = frozenset({
    HELLO, HEARTBEAT, RESULT, ERROR, FATAL, UNHEALTHY, BATCH, RELEASE, STOP, SEQUENCE_END,
})


class WireError(ValueError):
    """A message that is not in this format."""


def encode(kind: bytes, body: dict[str, Any]) -> list[bytes]:
    return [kind, _dumps(body)]


def decode(frames: list[bytes] | list[Any]) -> tuple[bytes, dict[str, Any]]:
    if len(frames) != 2:
        raise WireError(f"expected 2 frames, got {len(frames)}")
    kind, raw = bytes(frames[0]), bytes(frames[1])
    if kind not in KINDS:
        raise WireError(f"unknown message kind {kind[:32]!r}")
    try:
        body = _loads(raw)
    except ValueError as exc:
        raise WireError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise WireError("body is not a JSON object")
    return kind, body


def inbox_address(run_dir: str) -> str:
    return f"ipc://{run_dir}/inbox.sock"


def copy_address(run_dir: str, copy_id: int) -> str:
    return f"ipc://{run_dir}/copy-{copy_id}.sock"
