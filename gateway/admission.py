"""Admitting one infer request into the core, for every bridge alike.

A bridge parses its protocol (v2 JSON, protobuf, ...), then:

1. ``InputChecker`` checks each input's name, datatype and shape against the model's
   declaration (batch dimension first, within ``batch_size``, the same for every input,
   every declared input present, the total size bounded);
2. an ``Admission`` gives each input a home — a slot of the gateway's slab that the bridge
   fills (its one copy), or a descriptor into a client-registered region (no copy) — and
   records outputs that go to client regions;
3. ``Admission.run`` submits the request and waits for its answer.

Until the request is submitted the slots belong to the admission and ``release`` gives
them back; after, they belong to the core. Messages name the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import trio

from gateway.config import ModelConfig, TensorSpec
from gateway.errors import (
    Forbidden,
    InferoxyError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    Unsupported,
)
from gateway.model_server import ModelServer
from gateway.request import InferRequest, RequestResult
from shm import bytes_tensor
from shm.bytes_tensor import BytesLimits, BytesTensorError
from shm.datatypes import BYTES, V2_TO_NUMPY, V2_TO_NUMPY_NAME
from shm.descriptor import BYTES_DTYPE, Descriptor
from shm.messages import OutputTarget, SequenceRef
from shm.regions import RegionError, RegionNotFound, RegionRegistry, RegionsDisabled
from shm.segment import Segment
from shm.slab import ShmExhausted, SlabAllocator, Slot

# Every bridge refuses a CUDA shared-memory registration with this (there is no GPU memory to
# share here); status and unregister succeed with nothing registered.
CUDA_SHM_REFUSED = (
    "CUDA shared memory is not supported by this server; use system shared memory"
)

_request_ids = itertools.count(1)  # ids of requests that came without one (for logs)

# Parameters the protocol (not the model) consumes; the rest reach the model.
RESERVED_PARAMETERS = frozenset({
    "binary_data_output", "binary_data", "binary_data_size", "timeout", "priority",
    "sequence_id", "sequence_start", "sequence_end", "headers", "shared_memory_region",
    "shared_memory_offset", "shared_memory_byte_size", "triton_enable_empty_final_response",
})


@dataclass(frozen=True, slots=True)
class CheckedInput:
    spec: TensorSpec
    shape: tuple[int, ...]  # with the batch dimension (1 added for a model without one)
    dtype: np.dtype
    nbytes: int  # BYTES: -1 until the bridge knows its wire size (``InputChecker.sized``)
    batched: bool = True  # False: the client's shape is ``shape[1:]``
    bytes_limits: BytesLimits | None = None  # set for (and only for) a BYTES tensor

    @property
    def dtype_name(self) -> str:
        return V2_TO_NUMPY_NAME[self.spec.datatype]

    @property
    def wire_shape(self) -> tuple[int, ...]:
        """The shape as the client gave it (what errors quote and bridges forward)."""
        return self.shape if self.batched else self.shape[1:]


@dataclass(frozen=True, slots=True)
class RegionRef:
    """Where a request puts a tensor in a client-registered shared-memory region (the v2
    ``shared_memory_region``/``_offset``/``_byte_size`` parameters, not yet validated)."""

    name: object
    offset: object
    byte_size: object


def region_ref(params: dict[str, Any]) -> RegionRef | None:
    """The region a tensor's parameters name, if any (any protocol)."""
    if "shared_memory_region" not in params:
        return None
    return RegionRef(params["shared_memory_region"], params.get("shared_memory_offset"),
                     params.get("shared_memory_byte_size"))


