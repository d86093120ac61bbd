"""The control process's side of data-plane processes (``--workers N``): their messages.

I/O-free: the Trio adapter (``bridges.dataplane.pool``) owns the sockets and the processes and
calls in here. A data-plane process forwards what it does not serve itself (stateful
models, sequences): it parses HTTP, checks the request against its copy of the
model's configuration and writes tensor bytes into its *own* slab; the core receives only
descriptors. Theory of operation:

- **Never trust a bridge blindly.** ``admit`` re-checks every input against the core's own
  configuration of the model (``InputChecker``: name, datatype, shape, batch, total size)
  and every descriptor against the sending bridge: its segment must be named
  ``{prefix}-{bridge pid}-b-...`` (the pid the core spawned, not one the bridge claims) and
  the byte range must lie inside the segment. Client-region references are resolved here,
  where the region registry lives.
- **Slots are the bridge's, freed once, by the bridge.** An input slot may be reused only when
  no worker can read it any more. The model server tells us (``InferRequest.on_inputs_freed``):
  usually before the answer (``freed: true`` in it), else later (a ``FREE`` message) — a
  request abandoned at its deadline may still be running on a worker.
- **Outputs.** Small outputs travel inline in the answer (one copy of a few KB costs less
  than the ``DONE`` message a descriptor would need); large ones travel as descriptors of the
  worker's output slot, which the core holds (``held``) until the bridge says ``DONE``.
- **A bridge that dies** has its requests abandoned and its held outputs released; its
  segments are unlinked once none of its inputs can still be read (``BridgeBook.quiet``).
- **The copy table** (``routing_table``, typed in ``gateway.copy_table``) is what a bridge
  needs to resolve and check a request without asking the core: every routed model's
  versions with their configuration, the default version, why a model refuses requests now,
  stateless models' copies, and the client regions. The core re-resolves and re-checks
  anyway; the table only spares round trips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway import errors
from gateway.admission import Admission, InputChecker, Limits
from gateway.bridge_wire import InferItem
from gateway.copy_table import CopyEntry, CopyTable, Missing, ModelEntry, Refusal, VersionEntry
from gateway.errors import InferoxyError, InvalidArgument, NotFound, Unavailable
from gateway.request import RequestResult
from shm import bytes_tensor
from shm.datatypes import V2_TO_NUMPY
from shm.descriptor import BYTES_DTYPE, Descriptor

_ANY_SIZE = bytes_tensor.BytesLimits(max_elements=1 << 62, max_element_bytes=1 << 62)
INLINE_OUTPUT_BYTES = 64 << 10  # larger outputs go back as descriptors (held until DONE)

_ERRORS: dict[str, type[InferoxyError]] = {
    cls.__name__: cls for cls in (
        errors.InferoxyError, errors.InvalidArgument, errors.PayloadTooLarge, errors.NotFound,
        errors.Forbidden, errors.Conflict, errors.Unavailable, errors.DeadlineExceeded,
        errors.ModelError, errors.Unsupported,
    )
}


# -- errors on the wire -------------------------------------------------------------------------

def error_to_wire(exc: InferoxyError) -> Refusal:
    # A subclass the other side cannot name (BodyTimeout, ...) travels as its nearest base.
    name = next(c.__name__ for c in type(exc).__mro__ if _ERRORS.get(c.__name__) is c)
    return name, exc.message, int(getattr(exc, "retry_after_s", 1))


def error_from_wire(raw: Any) -> InferoxyError:
    try:
        name, message, retry_after = raw
        cls = _ERRORS.get(name, InferoxyError)
        if cls is Unavailable:
            return Unavailable(str(message), int(retry_after))
        return cls(str(message))
    except (TypeError, ValueError):
        return InferoxyError("the gateway core sent a malformed answer")


# -- the copy table -----------------------------------------------------------------------------

def routing_table(gateway: Any) -> CopyTable:
    """The copy table (``gateway.copy_table``) as the control process sees it now.

    A version's ``refuse`` is the error ``ensure_accepting`` would raise now (or None), so a
    data-plane process can refuse at once, as the control process does, without asking.
    """
    versions: dict[str, dict[str, VersionEntry]] = {}
    for server in gateway.all_servers():
        config = server.config
        try:
            gateway.ensure_accepting(server)
            refuse = None
        except InferoxyError as exc:
            refuse = error_to_wire(exc)
        copies = tuple(CopyEntry(c.id, c.ready, c.inbox) for c in server.copies
                       ) if config.stateless else ()
        versions.setdefault(config.name, {})[config.version] = VersionEntry(
            config, refuse, copies)
    models: dict[str, ModelEntry | Missing] = {
        name: ModelEntry(gateway.model(name).config.version, by_version)
        for name, by_version in versions.items()
    }
    for name in gateway.declarations:
        if name not in models:
            try:
                gateway.model(name)
            except NotFound as exc:
                models[name] = Missing(exc.message)
    regions = gateway.regions
    return CopyTable(models, tuple(regions.status()) if regions.enabled else ())


# -- admitting a bridge's request --------------------------------------------------------------

def _region(raw: Any) -> tuple[Any, Any, Any]:
    if not isinstance(raw, list) or len(raw) != 3:
        raise InvalidArgument("malformed shared-memory region reference")
    return raw[0], raw[1], raw[2]


def admit(admission: Admission, body: InferItem, limits: Limits,
          segment_prefix: str, segment_size: Callable[[str], int]) -> int:
    """Fill ``admission`` from an INFER item (``bridge_wire.infer_item`` checked its fields'
    types); the request's rows. Raises InvalidArgument.

    ``segment_size(name)`` maps a bridge segment (raising ``OSError``/``ValueError`` when it
    cannot); only names that start with ``segment_prefix`` are ever asked for.
    """
    config = admission.server.config
    checker = InputChecker(config, limits, bytes_ok=True)
    raw_inputs = body["inputs"]
    if not raw_inputs:
        raise InvalidArgument("'inputs' must be a non-empty array")
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, list) or len(raw) != 5:
            raise InvalidArgument("malformed input in a bridge message")
        name, datatype, shape, desc, region = raw
        checked = checker.check(f"inputs[{i}]", name, datatype, shape)
        if region is not None:
            admission.region_input(checked, *_region(region))
            continue
        try:
            d = Descriptor.from_wire(desc)
        except (AssertionError, TypeError, ValueError):
            raise InvalidArgument("malformed descriptor in a bridge message") from None
        if checked.bytes_limits is not None:  # BYTES: the bridge checked its form
            checked = checker.sized(checked, d.size)
        if (not d.segment.startswith(segment_prefix) or d.dtype != checked.dtype_name
                or d.shape != checked.shape or d.offset < 0):
            raise InvalidArgument("a bridge descriptor does not match its input")
        try:
            size = segment_size(d.segment)
        except (OSError, ValueError):
            raise InvalidArgument("a bridge descriptor names no segment of the bridge") from None
        if d.offset + checked.nbytes > size:
            raise InvalidArgument("a bridge descriptor lies outside its segment")
        admission.inputs[checked.spec.name] = d
    rows = checker.finish()
    for name, region in body["outputs"].items():
        spec = config.output(name)
        if spec is None:
            raise InvalidArgument(f"{name!r} is not an output of model {config.name!r}")
        admission.region_output(spec, *_region(region))
    return rows


def answer_outputs(result: RequestResult, locate: Callable[[np.ndarray], Descriptor | None],
                   blob: bytearray) -> tuple[dict[str, Any], bool]:
    """An answer's ``outputs``, and whether the result must be held until DONE.

    Small outputs are appended to ``blob`` (the message's one byte frame; the copy is made
    now, so the worker may reuse its slot once this returns) and named by their offset there;
    large ones by the descriptor of the worker's slot (``locate``), which stays held.
    """
    outputs: dict[str, Any] = {}
    held = False
    for name, arr in result.outputs.items():
        if arr.dtype.kind == "O":  # BYTES (decoded by the model server): its wire form
            wire = bytes_tensor.encode_array(arr)
            outputs[name] = [BYTES_DTYPE, list(arr.shape), len(blob), len(wire)]
            blob += wire
            continue
        desc = locate(arr) if arr.nbytes > INLINE_OUTPUT_BYTES else None
        if desc is not None:
            outputs[name] = [arr.dtype.name, list(arr.shape), desc.to_wire()]
            held = True
        else:
            outputs[name] = [arr.dtype.name, list(arr.shape), len(blob)]
            blob += np.ascontiguousarray(arr).data
    return outputs, held


def read_outputs(outputs: dict[str, Any], blob: Any,
                 view: Callable[[Descriptor], np.ndarray]) -> dict[str, np.ndarray]:
    """The bridge's side of ``answer_outputs``: arrays over the blob or the worker's slots."""
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, shape, where, *size) in outputs.items():
        if dtype == BYTES_DTYPE:
            wire = memoryview(blob)[where:where + size[0]]
            arrays[name] = bytes_tensor.decode(wire, tuple(shape), _ANY_SIZE)
        elif isinstance(where, int):
            arrays[name] = np.frombuffer(blob, dtype=np.dtype(dtype), count=math.prod(shape),
                                         offset=where).reshape(shape)
        else:
            arrays[name] = view(Descriptor.from_wire(where))
    return arrays


# -- the book of one bridge's requests ---------------------------------------------------------

@dataclass(eq=False, slots=True)
class Entry:
    """One INFER of a bridge, from arrival until its inputs are free and its outputs let go."""

    cancel: Callable[[], None] | None = None  # abandons the request (client went away)
    answered: bool = False
    inputs_freed: bool = False
    held: RequestResult | None = None


@dataclass(eq=False, slots=True)
class BridgeBook:
    """The requests one data-plane process has in the control process, by its message id."""

    index: int
    pid: int
    prefix: str  # its segments' names start with this
    entries: dict[int, Entry] = field(default_factory=dict)
    dead: bool = False

    def open(self, msg_id: int) -> Entry | None:
        """A new request; None when the id is in use (a confused bridge: drop it)."""
        if msg_id in self.entries:
            return None
        entry = self.entries[msg_id] = Entry()
        return entry

    def _settle(self, msg_id: int, entry: Entry) -> None:
        if entry.answered and entry.inputs_freed and entry.held is None:
            self.entries.pop(msg_id, None)

    def answered(self, msg_id: int, held: RequestResult | None) -> None:
        entry = self.entries.get(msg_id)
        if entry is not None:
            entry.answered, entry.held, entry.cancel = True, held, None
            self._settle(msg_id, entry)

    def inputs_freed(self, msg_id: int) -> bool:
        """Mark the inputs free; whether the answer went out already (then say FREE)."""
        entry = self.entries.get(msg_id)
        if entry is None:
            return False
        entry.inputs_freed = True
        was_answered = entry.answered
        self._settle(msg_id, entry)
        return was_answered

    def done(self, msg_id: int) -> None:
        """The bridge copied a held answer's outputs."""
        entry = self.entries.get(msg_id)
        if entry is not None and entry.held is not None:
            held, entry.held = entry.held, None
            held.release()
            self._settle(msg_id, entry)

    def cancel(self, msg_id: int) -> None:
        entry = self.entries.get(msg_id)
        if entry is not None and entry.cancel is not None:
            entry.cancel()

    def die(self) -> None:
        """The process is gone: abandon its requests, release what it held."""
        self.dead = True
        for msg_id, entry in list(self.entries.items()):
            if entry.cancel is not None:
                entry.cancel()
            if entry.held is not None:
                held, entry.held = entry.held, None
                held.release()
            self._settle(msg_id, entry)

    @property
    def quiet(self) -> bool:
        """No worker can still read an input slot of this bridge."""
        return all(e.inputs_freed for e in self.entries.values())

    @property
    def in_flight(self) -> int:
        return len(self.entries)


