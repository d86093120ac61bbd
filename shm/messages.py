"""The gateway <-> worker messages as types, each checked once where it arrives. I/O-free.

(Messages are plain slotted dataclasses, not frozen ones: a frozen dataclass costs about three
times as much to build, and one is built per request on the batching path.)

``shm.wire`` frames a message (``[kind, JSON body]``); this module says what each body
holds. A sender builds one of the classes below and ``encode``s it; a receiver ``decode``s
the frames into one, or gets a ``WireError`` naming what is wrong — after that nobody reads a
body by key or a list by index, and a malformed message never fails deep inside a batch.
The fields are those of ``docs/protocols/gateway-worker.md``.

Two directions, a decoder each: ``decode_to_worker`` (what a producer sends to a copy's batch
socket: ``Batch``, ``Release``, ``SequenceEnd``, ``Stop``) and ``decode_from_worker`` (what a
copy sends to the gateway's inbox or a producer's reply socket: ``Hello``, ``Heartbeat``,
``Unhealthy``, ``Fatal``, ``Result``, ``Error``, and ``Attach``, whose body the attach desk
checks itself: refusing a worker needs the reason and its control socket); and, for attached
copies, ``decode_control`` (``Welcome``, ``Refused``, ``Stop``, ``Kill``). Workers and the
gateway both import this module, so it needs nothing but the standard library and
``shm.descriptor``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from shm import wire
from shm.descriptor import Descriptor
from shm.wire import WireError

Json = dict[str, Any]
SlotRef = tuple[str, int]  # an output slot: (segment, offset)
NOT_PLACED = ""  # the segment of a RESULT output no slab holds (every item took it to a region)
MAX_MESSAGE_CHARS = 2000  # of an error message kept


# -- checking fields -------------------------------------------------------------------------

def _int(body: Json, key: str) -> int:
    value = body.get(key)
    if type(value) is not int:
        raise WireError(f"{key!r} is not an integer")
    return value


def _str(body: Json, key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise WireError(f"{key!r} is not a string")
    return value


def _dict(body: Json, key: str) -> Json:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WireError(f"{key!r} is not an object")
    return value


def _list(body: Json, key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WireError(f"{key!r} is not a list")
    return value


def _seconds(body: Json, key: str, default: float = 0.0) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise WireError(f"{key!r} is not a duration")
    return float(value)


def _message(body: Json) -> str:
    return str(body.get("message", ""))[:MAX_MESSAGE_CHARS]


def _descriptor(raw: object, what: str, name: object) -> Descriptor:
    """``raw`` as a descriptor; else a WireError naming ``what`` (input or output) ``name``."""
    if isinstance(raw, list):
        try:
            return Descriptor.from_wire(raw)
        except (ValueError, TypeError):
            pass
    raise WireError(f"{what} {name!r} is not a descriptor: {raw!r:.80}")


def _slots(raw: list[Any]) -> list[SlotRef]:
    slots: list[SlotRef] = []
    for slot in raw:
        if (not isinstance(slot, list) or len(slot) != 2 or not isinstance(slot[0], str)
                or type(slot[1]) is not int):
            raise WireError(f"an output slot is not [segment, offset]: {slot!r:.80}")
        slots.append((slot[0], slot[1]))
    return slots


# -- the parts of a batch --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OutputTarget:
    """Where a client wants an output written: a byte range of a registered region."""

    segment: str
    offset: int
    byte_size: int

    def to_wire(self) -> list[object]:
        return [self.segment, self.offset, self.byte_size]

    @classmethod
    def from_wire(cls, raw: object) -> OutputTarget:
        if (not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[0], str)
                or type(raw[1]) is not int or type(raw[2]) is not int):
            raise WireError(f"an output target is not [segment, offset, byte_size]: {raw!r:.80}")
        return cls(raw[0], raw[1], raw[2])


@dataclass(frozen=True, slots=True)
class SequenceRef:
    """The v2 sequence parameters of a request to a stateful model."""

    id: int | str
    start: bool = False
    end: bool = False

    def to_wire(self) -> list[object]:
        return [self.id, self.start, self.end]

    @classmethod
    def from_wire(cls, raw: object) -> SequenceRef:
        if (not isinstance(raw, list) or len(raw) != 3
                or not isinstance(raw[0], int | str) or isinstance(raw[0], bool)):
            raise WireError(f"a sequence is not [id, start, end]: {raw!r:.80}")
        return cls(raw[0], bool(raw[1]), bool(raw[2]))


@dataclass(frozen=True, slots=True)
class Reply:
    """Where a batch's answer goes: a data-plane process's reply socket, and its pid."""

    address: str
    pid: int

    def to_wire(self) -> list[object]:
        return [self.address, self.pid]

    @classmethod
    def from_wire(cls, raw: object) -> Reply:
        if (not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], str)
                or type(raw[1]) is not int):
            raise WireError(f"a reply is not [address, pid]: {raw!r:.80}")
        return cls(raw[0], raw[1])


@dataclass(slots=True)
class BatchItem:
    """One request's part of a batch."""

    rid: str  # the request's id, for log lines only
    rows: int
    inputs: dict[str, Descriptor]
    regions: tuple[str, ...] = ()  # inputs in client regions: re-checked before use
    outputs: dict[str, OutputTarget] = field(default_factory=dict)  # outputs to client regions
    sequence: SequenceRef | None = None

    def to_wire(self) -> Json:
        item: Json = {"rid": self.rid, "rows": self.rows,
                      "inputs": {n: d.to_wire() for n, d in self.inputs.items()}}
        if self.regions:
            item["regions"] = list(self.regions)
        if self.outputs:
            item["outputs"] = {n: t.to_wire() for n, t in self.outputs.items()}
        if self.sequence is not None:
            item["sequence"] = self.sequence.to_wire()
        return item

    @classmethod
    def from_wire(cls, raw: object) -> BatchItem:
        if not isinstance(raw, dict):
            raise WireError("a batch item is not an object")
        rows = _int(raw, "rows")
        if rows < 0:
            raise WireError("a batch item has negative rows")
        inputs = {n: _descriptor(d, "input", n) for n, d in _dict(raw, "inputs").items()}
        regions: tuple[str, ...] = ()
        if "regions" in raw:
            regions = tuple(_list(raw, "regions"))
            if not all(isinstance(n, str) for n in regions):
                raise WireError("'regions' is not a list of input names")
        outputs = ({n: OutputTarget.from_wire(t) for n, t in _dict(raw, "outputs").items()}
                   if "outputs" in raw else {})
        sequence = raw.get("sequence")
        return cls(_str(raw, "rid", ""), rows, inputs, regions, outputs,
                   None if sequence is None else SequenceRef.from_wire(sequence))


