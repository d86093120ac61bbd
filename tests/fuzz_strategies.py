"""Hypothesis strategies for hostile requests of every protocol (shared by the fuzz tests).

Pure garbage rarely gets past the first check, so each strategy builds requests that are
*almost* right: real field names and model inputs, with wrong types, shapes, sizes, lengths
and parameters mixed in; then, some of the time, the bytes are cut or flipped.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from inferoxy.protocol import arrow_ipc
from inferoxy.protocol import zmq_header as header_wire

# The "echo" model of tests/models_limits.yaml: one input of each kind.
ECHO_INPUTS = [
    ("IMAGE", "UINT8", [-1, -1, 3]),
    ("VEC", "FP32", [16]),
    ("IDX", "INT32", [2, 2]),
    ("FLAG", "BOOL", [3]),
    ("SCALAR", "FP64", []),
]
NAMES = [n for n, _, _ in ECHO_INPUTS] + ["INPUT", "X", ""]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16", "fp32", ""]
PARAM_KEYS = ["binary_data_size", "binary_data", "binary_data_output", "shared_memory_region",
              "shared_memory_offset", "shared_memory_byte_size", "sequence_id",
              "sequence_start", "sequence_end", "timeout", "priority", "classification", "x"]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=8,
)
dims = st.integers(-2, 40) | st.sampled_from([0, 2**31, 2**40, 2**63, -(2**63)])
shapes = st.lists(dims, max_size=5) | json_values
parameters = st.dictionaries(st.sampled_from(PARAM_KEYS),
                             json_scalars | st.integers(0, 1 << 20), max_size=4)


def _shape_for(name: str, rows: int) -> list[int]:
    for n, _, shape in ECHO_INPUTS:
        if n == name:
            return [rows, *(2 if d == -1 else d for d in shape)]
    return [rows]


@st.composite
def v2_input(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(NAMES) | json_values)
    tensor: dict[str, Any] = {
        "name": name,
        "datatype": draw(st.sampled_from(DATATYPES) | json_values),
        "shape": draw(st.just(_shape_for(name, 1)) if isinstance(name, str) else shapes)
        if draw(st.booleans()) else draw(shapes),
    }
    if draw(st.booleans()):
        tensor["parameters"] = draw(parameters | json_values)
    if draw(st.booleans()):
        tensor["data"] = draw(st.lists(json_scalars, max_size=40) | json_values)
    for key in draw(st.sets(st.sampled_from(["name", "datatype", "shape"]), max_size=1)):
        del tensor[key]
    return tensor


@st.composite
def v2_header(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(v2_input(), max_size=7) | json_values)}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=8) | json_values)
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters | json_values)
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(NAMES) | json_values},
                                  optional={"parameters": parameters | json_values}),
            max_size=10) | json_values)
    return doc


@st.composite
def mangled(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw``, or cut, or with a byte changed, or with garbage appended."""
    how = draw(st.integers(0, 5))  # (hypothesis tries small numbers first: unchanged)
    if how == 3 and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == 4 and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    if how == 5:
        return raw + draw(st.binary(max_size=64))
    return raw


def dumps(doc: Any) -> bytes:
    """JSON of anything the strategies make (the stdlib: ints beyond 64 bits too)."""
    return json.dumps(doc).encode()


def v2_header_bytes() -> st.SearchStrategy[bytes]:
    return v2_header().map(dumps).flatmap(mangled)


def valid_v2_header() -> bytes:
    inputs = []
    for name, datatype, _ in ECHO_INPUTS:
        shape = _shape_for(name, 1)
        count = int(np.prod(shape))
        data: list[Any] = [True] * count if datatype == "BOOL" else [1] * count
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    return orjson.dumps({"inputs": inputs})


# -- WebSocket frames: [uint32 LE n][n bytes JSON][tensor bytes] -------------------------------


@st.composite
def ws_frame(draw: st.DrawFn) -> bytes:
    header = draw(v2_header())
    if draw(st.booleans()):
        header["end"] = draw(st.booleans() | json_values)
    raw = dumps(header)
    length = len(raw) if draw(st.booleans()) else draw(st.integers(0, 2**32 - 1))
    payload = draw(st.binary(max_size=256))
    return struct.pack("<I", length) + raw + payload


def ws_frame_bytes() -> st.SearchStrategy[bytes]:
    return ws_frame().flatmap(mangled)


