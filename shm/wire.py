"""The gateway <-> worker wire format, shared by both sides (the only module they share).

Every message is two ZeroMQ frames, ``[kind, JSON body]``; tensors travel as descriptors
into shared memory, never as bytes, and nothing is ever unpickled. The sockets, the
message kinds and their bodies are specified in ``docs/protocols/gateway-worker.md``;
this module holds the kinds, the framing (``encode``/``decode``) and the socket addresses;
``shm.messages`` holds the bodies as types, which is what the two sides use.
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
ATTACH = b"ATTACH"
WELCOME = b"WELCOME"
REFUSED = b"REFUSED"
KILL = b"KILL"

KINDS = frozenset({
    HELLO, HEARTBEAT, RESULT, ERROR, FATAL, UNHEALTHY, BATCH, RELEASE, STOP, SEQUENCE_END,
    ATTACH, WELCOME, REFUSED, KILL,
})
# The version of this format an attached worker must speak (ATTACH ``protocol``): a copy from
# an older or newer image is refused with a clear reason, never half-understood.
PROTOCOL = 1


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


def attach_paths(run_dir: str, token: str) -> tuple[str, str, str]:
    """An attached worker's batch socket, control socket and lock file (see above)."""
    return (f"ipc://{run_dir}/attach-{token}.sock", f"ipc://{run_dir}/attach-{token}-ctl.sock",
            f"{run_dir}/attach-{token}.lock")


def producer_address(run_dir: str, pid: int) -> str:
    """The PULL socket a data-plane process binds for its batches' answers."""
    return f"ipc://{run_dir}/producer-{pid}.sock"


def in_run_dir(run_dir: str, address: object) -> bool:
    """An ipc address of a socket directly inside ``run_dir`` (nothing else is trusted)."""
    prefix = f"ipc://{run_dir}/"
    return (isinstance(address, str) and address.startswith(prefix)
            and "/" not in address[len(prefix):] and ".." not in address
            and address.endswith(".sock") and len(address) < 256)