def _shape_text(spec: TensorSpec, batched: bool = True) -> str:
    return "[" + ", ".join([*(["-1"] if batched else []), *map(str, spec.shape)]) + "]"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask for, whatever its bridge (``--max-*`` settings).

    Each is checked before anything is allocated for the request, and answers a clear
    error: too many bytes is 413, the rest 400. The defaults never bind before the body
    limit does for ordinary traffic; they bound the work a hostile header can cause.
    """

    max_tensor_bytes: int = 256 << 20  # all inputs of a request together
    max_tensor_elements: int = 1 << 28  # one input, batch dimension included
    max_inputs: int = 64
    max_outputs: int = 64  # outputs a request names
    # BYTES inputs: how many elements, how large each
    bytes_tensors: BytesLimits = field(default_factory=BytesLimits)

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.max_body_bytes, settings.max_tensor_elements, settings.max_inputs,
                   settings.max_outputs, BytesLimits(settings.max_bytes_elements,
                                                     settings.max_bytes_element_bytes))

    def check_outputs(self, count: int) -> None:
        if count > self.max_outputs:
            raise InvalidArgument(
                f"the request names {count} outputs, more than the limit of "
                f"{self.max_outputs} (--max-outputs)"
            )


class InputChecker:
    """Checks a request's inputs one at a time against the model's declaration.

    ``bytes_ok``: the bridge carries BYTES tensors (HTTP and gRPC do; the others refuse
    them here, clearly). A BYTES input's size is known only once its data is seen: the
    bridge then calls ``sized``.
    """

    def __init__(self, config: ModelConfig, limits: Limits, bytes_ok: bool = False) -> None:
        self.config = config
        self.limits = limits
        self.bytes_ok = bytes_ok
        self.max_tensor_bytes = limits.max_tensor_bytes
        self.rows: int | None = None
        self._seen: set[str] = set()
        self._total = 0
        self._count = 0

    def check(self, where: str, name: object, datatype: object, shape: object) -> CheckedInput:
        config = self.config
        self._count += 1
        if self._count > self.limits.max_inputs:
            raise InvalidArgument(
                f"the request has more than the limit of {self.limits.max_inputs} inputs "
                f"(--max-inputs)"
            )
        spec = config.input(name) if isinstance(name, str) else None
        if spec is None:
            declared = ", ".join(t.name for t in config.inputs)
            raise InvalidArgument(
                f"{where}.name {name!r} is not an input of model {config.name!r} "
                f"(inputs: {declared})"
            )
        if spec.datatype == BYTES and not self.bytes_ok:
            raise InvalidArgument(
                f"input {spec.name!r} is BYTES, which this bridge does not carry; send it "
                f"over HTTP or gRPC"
            )
        if spec.name in self._seen:
            raise InvalidArgument(f"input {spec.name!r} is given twice")
        self._seen.add(spec.name)
        if datatype != spec.datatype:
            raise InvalidArgument(
                f"input {spec.name!r} has datatype {datatype!r}, expected {spec.datatype!r}"
            )
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidArgument(
                f"input {spec.name!r}: shape must be an array of non-negative ints"
            )
        dims = tuple(shape)
        batched = config.batch_size > 0
        if not batched:  # whole shapes; the model still gets a batch (of one) first
            if not spec.accepts(dims):
                raise InvalidArgument(
                    f"input {spec.name!r} has shape {list(dims)}, expected "
                    f"{_shape_text(spec, False)} (the model has no batch dimension)"
                )
            dims = (1, *dims)
        elif len(dims) != len(spec.shape) + 1 or not spec.accepts(dims[1:]):
            raise InvalidArgument(
                f"input {spec.name!r} has shape {list(dims)}, expected {_shape_text(spec)}"
            )
        elif not 1 <= dims[0] <= config.batch_size:
            raise InvalidArgument(
                f"input {spec.name!r}: batch dimension {dims[0]} must be in "
                f"[1, {config.batch_size}]"
            )
        if self.rows is None:
            self.rows = dims[0]
        elif dims[0] != self.rows:
            raise InvalidArgument(
                f"input {spec.name!r} has batch dimension {dims[0]}, other inputs have "
                f"{self.rows}"
            )
        if spec.datatype == BYTES:
            return self._bytes_input(spec, dims, batched)
        dtype = V2_TO_NUMPY[spec.datatype]
        elements = math.prod(dims)
        nbytes = elements * dtype.itemsize
        self._total += nbytes
        if self._total > self.max_tensor_bytes:  # too big in bytes says more: 413 first
            raise PayloadTooLarge(
                f"input tensors take more than the limit of {self.max_tensor_bytes} bytes"
            )
        if elements > self.limits.max_tensor_elements:
            raise InvalidArgument(
                f"input {spec.name!r} has {elements} elements, more than the limit of "
                f"{self.limits.max_tensor_elements} (--max-tensor-elements)"
            )
        return CheckedInput(spec, dims, dtype, nbytes, batched)

    def _bytes_input(self, spec: TensorSpec, dims: tuple[int, ...], batched: bool
                     ) -> CheckedInput:
        elements = math.prod(dims)
        if elements > self.limits.bytes_tensors.max_elements:
            raise InvalidArgument(
                f"input {spec.name!r}: a BYTES tensor of shape {list(dims[0 if batched else 1:])}"
                f" has {elements} elements, more than the limit of "
                f"{self.limits.bytes_tensors.max_elements}"
            )
        return CheckedInput(spec, dims, np.dtype(object), -1, batched, self.limits.bytes_tensors)

    def sized(self, tensor: CheckedInput, nbytes: int) -> CheckedInput:
        """A BYTES input whose wire form takes ``nbytes``: counted against the request's
        byte limit (its format is checked once the bytes are in place: ``check_bytes``)."""
        self._total += nbytes
        if self._total > self.max_tensor_bytes:
            raise PayloadTooLarge(
                f"input tensors take more than the limit of {self.max_tensor_bytes} bytes"
            )
        return dataclasses.replace(tensor, nbytes=nbytes)

    def finish(self) -> int:
        """The request's rows, once every input was checked."""
        missing = [t.name for t in self.config.inputs if t.name not in self._seen]
        if missing:
            raise InvalidArgument(f"missing input(s) {missing} of model {self.config.name!r}")
        if self.rows is None:
            raise InvalidArgument("the request has no inputs")
        return self.rows