# -- producer -> worker ----------------------------------------------------------------------

@dataclass(slots=True)
class Batch:
    KIND: ClassVar[bytes] = wire.BATCH

    id: int
    items: list[BatchItem]
    parameters: Json
    max_rows: int | None = None  # the model's batch size: the worker may merge up to it
    reply: Reply | None = None  # None: answer to the gateway's inbox
    release: list[SlotRef] = field(default_factory=list)  # earlier output slots, now free

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.items)

    def to_wire(self) -> Json:
        body: Json = {"id": self.id, "items": [i.to_wire() for i in self.items],
                      "parameters": self.parameters}
        if self.max_rows is not None:
            body["max_rows"] = self.max_rows
        if self.reply is not None:
            body["reply"] = self.reply.to_wire()
        if self.release:
            body["release"] = [list(s) for s in self.release]
        return body

    @classmethod
    def from_wire(cls, body: Json) -> Batch:
        items = [BatchItem.from_wire(i) for i in _list(body, "items")]
        if not items:
            raise WireError("a batch without items")
        max_rows = body.get("max_rows")
        if max_rows is not None and type(max_rows) is not int:
            raise WireError("'max_rows' is not an integer")
        reply = body.get("reply")
        return cls(_int(body, "id"), items, _dict(body, "parameters"), max_rows,
                   None if reply is None else Reply.from_wire(reply),
                   _slots(_list(body, "release")))


@dataclass(slots=True)
class Release:
    """Output slots the producer is done with."""

    KIND: ClassVar[bytes] = wire.RELEASE

    slots: list[SlotRef]

    def to_wire(self) -> Json:
        return {"slots": [list(s) for s in self.slots]}

    @classmethod
    def from_wire(cls, body: Json) -> Release:
        return cls(_slots(_list(body, "slots")))


@dataclass(slots=True)
class SequenceEnd:
    """A sequence ended without a request saying so (evicted, cancelled, closed, restarted)."""

    KIND: ClassVar[bytes] = wire.SEQUENCE_END

    sequence_id: int | str
    reason: str

    def to_wire(self) -> Json:
        return {"sequence_id": self.sequence_id, "reason": self.reason}

    @classmethod
    def from_wire(cls, body: Json) -> SequenceEnd:
        seq = body.get("sequence_id")
        if not isinstance(seq, int | str) or isinstance(seq, bool):
            raise WireError("'sequence_id' is not an integer or a string")
        return cls(seq, _str(body, "reason", "ended"))


@dataclass(slots=True)
class _Order:
    """A message that is its kind alone (an empty body)."""

    KIND: ClassVar[bytes]

    def to_wire(self) -> Json:
        return {}

    @classmethod
    def from_wire(cls, body: Json) -> Self:
        return cls()