@dataclass(frozen=True, slots=True)
class Report:
    """What one REPORT carried, checked: answer counts ``(bridge, status_class, n)``, models'
    statistics ``(name, version, gateway.stats.stats_delta)``, the FLUSH it answers."""

    answers: list[tuple[str, str, int]]
    stats: list[tuple[str, str, dict[str, Any]]]
    flush: int | None


@dataclass(slots=True)
class BridgeReports:
    """What data-plane processes report: answers per process and their slabs' use (metrics)."""

    answers: dict[int, int] = field(default_factory=dict)  # worker index -> answers
    # per process: requests it has queued or running, by (model, version)
    pending: dict[int, dict[tuple[str, str], int]] = field(default_factory=dict)
    # per process: how long its oldest queued request of a model has waited (seconds)
    head_ages: dict[int, dict[tuple[str, str], float]] = field(default_factory=dict)
    slots_in_use: dict[int, int] = field(default_factory=dict)
    bytes_in_use: dict[int, int] = field(default_factory=dict)

    def report(self, index: int, body: dict[str, Any]) -> Report:
        """Record a REPORT (``bridge_wire.ReportBody``, read defensively: an entry of
        another shape is skipped); what it carried for the caller to add up."""
        counts: list[tuple[str, str, int]] = []
        stats: list[tuple[str, str, dict[str, Any]]] = []
        for item in body.get("answers") or []:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], str) and isinstance(item[2], int)
                    and 0 < item[2] < 1 << 40):
                counts.append((item[0], item[1], item[2]))
                self.answers[index] = self.answers.get(index, 0) + item[2]
        pending, ages = {}, {}
        for item in body.get("pending") or []:
            if (isinstance(item, list) and len(item) == 4 and isinstance(item[2], int)
                    and item[2] >= 0 and isinstance(item[3], int | float)):
                pending[(str(item[0]), str(item[1]))] = item[2]
                ages[(str(item[0]), str(item[1]))] = max(0.0, float(item[3]))
        self.pending[index] = pending
        self.head_ages[index] = ages
        for key, book in (("slots_in_use", self.slots_in_use),
                          ("bytes_in_use", self.bytes_in_use)):
            value = body.get(key)
            if isinstance(value, int) and value >= 0:
                book[index] = value
        for item in body.get("stats") or []:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], str) and isinstance(item[2], dict)):
                stats.append((item[0], item[1], item[2]))
        flush = body.get("flush")
        return Report(counts, stats, flush if type(flush) is int else None)

    def pending_of(self, name: str, version: str) -> int:
        """Requests of a model queued or running in the data-plane processes."""
        return sum(p.get((name, version), 0) for p in self.pending.values())

    def head_age(self, name: str, version: str) -> float:
        """The longest any data-plane process's oldest queued request has waited."""
        return max((a.get((name, version), 0.0) for a in self.head_ages.values()), default=0.0)

    def gone(self, index: int) -> None:
        """A process died: its slab went with it."""
        self.pending.pop(index, None)
        self.head_ages.pop(index, None)
        self.slots_in_use.pop(index, None)
        self.bytes_in_use.pop(index, None)


def numpy_dtype_name(datatype: str) -> str:
    return V2_TO_NUMPY[datatype].name