def refuse_unsupported(config: ModelConfig, bridge: str) -> None:
    """The WebSocket and ZeroMQ bridges carry fixed-size tensors and one answer a request: a
    model with a BYTES input or output, or a decoupled one, is refused there, before
    anything is read."""
    if config.decoupled:
        raise Unsupported(f"model {config.name!r} is decoupled (several responses a request), "
                          f"which the {bridge} bridge does not carry; use gRPC "
                          f"ModelStreamInfer")
    for t in (*config.inputs, *config.outputs):
        if t.datatype == BYTES:
            raise InvalidArgument(
                f"model {config.name!r} has BYTES tensor {t.name!r}, which the {bridge} bridge "
                f"does not carry; send it over HTTP or gRPC"
            )


def _check_region_bytes(tensor: CheckedInput, segment: str, start: int, size: int) -> None:
    """A BYTES input in a client region, checked in place (mapped for the check only: a
    client's segment is never kept mapped by the gateway)."""
    try:
        mapped = Segment.attach(segment)
    except (OSError, ValueError):
        raise InvalidArgument(f"input {tensor.spec.name!r}: its shared-memory region cannot "
                              f"be read") from None
    try:
        memory = mapped.memory(start, size)
        try:
            check_bytes(tensor, memory)
        finally:
            memory.release()
    except ValueError as exc:  # the segment shrank since it was resolved
        raise InvalidArgument(f"input {tensor.spec.name!r}: {exc}") from None
    finally:
        mapped.close()


def check_bytes(tensor: CheckedInput, data: bytes | memoryview) -> None:
    """A BYTES input's wire form, in place: element count, lengths, bounds (400 if not)."""
    assert tensor.bytes_limits is not None
    try:
        bytes_tensor.check(data, tensor.shape, tensor.bytes_limits)
    except BytesTensorError as exc:
        raise InvalidArgument(f"input {tensor.spec.name!r}: {exc}") from None


def bytes_descriptor(slot: Slot, tensor: CheckedInput) -> Descriptor:
    """The descriptor of a sized BYTES input written at the start of ``slot``."""
    if tensor.nbytes < 0 or tensor.nbytes > slot.capacity:
        raise InvalidArgument(f"input {tensor.spec.name!r}: BYTES size unknown")
    return Descriptor(slot.segment.name, slot.offset, BYTES_DTYPE, tensor.shape, tensor.nbytes)


def check_output_name(config: ModelConfig, where: str, name: object) -> TensorSpec:
    spec = config.output(name) if isinstance(name, str) else None
    if spec is None:
        declared = ", ".join(t.name for t in config.outputs)
        raise InvalidArgument(
            f"{where}.name {name!r} is not an output of model {config.name!r} "
            f"(outputs: {declared})"
        )
    return spec