@dataclass(slots=True)
class Stop(_Order):
    """Stop serving and exit (a copy's batch socket, or an attached worker's control)."""

    KIND: ClassVar[bytes] = wire.STOP


# -- worker -> gateway -----------------------------------------------------------------------

@dataclass(slots=True)
class Hello:
    """Loaded and ready; ``inbox`` is the address of the worker's own batch socket."""

    KIND: ClassVar[bytes] = wire.HELLO

    copy: int
    pid: int
    model: str
    inbox: str

    def to_wire(self) -> Json:
        return {"copy": self.copy, "pid": self.pid, "model": self.model, "inbox": self.inbox}

    @classmethod
    def from_wire(cls, body: Json) -> Hello:
        return cls(_int(body, "copy"), _int(body, "pid"), _str(body, "model", ""),
                   _str(body, "inbox"))


@dataclass(slots=True)
class Heartbeat:
    """Alive; ``busy_s``: how long the batch or health check running now has run."""

    KIND: ClassVar[bytes] = wire.HEARTBEAT

    copy: int
    busy_s: float = 0.0

    def to_wire(self) -> Json:
        return {"copy": self.copy, "busy_s": self.busy_s}

    @classmethod
    def from_wire(cls, body: Json) -> Heartbeat:
        return cls(_int(body, "copy"), _seconds(body, "busy_s"))


@dataclass(slots=True)
class _Report:
    """A copy reporting a failure of its model, in words."""

    KIND: ClassVar[bytes]

    copy: int
    message: str

    def to_wire(self) -> Json:
        return {"copy": self.copy, "message": self.message}

    @classmethod
    def from_wire(cls, body: Json) -> Self:
        return cls(_int(body, "copy"), _message(body))


@dataclass(slots=True)
class Unhealthy(_Report):
    """The model's ``health()`` failed."""

    KIND: ClassVar[bytes] = wire.UNHEALTHY


@dataclass(slots=True)
class Fatal(_Report):
    """The model failed to load."""

    KIND: ClassVar[bytes] = wire.FATAL


@dataclass(slots=True)
class Timing:
    """Where a batch's time went in the worker, in nanoseconds."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0

    def to_wire(self) -> Json:
        return {"input_ns": self.input_ns, "infer_ns": self.infer_ns,
                "output_ns": self.output_ns}

    @classmethod
    def from_wire(cls, raw: Json) -> Timing:
        t_in, t_infer, t_out = raw.get("input_ns", 0), raw.get("infer_ns", 0), raw.get(
            "output_ns", 0)
        if (type(t_in) is not int or type(t_infer) is not int or type(t_out) is not int
                or t_in < 0 or t_infer < 0 or t_out < 0):
            raise WireError("'timing' holds something other than nanoseconds")
        return cls(t_in, t_infer, t_out)


@dataclass(slots=True)
class Result:
    """A batch's answer: one descriptor per output for the whole batch, batch dimension first
    (segment ``NOT_PLACED`` when every item took that output to its own client region), and
    the items whose region could not take their rows (``item_errors``: index -> why)."""

    KIND: ClassVar[bytes] = wire.RESULT

    copy: int
    id: int
    outputs: dict[str, Descriptor]
    timing: Timing = field(default_factory=Timing)
    item_errors: dict[int, str] = field(default_factory=dict)

    def slots(self) -> list[SlotRef]:
        """The output slots this answer holds in the worker's slab."""
        return [(d.segment, d.offset) for d in self.outputs.values()
                if d.segment != NOT_PLACED]

    def to_wire(self) -> Json:
        body: Json = {
            "copy": self.copy, "id": self.id,
            "outputs": {n: [d.segment or None, *d.to_wire()[1:]]
                        for n, d in self.outputs.items()},
            "timing": self.timing.to_wire(),
        }
        if self.item_errors:
            body["item_errors"] = {str(i): m for i, m in self.item_errors.items()}
        return body

    @classmethod
    def from_wire(cls, body: Json) -> Result:
        outputs: dict[str, Descriptor] = {}
        for name, raw in _dict(body, "outputs").items():
            if isinstance(raw, list) and raw and raw[0] is None:
                raw = [NOT_PLACED, *raw[1:]]
            outputs[name] = _descriptor(raw, "output", name)
        errors: dict[int, str] = {}
        for index, message in _dict(body, "item_errors").items():
            if not isinstance(index, str) or not index.isdecimal():
                raise WireError("'item_errors' is not keyed by item index")
            errors[int(index)] = str(message)[:MAX_MESSAGE_CHARS]
        return cls(_int(body, "copy"), _int(body, "id"), outputs,
                   Timing.from_wire(_dict(body, "timing")), errors)


