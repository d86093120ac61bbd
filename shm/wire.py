"""The gateway <-> worker wire format, shared by both sides (the only module they share).

Every message is two ZeroMQ frames: ``[kind, body]`` where ``kind`` is one of the byte
strings below and ``body`` is a JSON object. Tensor bytes never travel here: tensors are
``Descriptor.to_wire()`` lists pointing into shared memory. Nothing is ever unpickled.

Sockets (all ``ipc://`` in the gateway's run directory):

* ``inbox.sock`` (bound by the control process, PULL; workers PUSH) — worker to gateway:
  ``HELLO {copy, pid, model, inbox}`` (``inbox``: the address of the worker's own batch
  socket, below), ``HEARTBEAT {copy, busy_s}`` (``busy_s``: how long the
  batch or health check running now has run; 0 when idle), ``UNHEALTHY {copy, message}``
  (the model's ``health()`` failed),
  ``RESULT {copy, id, outputs: {name: desc}, timing: {input_ns, infer_ns, output_ns},
  item_errors?: {index: message}}`` (one descriptor per output for the whole batch, batch
  dimension first; ``[null, 0, dtype, shape]`` when every item took that output to its own
  client region, so no slab copy exists),
  ``ERROR {copy, id, message}``, ``FATAL {copy, message}`` (the model failed to load).
  RESULT and ERROR go here only for batches that name no ``reply``.
* ``copy-<id>-<pid>.sock`` (bound by that worker, PULL; every producer PUSHes) — to one
  worker, from the control process and from every data-plane process:
  ``BATCH {id, items: [{rid, rows, inputs: {name: desc}, regions?: [input names in client
  regions, re-checked before use], outputs?: {name: [segment, offset, byte_size]}}],
  parameters, max_rows?, reply?: [address, pid], release?: [[segment, offset], ...]}``
  (``release``: output slots of earlier batches the producer is done with, as in RELEASE; said
  here rather than in a message of their own when a batch follows soon; ``rid``: the request's
  id, for log lines only — the client's v2 ``id``, or one the gateway made up; ``outputs``:
  client regions the item's rows of that output go to; ``max_rows``: the model's batch size —
  a worker that finds several such batches waiting runs them as one ``predict`` of at most
  this many rows and answers each on its own; ``reply``: where its RESULT/ERROR go — a data-
  plane process's PULL socket in the run directory, and its pid: the worker frees the output
  slots it holds for a producer that is gone),
  ``RELEASE {slots: [[segment, offset], ...]}`` (output slots the producer is done with),
  ``SEQUENCE_END {sequence_id, reason}`` (a sequence ended without a request saying so:
  ``evicted`` after idling, ``cancelled``, ``closed``, ``restarted``), ``STOP {}``.
  A BATCH item of a stateful model carries ``sequence: [id, start, end]``.
  The address names the worker's pid, so a restarted copy never receives what was queued
  for the process before it.
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


def copy_address(run_dir: str, copy_id: int, pid: int) -> str:
    """The batch socket a worker binds (its pid in the name: one address per process)."""
    return f"ipc://{run_dir}/copy-{copy_id}-{pid}.sock"


def producer_address(run_dir: str, pid: int) -> str:
    """The PULL socket a data-plane process binds for its batches' answers."""
    return f"ipc://{run_dir}/producer-{pid}.sock"


def in_run_dir(run_dir: str, address: object) -> bool:
    """An ipc address of a socket directly inside ``run_dir`` (nothing else is trusted)."""
    prefix = f"ipc://{run_dir}/"
    return (isinstance(address, str) and address.startswith(prefix)
            and "/" not in address[len(prefix):] and ".." not in address
            and address.endswith(".sock") and len(address) < 256)