def check_timeout(value: object) -> int | None:
    """The v2 ``timeout`` parameter (microseconds), validated."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument("parameters.timeout must be a non-negative integer (microseconds)")
    return value or None


def region_error(exc: RegionError) -> InferoxyError:
    """The typed error for a region problem (its message is safe for clients)."""
    if isinstance(exc, RegionsDisabled):
        return Forbidden(str(exc))
    if isinstance(exc, RegionNotFound):
        return NotFound(str(exc))
    return InvalidArgument(str(exc))


def parse_sequence(params: dict[str, Any]) -> SequenceRef | None:
    """The v2 sequence parameters (``sequence_id`` int or string, ``sequence_start``,
    ``sequence_end``), validated; None when the request names no sequence (id 0 or "")."""
    seq_id = params.get("sequence_id")
    start, end = params.get("sequence_start", False), params.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise InvalidArgument("parameters.sequence_start and sequence_end must be true or false")
    if seq_id is None or seq_id == 0 or seq_id == "":
        if start or end:
            raise InvalidArgument("sequence_start/sequence_end need a non-zero sequence_id")
        return None
    if isinstance(seq_id, bool) or not isinstance(seq_id, int | str):
        raise InvalidArgument("parameters.sequence_id must be an integer or a string")
    if isinstance(seq_id, int) and not 0 < seq_id < 2**64:
        raise InvalidArgument("parameters.sequence_id must be in [1, 2**64)")
    if isinstance(seq_id, str) and len(seq_id) > 256:
        raise InvalidArgument("parameters.sequence_id must be at most 256 characters")
    return SequenceRef(seq_id, start, end)


def model_parameters(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in RESERVED_PARAMETERS}


class Admission:
    """One request's inputs and outputs on their way into the core."""

    def __init__(self, server: ModelServer, slab: SlabAllocator, regions: RegionRegistry,
                 request_timeout_s: float) -> None:
        self.server = server
        self._slab = slab
        self._regions = regions
        self._timeout_s = request_timeout_s
        self.slots: list[Slot] = []
        self.inputs: dict[str, Descriptor] = {}
        self.region_inputs: list[str] = []
        self.output_targets: dict[str, OutputTarget] = {}
        self._submitted = False
        self._bytes: list[tuple[CheckedInput, Slot]] = []  # checked at submit

    def slot(self, tensor: CheckedInput) -> Slot:
        """A slot for ``tensor``'s bytes, which the bridge then writes (its one copy)."""
        try:
            slot = self._slab.allocate(tensor.nbytes)
        except ShmExhausted as exc:
            raise Unavailable(f"out of request memory: {exc}") from None
        self.slots.append(slot)
        if tensor.bytes_limits is not None:
            self.inputs[tensor.spec.name] = bytes_descriptor(slot, tensor)
            self._bytes.append((tensor, slot))
        else:
            self.inputs[tensor.spec.name] = slot.descriptor(tensor.dtype_name, tensor.shape)
        return slot

    def region_input(self, tensor: CheckedInput, region: object, offset: object,
                     byte_size: object) -> None:
        """The input lies in a client region: the worker reads it there, no copy."""
        is_bytes = tensor.bytes_limits is not None
        try:
            segment, start, size = self._regions.resolve(
                region, offset, byte_size, None if is_bytes else tensor.nbytes,
                f"input {tensor.spec.name!r}"
            )
        except RegionError as exc:
            raise InvalidArgument(str(exc)) from None  # in a request, a bad reference is 400
        # A BYTES tensor takes the region's byte_size. Its form is checked here (a clear 400)
        # and again by the worker as it decodes it: the client may change it at any time.
        if is_bytes:
            _check_region_bytes(tensor, segment, start, size)
        self.inputs[tensor.spec.name] = Descriptor(segment, start, tensor.dtype_name,
                                                   tensor.shape, size if is_bytes else 0)
        self.region_inputs.append(tensor.spec.name)

    def region_output(self, spec: TensorSpec, region: object, offset: object,
                      byte_size: object) -> None:
        """The output goes to a client region: the worker writes it there."""
        try:
            segment, start, size = self._regions.resolve(
                region, offset, byte_size, None, f"output {spec.name!r}"
            )
        except RegionError as exc:
            raise InvalidArgument(str(exc)) from None
        self.output_targets[spec.name] = OutputTarget(segment, start, size)

    def release(self) -> None:
        """Give back the slots of a request that was never submitted (idempotent)."""
        if not self._submitted:
            while self.slots:
                self._slab.free(self.slots.pop())

    async def run(self, rows: int, parameters: dict[str, Any], timeout_us: int | None,
                  request_id: str) -> RequestResult:
        """Submit and wait for the answer."""
        request = self.submit(rows, parameters, timeout_us, request_id)
        return await self.server.wait(request)

    def submit(self, rows: int, parameters: dict[str, Any], timeout_us: int | None,
               request_id: str, incarnation: Any = None) -> InferRequest:
        """Queue the request now (synchronously: a stream's frames keep their order);
        ``await server.wait(request)`` gives its answer."""
        sequence = parse_sequence(parameters) if parameters else None  # checked before queueing
        for tensor, slot in self._bytes:
            check_bytes(tensor, slot.memory(tensor.nbytes))
        timeout_s = self._timeout_s
        if timeout_us:
            timeout_s = min(timeout_s, timeout_us / 1e6)
        model_params = model_parameters(parameters) if parameters else {}
        key = (
            tuple([(name, d.shape[1:]) for name, d in self.inputs.items()]),
            orjson.dumps(model_params, option=orjson.OPT_SORT_KEYS) if model_params else b"",
        )
        request = InferRequest(
            model=self.server.config.name,
            version=self.server.config.version,
            inputs=self.inputs,
            slots=self.slots,
            rows=rows,
            key=key,
            parameters=model_params,
            deadline=trio.current_time() + timeout_s,
            request_id=request_id or f"ifx-{next(_request_ids):x}",
            region_inputs=tuple(self.region_inputs),
            output_targets=self.output_targets,
            sequence=sequence,
            seq_expect=incarnation,
        )
        self.server.submit(request)
        self._submitted = True
        self.slots = []
        return request


def output_datatypes(config: ModelConfig) -> dict[str, str]:
    return {t.name: t.datatype for t in config.outputs}


def requested_outputs(config: ModelConfig, names: Sequence[str] | None) -> list[TensorSpec]:
    if not names:
        return list(config.outputs)
    return [check_output_name(config, f"outputs[{i}]", n) for i, n in enumerate(names)]
