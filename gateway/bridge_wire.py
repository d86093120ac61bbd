"""The control process <-> data-plane process wire format (``--workers N``). I/O-free.

Every message is ``[kind, JSON body, *blobs]`` (at most one blob); the sockets, the kinds and
their bodies are specified in ``docs/protocols/control-dataplane.md``. This module holds the
kinds, ``encode``/``decode`` (which checks the fields each kind needs, once per message), the
typed items of the hot messages (``InferItem``, ``AnswerItem``) with the checks that admit
them where they arrive, and the intake's address.
The copy table a ``TABLE`` carries is ``gateway.copy_table``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NotRequired, TypedDict, cast

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

# What each kind's body must hold, and its JSON type (``type(v) is t``: True is no int), checked
# by ``decode``, once per message, so handlers read these keys without a guard. Fields left
# out are optional, or checked where they are read (``infer_item``, ``answer_item``,
# ``CopyTable.from_wire``, ``BridgeReports.report``). Bodies to the core also name their
# sender, ``b``.
_FIELDS: dict[bytes, tuple[tuple[str, type], ...]] = {
    HELLO: (("pid", int), ("listening", bool)),
    INFER: (("items", list),),
    CANCEL: (("id", int),),
    DONE: (("ids", list),),
    CALL: (("id", int), ("method", str), ("path", str), ("headers", list)),
    REPORT: (),
    ACK: (("gen", int),),
    TABLE: (("gen", int), ("models", dict)),
    ANSWER: (("items", list),),
    FREE: (("id", int),),
    REPLY: (("id", int), ("status", int), ("headers", list)),
    STOP: (),
    FLUSH: (("gen", int),),
}


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
    for key, kind_of in _FIELDS[kind] + ((("b", int),) if kind in TO_CORE else ()):
        if type(body.get(key)) is not kind_of:
            raise WireError(f"{kind.decode()} needs {key!r} ({kind_of.__name__})")
    return kind, body, list(frames[2:])


# -- the hot messages' items, typed --------------------------------------------------------
# TypedDicts cost nothing at run time: a body is the dict orjson made. ``infer_item`` and
# ``answer_item`` check an item's fields once, where it arrives; past them code reads keys
# that are known to be there, with the types below.

class InferItem(TypedDict):
    """One request of an ``INFER`` message (a data-plane process -> the control process)."""

    id: int  # the bridge's; the one answer names it
    model: str
    version: str  # "" for the model's default version
    rows: int
    # [[name, datatype, shape, desc | None, region | None], ...]: checked by
    # ``gateway.intake.admit`` against the core's configuration and the bridge's segments
    inputs: list[list[Any]]
    outputs: dict[str, list[Any]]  # output name -> client region [name, offset, byte_size]
    parameters: dict[str, Any]
    timeout_us: int | None
    request_id: str


class AnswerItem(TypedDict):
    """The one answer to an ``InferItem`` (in an ``ANSWER`` message)."""

    id: int
    status: int  # HTTP status
    freed: bool  # no worker reads the request's input slots any more
    error: NotRequired[Sequence[Any]]  # [type, message, retry_after_s] (gateway.intake)
    # name -> [dtype, shape, offset in the blob] | [BYTES, shape, offset, size] |
    # [dtype, shape, desc] (gateway.intake.answer_outputs)
    outputs: NotRequired[dict[str, list[Any]]]
    in_regions: NotRequired[dict[str, list[int]]]  # outputs written to client regions
    held: NotRequired[bool]  # outputs lie in a worker's slot until the bridge says DONE


class ReportBody(TypedDict):
    """A ``REPORT`` (read field by field, defensively, by ``gateway.intake.BridgeReports``)."""

    answers: list[list[Any]]  # [[bridge, status_class, n], ...]
    stats: list[list[Any]]  # [[name, version, delta], ...]
    pending: list[list[Any]]  # [[name, version, n, seconds], ...]
    slots_in_use: int
    bytes_in_use: int
    flush: NotRequired[int]


# ``type(x) is int``: JSON integers are exact ints, and True is not one (it is an int to
# ``isinstance``); these run once per request, so no helper calls.

def infer_item(raw: dict[str, Any]) -> InferItem:
    """``raw`` as an ``InferItem`` once its fields have their types; ``WireError`` otherwise.

    The inputs' contents are checked by ``gateway.intake.admit``, which knows the model.
    """
    get = raw.get
    timeout_us = get("timeout_us", False)
    if not (type(get("id")) is int and type(get("model")) is str
            and type(get("version")) is str and type(get("rows")) is int
            and type(get("inputs")) is list and type(get("outputs")) is dict
            and type(get("parameters")) is dict
            and (timeout_us is None or type(timeout_us) is int)
            and type(get("request_id")) is str):
        raise WireError("an INFER item lacks a field or has one of the wrong type")
    return cast(InferItem, raw)


def answer_item(raw: object) -> AnswerItem:
    """``raw`` as an ``AnswerItem`` once its fields have their types; ``WireError`` otherwise."""
    if not (type(raw) is dict and type(raw.get("id")) is int
            and type(raw.get("status")) is int and type(raw.get("freed")) is bool
            and (len(raw) == 3 or (
                ("error" not in raw or type(raw["error"]) is list)
                and ("outputs" not in raw or type(raw["outputs"]) is dict)
                and ("in_regions" not in raw or type(raw["in_regions"]) is dict)
                and type(raw.get("held", False)) is bool))):
        raise WireError("an ANSWER item lacks a field or has one of the wrong type")
    return cast(AnswerItem, raw)


def intake_address(run_dir: str) -> str:
    return f"ipc://{run_dir}/bridges.sock"