def valid_ws_frame() -> bytes:
    header = {"id": "ok", "inputs": [{"name": "IMAGE", "datatype": "UINT8",
                                      "shape": [1, 2, 2, 3]}]}
    raw = orjson.dumps(header)
    return struct.pack("<I", len(raw)) + raw + bytes(12)


# -- ZeroMQ: [header JSON][Arrow IPC stream] -----------------------------------------------------


@st.composite
def zmq_header(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key in draw(st.sets(st.sampled_from([*sorted(header_wire.HEADER_KEYS), "extra"]))):
        doc[key] = draw({
            "model": st.sampled_from(["stub", "echo", "running_sum", ""]) | json_values,
            "id": st.text(max_size=300) | st.integers(-(2**70), 2**70) | json_values,
            "version": st.sampled_from(["1", "2", 1]) | json_values,
            "parameters": parameters | json_values,
            "timeout_us": st.integers(-5, 2**64) | json_values,
            "shape": st.dictionaries(st.sampled_from(NAMES), shapes, max_size=3) | json_values,
        }.get(key, json_values))
    return doc


def zmq_header_bytes() -> st.SearchStrategy[bytes]:
    return zmq_header().map(dumps).flatmap(mangled)


ARROW_VALUE_TYPES = [pa.uint8(), pa.int32(), pa.float32(), pa.float64(), pa.bool_(),
                     pa.int64(), pa.float16(), pa.string()]


@st.composite
def arrow_column(draw: st.DrawFn, rows: int) -> pa.Array:
    value_type = draw(st.sampled_from(ARROW_VALUE_TYPES))
    kind = draw(st.integers(0, 3))
    size = draw(st.integers(1, 16))
    if value_type == pa.string():
        return pa.array([draw(st.text(max_size=4)) for _ in range(rows)], pa.string())
    if value_type == pa.float16():
        flat = pa.array(np.zeros(rows * size, np.float16))
    elif value_type == pa.bool_():
        flat = pa.array([bool(i % 2) for i in range(rows * size)], pa.bool_())
    else:
        flat = pa.array(np.zeros(rows * size, value_type.to_pandas_dtype()))
    if kind == 0:
        return flat.slice(0, rows)
    if kind == 1 or (kind == 2 and rows == 0):
        return pa.FixedSizeListArray.from_arrays(flat, size)
    if kind == 2:
        shape = draw(st.sampled_from([[size], [1, size], [size, 1, 1]]))
        return pa.FixedShapeTensorArray.from_numpy_ndarray(
            np.zeros((rows, *shape), value_type.to_pandas_dtype())) \
            if value_type != pa.bool_() else pa.FixedSizeListArray.from_arrays(flat, size)
    offsets = pa.array(list(range(0, rows * size + 1, size)), pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)  # variable-size lists: refused


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


@st.composite
def arrow_frame(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(0, 6))
    names = draw(st.lists(st.sampled_from([*NAMES, "extra"]), min_size=1, max_size=6))
    columns = [draw(arrow_column(rows)) for _ in names]
    try:
        batch = pa.RecordBatch.from_arrays(columns, names=names)
    except (pa.ArrowInvalid, ValueError):
        return b""
    return _ipc(batch)


def arrow_frames() -> st.SearchStrategy[bytes]:
    return (arrow_frame().flatmap(mangled) | st.binary(max_size=512)
            | st.just(valid_arrow_frame()).flatmap(mangled))


def valid_arrow_frame() -> bytes:
    rows = 2
    arrays = {
        "IMAGE": np.zeros((rows, 2, 2, 3), np.uint8),
        "VEC": np.zeros((rows, 16), np.float32),
        "IDX": np.zeros((rows, 2, 2), np.int32),
        "FLAG": np.zeros((rows, 3), np.bool_),
        "SCALAR": np.zeros((rows,), np.float64),
    }
    columns = [arrow_ipc.tensor_array(a) for a in arrays.values()]
    return _ipc(pa.RecordBatch.from_arrays(columns, names=list(arrays)))


# -- gRPC: ModelInferRequest ----------------------------------------------------------------------


ITEMSIZE = {"UINT8": 1, "FP32": 4, "INT32": 4, "BOOL": 1, "FP64": 8}


def nbytes(name: str, rows: int) -> int:
    datatype = next(d for n, d, _ in ECHO_INPUTS if n == name)
    return int(np.prod(_shape_for(name, rows))) * ITEMSIZE[datatype]


@st.composite
def binary_v2_request(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(JSON header, tensor bytes) of the binary extension: every input of ``echo`` (so
    ``stub``'s one input too) with sizes that are right, most of the time, or not.
    (Hypothesis tries False and small numbers first: those choices keep the request valid.)"""
    rows = draw(st.integers(1, 3))
    inputs, tail = [], b""
    for name, datatype, _ in ECHO_INPUTS:
        if draw(st.integers(0, 9)) == 9:
            continue  # an input missing
        size = draw(st.integers(0, 300)) if draw(st.booleans()) else nbytes(name, rows)
        inputs.append({"name": name, "datatype": datatype, "shape": _shape_for(name, rows),
                       "parameters": {"binary_data_size": size}})
        tail += (b"\x01" if datatype == "BOOL" else b"\x00") * size
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": True}
    tail = draw(st.just(tail).flatmap(mangled))
    return dumps(doc), tail


def valid_grpc_request(model: str, rows: int) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, id="ok")
    for name, datatype, _ in ECHO_INPUTS if model == "echo" else ECHO_INPUTS[:1]:
        msg.inputs.add(name=name, datatype=datatype).shape.extend(_shape_for(name, rows))
        msg.raw_input_contents.append(b"\x01" * nbytes(name, rows))
    return msg


@st.composite
def nearly_valid_grpc_request(draw: st.DrawFn, model: str) -> pb.ModelInferRequest:
    """A valid request with at most one field broken."""
    msg = valid_grpc_request(model, draw(st.integers(1, 3)))
    how = draw(st.integers(0, 6))
    tensor = msg.inputs[draw(st.integers(0, len(msg.inputs) - 1))]
    if how == 0:
        tensor.datatype = draw(st.sampled_from(DATATYPES))
    elif how == 1:
        tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(
            st.integers(-(2**63), 2**63 - 1))
    elif how == 2:
        _set_param(tensor.parameters, draw(st.sampled_from(PARAM_KEYS)),
                   draw(json_scalars | st.integers(0, 1 << 20)))
    elif how == 3:
        _set_param(msg.parameters, draw(st.sampled_from(PARAM_KEYS)),
                   draw(json_scalars | st.integers(0, 1 << 20)))
    elif how == 4:
        msg.raw_input_contents[-1] = draw(st.binary(max_size=64))
    elif how == 5:
        msg.outputs.add(name=draw(st.sampled_from(NAMES)))
    return msg


def _set_param(target: Any, key: str, value: Any) -> None:
    p = target[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        if 0 <= value < 2**64:
            p.uint64_param = value
        elif -(2**63) <= value < 2**63:
            p.int64_param = value
        else:
            p.string_param = str(value)
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value


@st.composite
def grpc_request(draw: st.DrawFn, model: str = "echo") -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, id=draw(st.text(max_size=8)))
    for key, value in draw(parameters).items():
        _set_param(msg.parameters, key, value)
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(NAMES))
        tensor = msg.inputs.add(name=name, datatype=draw(st.sampled_from(DATATYPES)))
        shape = _shape_for(name, 1) if draw(st.booleans()) else draw(st.lists(
            st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 8), max_size=5))
        tensor.shape.extend(shape)
        for key, value in draw(parameters).items():
            _set_param(tensor.parameters, key, value)
        which = draw(st.integers(0, 6))
        count = draw(st.integers(0, 40))
        if which == 0:
            tensor.contents.int_contents.extend([draw(st.integers(-(2**31), 2**31 - 1))] * count)
        elif which == 1:
            tensor.contents.fp32_contents.extend([1.5] * count)
        elif which == 2:
            tensor.contents.bool_contents.extend([True] * count)
        elif which == 3:
            tensor.contents.uint_contents.extend([7] * count)
            tensor.contents.fp64_contents.extend([2.0] * count)  # two kinds at once
        elif which == 4:
            tensor.contents.bytes_contents.extend([b"x"] * count)
    for _ in range(draw(st.integers(0, 6))):
        out = msg.outputs.add(name=draw(st.sampled_from(NAMES)))
        for key, value in draw(parameters).items():
            _set_param(out.parameters, key, value)
    for _ in range(draw(st.integers(0, 6))):
        msg.raw_input_contents.append(draw(st.binary(max_size=80)))
    return msg


def grpc_request_bytes() -> st.SearchStrategy[bytes]:
    return (grpc_request() | nearly_valid_grpc_request("echo")).map(
        lambda m: m.SerializeToString()).flatmap(mangled)


def any_grpc_request(model: str) -> st.SearchStrategy[pb.ModelInferRequest]:
    return grpc_request(model) | nearly_valid_grpc_request(model)