@dataclass(slots=True)
class Error:
    """The batch failed (the model raised, or its inputs or outputs could not be used)."""

    KIND: ClassVar[bytes] = wire.ERROR

    copy: int
    id: int
    message: str

    def to_wire(self) -> Json:
        return {"copy": self.copy, "id": self.id, "message": self.message}

    @classmethod
    def from_wire(cls, body: Json) -> Error:
        return cls(_int(body, "copy"), _int(body, "id"), _message(body) or "model failed")


@dataclass(slots=True)
class Attach:
    """An attaching worker's announcement, as received: ``supervisor.attach.parse_announcement``
    checks it (against the run directory, answering REFUSED with the reason)."""

    KIND: ClassVar[bytes] = wire.ATTACH

    body: Json

    def to_wire(self) -> Json:
        return self.body

    @classmethod
    def from_wire(cls, body: Json) -> Attach:
        return cls(body)


# -- gateway -> an attached worker's control socket -------------------------------------------

@dataclass(slots=True)
class Welcome:
    """Admitted as copy ``copy``: load the model so, then say HELLO."""

    KIND: ClassVar[bytes] = wire.WELCOME

    copy: int
    entrypoint: str
    parameters: Json
    device: str
    shm_prefix: str
    heartbeat_s: float
    health_interval_s: float

    def to_wire(self) -> Json:
        return {"copy": self.copy, "entrypoint": self.entrypoint, "parameters": self.parameters,
                "device": self.device, "shm_prefix": self.shm_prefix,
                "heartbeat_s": self.heartbeat_s, "health_interval_s": self.health_interval_s}

    @classmethod
    def from_wire(cls, body: Json) -> Welcome:
        return cls(_int(body, "copy"), _str(body, "entrypoint"), _dict(body, "parameters"),
                   _str(body, "device", "cpu"), _str(body, "shm_prefix"),
                   _seconds(body, "heartbeat_s"), _seconds(body, "health_interval_s"))


@dataclass(slots=True)
class Refused:
    """Not admitted: the worker exits with status 4 and ``reason``."""

    KIND: ClassVar[bytes] = wire.REFUSED

    reason: str

    def to_wire(self) -> Json:
        return {"reason": self.reason}

    @classmethod
    def from_wire(cls, body: Json) -> Refused:
        return cls(str(body.get("reason", "no reason given"))[:MAX_MESSAGE_CHARS])


@dataclass(slots=True)
class Kill(_Order):
    """Exit now (hung, or heartbeats missed)."""

    KIND: ClassVar[bytes] = wire.KILL


ToWorker = Batch | Release | SequenceEnd | Stop
Control = Welcome | Refused | Stop | Kill
FromWorker = Hello | Heartbeat | Unhealthy | Fatal | Result | Error | Attach
Message = ToWorker | FromWorker | Control

_TO_WORKER: dict[bytes, Callable[[Json], ToWorker]] = {
    cls.KIND: cls.from_wire for cls in (Batch, Release, SequenceEnd, Stop)
}
_FROM_WORKER: dict[bytes, Callable[[Json], FromWorker]] = {
    cls.KIND: cls.from_wire for cls in (Hello, Heartbeat, Unhealthy, Fatal, Result, Error, Attach)
}

_CONTROL: dict[bytes, Callable[[Json], Control]] = {
    cls.KIND: cls.from_wire for cls in (Welcome, Refused, Stop, Kill)
}

def encode(message: Message) -> list[bytes]:
    return wire.encode(message.KIND, message.to_wire())


def _decode(frames: list[Any], table: dict[bytes, Callable[[Json], Any]], where: str) -> Any:
    kind, body = wire.decode(frames)
    parse = table.get(kind)
    if parse is None:
        raise WireError(f"{kind.decode()} is not a message {where}")
    try:
        return parse(body)
    except WireError as exc:
        raise WireError(f"{kind.decode()}: {exc}") from None


def decode_to_worker(frames: list[Any]) -> ToWorker:
    """A message on a copy's batch socket; ``WireError`` if it is not one."""
    message: ToWorker = _decode(frames, _TO_WORKER, "to a worker")
    return message


def decode_from_worker(frames: list[Any]) -> FromWorker:
    """A message from a copy; ``WireError`` if it is not one."""
    message: FromWorker = _decode(frames, _FROM_WORKER, "from a worker")
    return message


def decode_control(frames: list[Any]) -> Control:
    """A message on an attached worker's control socket; ``WireError`` if it is not one."""
    message: Control = _decode(frames, _CONTROL, "to a worker's control socket")
    return message
