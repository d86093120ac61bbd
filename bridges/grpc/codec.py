"""Open Inference Protocol v2 over gRPC: infer requests and responses on the wire. I/O-free.

The messages are ``inference.ModelInferRequest`` / ``ModelInferResponse`` of the protobuf
classes ``tritonclient`` ships. Tensor bytes never go through protobuf objects:

* **Requests.** ``split_request`` (the RPC's request deserializer) keeps the message bytes
  grpcio hands over and walks the top level of the wire format itself: the
  ``raw_input_contents`` entries (field 7) are only *located* (offset, length); everything
  else — names, shapes, parameters, typed ``contents`` — is parsed by protobuf from a small
  header. The bridge then copies each raw entry straight from the received bytes into its
  shared-memory slot. Parsing the whole message with protobuf instead costs two more copies
  of every tensor (upb copies bytes fields on parse and again on every access; see
  ``bench/grpc_copies.py``).
* **Responses.** ``encode_response`` serializes the small header with protobuf and appends
  the ``raw_output_contents`` entries (field 6) by hand, so each output is copied once, from
  the worker's output views into the bytes that go to grpcio (which copies them into its
  own buffer). For ``ModelStreamInfer`` the same bytes are wrapped as the ``infer_response``
  field of a ``ModelStreamInferResponse`` in the same join.

``parse_request`` validates a request against the model's declaration, the way the HTTP
bridge's codec does, and says where each input's bytes come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from gateway.admission import (
    CheckedInput,
    InputChecker,
    Limits,
    RegionRef,
    check_output_name,
    check_timeout,
    region_ref,
)
from gateway.config import ModelConfig
from gateway.errors import InvalidArgument
from shm import bytes_tensor
from shm.bytes_tensor import BytesTensorError
from shm.datatypes import V2_TO_NUMPY

RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited
STREAM_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, ditto

# The typed ``contents`` field that carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


# -- the wire ------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


@dataclass(slots=True)
class WireRequest:
    """A received ``ModelInferRequest``: its header parsed, its raw tensors located."""

    header: pb.ModelInferRequest  # everything but raw_input_contents
    data: bytes  # the message as received
    raw_inputs: tuple[tuple[int, int], ...] = ()  # (offset, length) of each raw entry
    error: str = ""  # not a valid message: why (the bridge answers INVALID_ARGUMENT)

    def raw(self, index: int) -> memoryview:
        start, length = self.raw_inputs[index]
        return memoryview(self.data)[start : start + length]

    def drop_data(self) -> None:
        """The raw tensors are in their slots: free the received bytes now, not when the
        RPC ends (grpcio keeps the request object until then)."""
        self.data = b""


def split_request(data: bytes) -> WireRequest:
    """The request deserializer of the infer RPCs: never raises, never copies a tensor."""
    buf = memoryview(data)
    raw: list[tuple[int, int]] = []
    header: list[tuple[int, int]] = []  # byte ranges of every other field
    pos = 0
    try:
        while pos < len(buf):
            start = pos
            tag, pos = _varint(buf, pos)
            wire_type = tag & 7
            if wire_type == 0:
                _, pos = _varint(buf, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = _varint(buf, pos)
                if tag >> 3 == RAW_INPUT_FIELD:
                    if pos + length > len(buf):
                        raise DecodeError("truncated field")
                    raw.append((pos, length))
                    pos += length
                    continue
                pos += length
            else:
                raise DecodeError(f"unsupported wire type {wire_type}")
            if pos > len(buf):
                raise DecodeError("truncated field")
            if header and header[-1][1] == start:
                header[-1] = (header[-1][0], pos)
            else:
                header.append((start, pos))
        if len(header) == 1:
            head = bytes(buf[header[0][0] : header[0][1]])
        else:
            head = b"".join(buf[a:b] for a, b in header)
        message = pb.ModelInferRequest.FromString(head)
    except DecodeError as exc:
        return WireRequest(pb.ModelInferRequest(), b"",
                           error=f"the request is not a valid ModelInferRequest: {exc}")
    return WireRequest(message, data, tuple(raw))


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputTensor:
    checked: CheckedInput
    raw: int | None = None  # index into raw_input_contents
    contents: pb.InferTensorContents | None = None
    region: RegionRef | None = None
    wire: bytes | None = None  # a BYTES input's ``bytes_contents`` in its wire form

    @property
    def name(self) -> str:
        return self.checked.spec.name


@dataclass(frozen=True, slots=True)
class OutputRequest:
    name: str
    region: RegionRef | None = None


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    request_id: str
    inputs: tuple[InputTensor, ...]
    outputs: tuple[OutputRequest, ...]
    rows: int
    timeout_us: int | None
    parameters: dict[str, Any]


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out




def parse_request(wire: WireRequest, config: ModelConfig, limits: Limits) -> ParsedRequest:
    """Validate an infer request against the model; raises InvalidArgument.

    Inputs take their bytes, in order of preference, from a client region (parameters
    ``shared_memory_*``), from typed ``contents``, or from the next ``raw_input_contents``
    entry — as Triton reads them. Raw and typed data do not mix in one request.
    """
    if wire.error:
        raise InvalidArgument(wire.error)
    msg = wire.header
    params = parameters(msg.parameters)
    if not msg.inputs:
        raise InvalidArgument("the request has no inputs")
    if wire.raw_inputs:
        for tensor in msg.inputs:
            if tensor.HasField("contents"):  # Triton's wording: clients match on it
                raise InvalidArgument(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{msg.model_name}'"
                )
    checker = InputChecker(config, limits, bytes_ok=True)
    inputs: list[InputTensor] = []
    raw_next = 0
    for i, tensor in enumerate(msg.inputs):
        checked = checker.check(f"inputs[{i}]", tensor.name, tensor.datatype,
                                list(tensor.shape))
        name = checked.spec.name
        region = region_ref(parameters(tensor.parameters))
        if region is not None:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input {name!r} names a shared-memory region and also carries contents"
                )
            inputs.append(InputTensor(checked, region=region))
        elif checked.bytes_limits is not None and tensor.HasField("contents"):
            data = _bytes_contents(checked, tensor.contents)
            inputs.append(InputTensor(checker.sized(checked, len(data)), wire=data))
        elif tensor.HasField("contents"):
            inputs.append(InputTensor(checked, contents=tensor.contents))
        else:
            if raw_next >= len(wire.raw_inputs):
                raise InvalidArgument(
                    f"input {name!r} has no data: no contents, no shared-memory region, and "
                    f"raw_input_contents has only {len(wire.raw_inputs)} entries"
                )
            size = wire.raw_inputs[raw_next][1]
            if checked.bytes_limits is not None:  # BYTES: checked once in its slot
                checked = checker.sized(checked, size)
            if size != checked.nbytes:
                raise InvalidArgument(
                    f"input {name!r}: raw_input_contents[{raw_next}] has {size} bytes, but "
                    f"shape {list(checked.wire_shape)} of {checked.spec.datatype} takes "
                    f"{checked.nbytes}"
                )
            inputs.append(InputTensor(checked, raw=raw_next))
            raw_next += 1
    rows = checker.finish()
    if raw_next != len(wire.raw_inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(wire.raw_inputs)} entries, but {raw_next} input(s) "
            f"take their data from it"
        )

    limits.check_outputs(len(msg.outputs))
    outputs: list[OutputRequest] = []
    if not msg.outputs:
        outputs = [OutputRequest(t.name) for t in config.outputs]
    for i, out in enumerate(msg.outputs):
        spec = check_output_name(config, f"outputs[{i}]", out.name)
        out_params = parameters(out.parameters)
        if "classification" in out_params:
            raise InvalidArgument("the classification extension is not supported")
        if any(o.name == spec.name for o in outputs):
            raise InvalidArgument(f"output {spec.name!r} is requested twice")
        outputs.append(OutputRequest(spec.name, region_ref(out_params)))

    return ParsedRequest(
        request_id=msg.id,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        rows=rows,
        timeout_us=check_timeout(params.get("timeout")),
        parameters=params,
    )


def _bytes_contents(checked: CheckedInput, contents: pb.InferTensorContents) -> bytes:
    """``contents.bytes_contents`` of a BYTES input, in the wire form of its slot."""
    name = checked.spec.name
    present = [f.name for f, _ in contents.ListFields()]
    if present and present != ["bytes_contents"]:
        raise InvalidArgument(f"input {name!r}: BYTES data goes in contents.bytes_contents, "
                              f"got contents.{', contents.'.join(present)}")
    values = contents.bytes_contents
    count = math.prod(checked.shape)
    if len(values) != count:
        raise InvalidArgument(f"input {name!r}: contents.bytes_contents has {len(values)} "
                              f"elements, shape {list(checked.wire_shape)} needs {count}")
    limits = checked.bytes_limits or bytes_tensor.BytesLimits()
    for i, value in enumerate(values):
        if len(value) > limits.max_element_bytes:
            raise InvalidArgument(f"input {name!r}: BYTES element {i} has {len(value)} bytes, "
                                  f"more than the limit of {limits.max_element_bytes}")
    return bytes_tensor.encode(values)


def write_contents(tensor: InputTensor, out: np.ndarray) -> None:
    """Convert an input's typed ``contents`` (e.g. ``fp32_contents``) into ``out``."""
    assert tensor.contents is not None
    datatype, name = tensor.checked.spec.datatype, tensor.name
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {name!r}: {datatype} data must be sent in raw_input_contents")
    present = [f.name for f, _ in tensor.contents.ListFields()]
    if present and present != [field]:
        raise InvalidArgument(
            f"input {name!r}: {datatype} data goes in contents.{field}, got "
            f"contents.{', contents.'.join(present)}"
        )
    values = getattr(tensor.contents, field)
    if len(values) != out.size:
        raise InvalidArgument(
            f"input {name!r}: contents.{field} has {len(values)} elements, shape "
            f"{list(tensor.checked.wire_shape)} needs {out.size}"
        )
    if not out.size:
        return
    wide = {"b": np.bool_, "i": np.int64, "u": np.uint64, "f": np.float64}[out.dtype.kind]
    arr: np.ndarray = np.array(values, dtype=wide)
    if out.dtype.kind in "iu":
        info = np.iinfo(out.dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidArgument(f"input {name!r}: a value is out of range for {datatype}")
    out.reshape(-1)[...] = arr


# -- responses -----------------------------------------------------------------------------


def encode_response(
    model: str,
    version: str,
    request_id: str,
    outputs: tuple[OutputRequest, ...],
    arrays: dict[str, np.ndarray],
    datatypes: dict[str, str],
    in_regions: dict[str, tuple[int, ...]] | None = None,
    *,
    stream: bool = False,
    batched: bool = True,
    final: bool | None = None,
) -> bytes:
    """A serialized ``ModelInferResponse`` (``ModelStreamInferResponse`` with ``stream``).

    Every output gets a ``raw_output_contents`` entry, in the order of ``outputs`` (clients
    index one by the other); an output the worker wrote into the client's region gets an
    empty one, and its ``shared_memory_*`` parameters, as Triton answers.
    """
    skip = 0 if batched else 1  # no batch dimension: the gateway's leading 1 goes
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    if final is not None:  # a decoupled model's response: whether it is the request's last
        response.parameters[FINAL].bool_param = final
    blobs: list[memoryview | bytes] = []
    for o in outputs:
        entry = response.outputs.add(name=o.name, datatype=datatypes[o.name])
        if in_regions and o.name in in_regions and o.region is not None:
            shape = in_regions[o.name]
            entry.shape.extend(shape[skip:])
            entry.parameters["shared_memory_region"].string_param = str(o.region.name)
            entry.parameters["shared_memory_byte_size"].int64_param = (
                math.prod(shape) * V2_TO_NUMPY[datatypes[o.name]].itemsize
                if datatypes[o.name] in V2_TO_NUMPY else _region_size(o)
            )
            if isinstance(o.region.offset, int) and o.region.offset:
                entry.parameters["shared_memory_offset"].int64_param = o.region.offset
            blobs.append(b"")
            continue
        arr = np.ascontiguousarray(arrays[o.name])
        entry.shape.extend(arr.shape[skip:])
        if arr.dtype.kind == "O":  # BYTES: its wire form, as raw_input_contents carries it
            try:
                blobs.append(bytes_tensor.encode_array(arr))
            except BytesTensorError as exc:
                raise InvalidArgument(str(exc)) from None
            continue
        blobs.append(arr.reshape(-1).view(np.uint8).data)
    header = response.SerializeToString()
    parts: list[bytes | memoryview] = [header]
    for blob in blobs:
        parts += [RAW_OUTPUT_TAG, encode_varint(len(blob)), blob]
    if stream:
        length = sum(len(p) for p in parts)
        parts[:0] = [STREAM_RESPONSE_TAG, encode_varint(length)]
    # The one copy out of shared memory: into the bytes grpcio sends.
    return b"".join(parts)


def _region_size(o: OutputRequest) -> int:
    """A BYTES output in a client region: its size is the element lengths', which the worker
    wrote there; the region's own size is what the response can say."""
    assert o.region is not None
    size = o.region.byte_size
    return size if isinstance(size, int) else 0


FINAL = "triton_final_response"  # Triton's flag on each response of a decoupled model
EMPTY_FINAL = "triton_enable_empty_final_response"  # the request asks for an empty last one


def encode_decoupled(
    model: str,
    version: str,
    request_id: str,
    outputs: tuple[OutputRequest, ...],
    arrays: dict[str, np.ndarray],
    datatypes: dict[str, str],
    *,
    empty_final: bool,
    batched: bool = True,
) -> list[bytes]:
    """A decoupled model's answer as Triton streams it: one ``ModelStreamInferResponse`` per
    response (outputs ``[rows, responses, ...]``, split along the responses), each flagged
    ``triton_final_response: false`` but the last; with ``empty_final`` (what the request
    asked, ``triton_enable_empty_final_response``) the last is an empty response flagged
    true. No response and no empty final one: nothing, as Triton does."""
    count = next(iter(arrays.values())).shape[1] if arrays else 0
    answers = []
    for i in range(count):
        answers.append(encode_response(
            model, version, request_id, outputs, {n: a[:, i] for n, a in arrays.items()},
            datatypes, stream=True, batched=batched, final=i == count - 1 and not empty_final,
        ))
    if empty_final:
        last = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
        last.parameters[FINAL].bool_param = True
        answers.append(pb.ModelStreamInferResponse(infer_response=last).SerializeToString())
    return answers


DECOUPLED_UNARY = "ModelInfer RPC doesn't support models with decoupled transaction policy"


def stream_error(message: str, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
    """The stream's answer to one failed request: the stream itself goes on."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id,
        ),
    )
