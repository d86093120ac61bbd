"""The core <-> bridge-process wire format (``--workers N``: data-plane processes). I/O-free.

Bridge processes parse HTTP and write tensor bytes into shared memory themselves; what
crosses this wire is JSON (never pickle) and, for small outputs and forwarded HTTP bodies,
one raw byte frame. Every message is ``[kind, body, *blobs]``: ``kind`` one of the byte
strings below, ``body`` a JSON object that names its sender (``b``: the bridge's index).
Requests and answers travel in batches: whatever one side queued during one round of its
event loop goes in one message, so a busy core wakes once per batch, not once per request.

Bridge -> core:

* ``HELLO {pid, listening}`` once connected (the core answers with a ``TABLE``), and again
  once its HTTP listener is open.
* ``INFER {items: [{id, model, version, rows, inputs, outputs, parameters, timeout_us,
  request_id}, ...]}``: in each item ``inputs`` is ``[[name, datatype, shape, desc | null,
  region | null], ...]`` where ``desc`` is a ``Descriptor.to_wire()`` into one of the
  bridge's own slab segments and ``region`` a client region reference ``[name, offset,
  byte_size]`` (resolved by the core, which keeps the registry); ``outputs`` maps output
  names to client region references. Exactly one answer to each item follows, whatever
  happens.
* ``CANCEL {id}``: the client went away; the core abandons the request (an ``ANSWER`` still
  follows).
* ``DONE {ids}``: the bridge has copied the outputs of these held answers; the core lets the
  worker reuse their slots.
* ``CALL {id, method, path, query, headers}`` + body frame: a non-infer HTTP request,
  answered by the core's route layer with one ``REPLY``.
* ``REPORT {answers, stats, pending, slots_in_use, bytes_in_use, flush?}``: the process's
  answer counts since its last report (``[[bridge, status_class, n], ...]``), its models'
  statistics since then (``[[name, version, delta], ...]``, ``gateway.stats.stats_delta``),
  requests queued or running and the oldest one's wait (``[[name, version, n, seconds],
  ...]``), and its slab's use now.

Core -> bridge:

* ``TABLE {gen, models}``: the routing table (see ``gateway.intake.routing_table``), sent
  on HELLO and whenever it changes.
* ``ANSWER {items: [{id, status, error?, outputs?, in_regions?, freed, held?}, ...]}`` + one
  byte frame: ``error`` is ``[type, message, retry_after_s]``; ``outputs`` maps names to
  ``[dtype, shape, offset]`` (the bytes at that offset of the frame) or ``[dtype, shape,
  desc]`` (bytes in a worker's output slot: the bridge reads them and sends ``DONE``, since
  ``held`` is true). ``freed`` false: a worker may still read the inputs; a ``FREE`` follows.
* ``FREE {id}``: no worker reads this request's input slots any more: the bridge frees them.
* ``REPLY {id, status, headers}`` + body frame.
* ``STOP {}``: drain: stop accepting connections, finish what is open, exit.
* ``FLUSH {gen}``: report now; the ``REPORT`` carries ``flush: gen`` (statistics read through
  any process then hold what every process counted until then).
* ``TABLE`` is acknowledged with ``ACK {gen}`` once applied.
"""

from __future__ import annotations

from typing import Any

import orjson

HELLO = b"HELLO"
INFER = b"INFER"
CANCEL = b"CANCEL"
DONE = b"DONE"
CALL = b"CALL"
REPORT = b"REPORT"
TABLE = b"TABLE"
ANSWER = b"ANSWER"
FREE = b"FREE"
REPLY = b"REPLY"
STOP = b"STOP"
ACK = b"ACK"
FLUSH = b"FLUSH"

TO_CORE = frozenset({HELLO, INFER, CANCEL, DONE, CALL, REPORT, ACK})
TO_BRIDGE = frozenset({TABLE, ANSWER, FREE, REPLY, STOP, FLUSH})

MAX_BLOBS = 1  # more frames than any message carries: a malformed peer


class WireError(ValueError):
    """A message that is not in this format."""


def encode(kind: bytes, body: dict[str, Any], *blobs: Any) -> list[Any]:
    return [kind, orjson.dumps(body), *blobs]


def decode(frames: list[Any], kinds: frozenset[bytes]) -> tuple[bytes, dict[str, Any], list[Any]]:
    """``(kind, body, blobs)``; blobs are the frames after the body, as received."""
    if not 2 <= len(frames) <= 2 + MAX_BLOBS:
        raise WireError(f"expected 2 to {2 + MAX_BLOBS} frames, got {len(frames)}")
    kind = bytes(frames[0])
    if kind not in kinds:
        raise WireError(f"unknown message kind {kind[:32]!r}")
    try:
        body = orjson.loads(frames[1])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise WireError("body is not a JSON object")
    return kind, body, list(frames[2:])


def intake_address(run_dir: str) -> str:
    return f"ipc://{run_dir}/bridges.sock"
