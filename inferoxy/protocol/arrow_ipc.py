"""Arrow record batches as the ZeroMQ bridge takes and gives them, I/O-free: one batch read in
place and checked (a model input is an ``arrow.fixed_shape_tensor`` or a ``fixed_size_list``
of a number type), and batches written with one copy of the tensor bytes. The rules are in
``docs/protocols/zeromq-arrow.md``."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa

from inferoxy.protocol.errors import FrameError

EXTENSION_NAME = b"ARROW:extension:name"

ARROW_TO_V2: dict[pa.DataType, str] = {
    pa.bool_(): "BOOL",
    pa.uint8(): "UINT8", pa.uint16(): "UINT16", pa.uint32(): "UINT32", pa.uint64(): "UINT64",
    pa.int8(): "INT8", pa.int16(): "INT16", pa.int32(): "INT32", pa.int64(): "INT64",
    pa.float16(): "FP16", pa.float32(): "FP32", pa.float64(): "FP64",
}
V2_TO_ARROW: dict[str, pa.DataType] = {v: k for k, v in ARROW_TO_V2.items()}
_NUMPY_TO_V2: dict[np.dtype, str] = {
    np.dtype(t.to_pandas_dtype()): v2 for t, v2 in ARROW_TO_V2.items()
}


# -- Arrow in: one record batch, read in place, checked -----------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _table_field(buf: memoryview, table: int, index: int) -> int | None:
    """Where field ``index`` of the flatbuffer table at ``table`` lies; None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_len = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * index + 2 > vtable_len:
        return None
    offset = struct.unpack_from("<H", buf, vtable + 4 + 2 * index)[0]
    return table + offset if offset else None


def _is_compressed(metadata: pa.Buffer) -> bool:
    """Whether a record-batch message has body compression (Message.fbs).

    Decompression would allocate whatever sizes the sender declares before we could look at
    the batch (a decompression bomb), so it is refused before the body is read. Arrow has
    verified the flatbuffer by now; the offsets are followed with bounds checks anyway.
    """
    buf = memoryview(metadata)
    try:
        message = struct.unpack_from("<I", buf, 0)[0]
        header = _table_field(buf, message, 2)  # Message.header (union value)
        if header is None:
            return False
        batch = header + struct.unpack_from("<I", buf, header)[0]
        return _table_field(buf, batch, 3) is not None  # RecordBatch.compression
    except struct.error:
        return True  # unreadable: treat as unsupported


def is_plain(t: pa.DataType) -> bool:
    types = pa.types
    return bool(
        types.is_integer(t) or types.is_floating(t) or types.is_boolean(t)
        or types.is_string(t) or types.is_large_string(t) or types.is_binary(t)
        or types.is_large_binary(t) or types.is_fixed_size_binary(t) or types.is_date(t)
        or types.is_time(t) or types.is_timestamp(t) or types.is_duration(t)
    )


def _tensor_like(t: pa.DataType) -> bool:
    if isinstance(t, pa.FixedShapeTensorType):
        return t.value_type in ARROW_TO_V2
    if pa.types.is_fixed_size_list(t):
        return t.value_type in ARROW_TO_V2
    return t in ARROW_TO_V2


def check_schema(schema: pa.Schema) -> None:
    """Only plain types and tensors: no unknown extensions, dictionaries or nesting."""
    seen: set[str] = set()
    for field in schema:
        name = field.name
        if name in seen:
            raise FrameError(f"column {name!r} appears twice")
        seen.add(name)
        t = field.type
        meta = field.metadata or {}
        if EXTENSION_NAME in meta:
            ext = meta[EXTENSION_NAME].decode("utf-8", "replace")[:100]
            raise FrameError(
                f"column {name!r} has extension type {ext!r}; the only one supported is "
                f"arrow.fixed_shape_tensor"
            )
        if isinstance(t, pa.FixedShapeTensorType):
            perm = t.permutation
            if perm is not None and list(perm) != list(range(len(t.shape))):
                raise FrameError(
                    f"column {name!r}: a fixed_shape_tensor with permutation {list(perm)} is "
                    f"not supported (row-major only)"
                )
        elif isinstance(t, pa.BaseExtensionType):
            raise FrameError(
                f"column {name!r} has extension type {t.extension_name!r}; the only one "
                f"supported is arrow.fixed_shape_tensor"
            )
        if not (_tensor_like(t) or is_plain(t)):
            raise FrameError(
                f"column {name!r} has type {t}; columns must be tensors "
                f"(arrow.fixed_shape_tensor or fixed_size_list of a number type) or plain "
                f"values"
            )


def read_batch(data: bytes | memoryview | pa.Buffer) -> pa.RecordBatch:
    """The one record batch of an Arrow IPC stream, its buffers views into ``data``.

    ``FrameError`` for anything else: not Arrow, truncated, compressed, dictionaries, a
    second batch, unsupported types, buffers that do not add up.
    """
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    try:
        reader = pa.ipc.MessageReader.open_stream(buf)
        first = reader.read_next_message()
    except StopIteration:
        raise FrameError("the arrow frame is empty: expected an Arrow IPC stream") from None
    except Exception as exc:  # Arrow raises many types for garbage; none is safe to pass
        raise FrameError(f"the arrow frame is not an Arrow IPC stream: {_describe(exc)}") from None
    if first is None or first.type != "schema":
        kind = first.type if first is not None else "nothing"
        raise FrameError(f"the arrow frame must start with a schema message, not {kind}")
    try:
        schema = pa.ipc.read_schema(first)
    except Exception as exc:
        raise FrameError(f"the arrow schema is unreadable: {_describe(exc)}") from None
    try:
        check_schema(schema)
    except UnicodeDecodeError:  # pyarrow decodes names when read: found by fuzzing
        raise FrameError("the arrow schema has a name that is not UTF-8") from None
    try:
        message = reader.read_next_message()
    except StopIteration:
        message = None
    except Exception as exc:
        raise FrameError(f"the arrow record batch is unreadable: {_describe(exc)}") from None
    if message is None:
        raise FrameError("the arrow stream holds no record batch")
    if message.type != "record batch":
        raise FrameError(
            f"the arrow stream must hold one record batch after the schema, not a "
            f"{message.type} message"
        )
    if _is_compressed(message.metadata):
        raise FrameError("compressed Arrow IPC buffers are not supported")
    try:
        batch = pa.ipc.read_record_batch(message, schema)
        batch.validate(full=True)
    except Exception as exc:
        raise FrameError(f"the arrow record batch is invalid: {_describe(exc)}") from None
    try:
        extra = reader.read_next_message()
    except StopIteration:
        extra = None
    except Exception as exc:
        raise FrameError(f"the arrow stream has trailing garbage: {_describe(exc)}") from None
    if extra is not None:
        raise FrameError(
            f"the arrow stream holds more than one record batch (found a {extra.type} "
            f"message after it); send one batch per request"
        )
    return batch


@dataclass(frozen=True, slots=True)
class TensorColumn:
    """A tensor column's rows as numpy: ``values`` is ``(rows, list_size)`` (a view if it can)."""

    datatype: str  # v2
    values: np.ndarray
    item_shape: tuple[int, ...] | None  # from the type; None for a plain fixed_size_list


def tensor_column(name: str, column: pa.Array) -> TensorColumn:
    """The values of a tensor-typed column; ``FrameError`` if it is not one or has nulls."""
    t = column.type
    item_shape: tuple[int, ...] | None
    if isinstance(t, pa.FixedShapeTensorType):
        storage = column.storage
        item_shape = tuple(int(d) for d in t.shape)
    elif pa.types.is_fixed_size_list(t):
        storage, item_shape = column, None
    elif t in ARROW_TO_V2:
        storage, item_shape = None, ()
    else:
        raise FrameError(
            f"column {name!r} has type {t}; a model input must be an arrow.fixed_shape_tensor "
            f"or a fixed_size_list of a number type"
        )
    if column.null_count:
        raise FrameError(f"column {name!r} has {column.null_count} null row(s)")
    if storage is None:
        flat, size = column, 1
    else:
        flat, size = storage.flatten(), storage.type.list_size
    if flat.null_count:
        raise FrameError(f"column {name!r} has {flat.null_count} null value(s)")
    if item_shape is not None and math.prod(item_shape) != size:
        raise FrameError(f"column {name!r}: its tensor shape does not match its list size")
    datatype = ARROW_TO_V2[flat.type]
    # Numbers: a view into the frame. Bools are bits in Arrow: unpacked here (a copy).
    values = flat.to_numpy(zero_copy_only=datatype != "BOOL")
    return TensorColumn(datatype, values.reshape(len(column), size), item_shape)


def copy_plain(column: pa.Array) -> pa.Array:
    """A pass-through column in buffers of its own, so the request frame can be freed."""
    return pa.concat_arrays([column])


# -- Arrow out ------------------------------------------------------------------------------------


def tensor_array(array: np.ndarray) -> pa.Array:
    """``(rows, *item)`` as an ``arrow.fixed_shape_tensor`` column; no copy if contiguous."""
    rows, item = array.shape[0], tuple(array.shape[1:])
    values = pa.array(np.ascontiguousarray(array).reshape(-1))
    if not item:
        return values
    storage = pa.Array.from_buffers(
        pa.list_(values.type, math.prod(item)), rows, [None], children=[values]
    )
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(values.type, list(item)),
                                          storage)


Column: TypeAlias = "pa.Array | list[np.ndarray]"


def _write(sink: Any, batch: pa.RecordBatch) -> None:
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)


class _GatherSink:
    """Where the IPC writer puts a stream: a buffer of its exact size. A placeholder's values
    buffer is never read: the parts it stands for are copied into its place instead."""

    def __init__(self, out: pa.Buffer, parts: dict[int, tuple[int, list[np.ndarray]]]) -> None:
        self.out = np.frombuffer(out, np.uint8)
        self.parts = parts
        self.pos = 0
        self.gathered = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        entry = self.parts.get(data.address) if isinstance(data, pa.Buffer) else None
        if entry is not None and entry[0] == n:
            at = self.pos
            for part in entry[1]:
                flat = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
                self.out[at:at + flat.size] = flat
                at += flat.size
            self.gathered += 1
        else:
            self.out[self.pos:self.pos + n] = view
        self.pos += n
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _placeholder(parts: list[np.ndarray]) -> tuple[pa.Array, pa.Buffer]:
    """A tensor column of the parts' rows over an untouched buffer of the right size."""
    rows = sum(len(p) for p in parts)
    item = tuple(parts[0].shape[1:])
    value_type = V2_TO_ARROW[_NUMPY_TO_V2[parts[0].dtype]]
    buffer = pa.allocate_buffer(rows * math.prod(item) * parts[0].dtype.itemsize)
    values = pa.Array.from_buffers(value_type, rows * math.prod(item), [None, buffer])
    if not item:
        return values, buffer
    storage = pa.Array.from_buffers(pa.list_(value_type, math.prod(item)), rows, [None],
                                    children=[values])
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, list(item)),
                                          storage), buffer


def encode_batch(columns: Mapping[str, Column]) -> pa.Buffer:
    """One record batch as an Arrow IPC stream, written once into a buffer of its size.

    A column may be given as the list of its parts (``(rows, *item)`` arrays, in row order):
    their rows are copied straight into the stream, with no concatenation first — the
    stream's bytes are the one copy.
    """
    arrays: list[pa.Array] = []
    parts: dict[int, tuple[int, list[np.ndarray]]] = {}
    for column in columns.values():
        if not isinstance(column, list):
            arrays.append(column)
        elif len(column) == 1 or column[0].dtype == np.bool_:  # bools: packed to bits
            arrays.append(tensor_array(column[0] if len(column) == 1 else np.concatenate(column)))
        else:
            placeholder, buffer = _placeholder(column)
            parts[buffer.address] = (buffer.size, column)
            arrays.append(placeholder)
    batch = pa.record_batch(arrays, names=list(columns))
    size = pa.MockOutputStream()
    _write(size, batch)
    out = pa.allocate_buffer(size.size())
    if not parts:
        _write(pa.FixedSizeBufferWriter(out), batch)
        return out
    sink = _GatherSink(out, parts)
    _write(pa.PythonFile(sink, mode="w"), batch)
    if sink.gathered != len(parts) or sink.pos != out.size:  # Arrow copied a placeholder
        return encode_batch({name: [np.concatenate(c)] if isinstance(c, list) else c
                             for name, c in columns.items()})
    return out


def column_to_numpy(column: pa.Array) -> np.ndarray:
    """A reply column as numpy: tensors as ``(rows, *item)`` views, plain columns as they come."""
    t = column.type
    if isinstance(t, pa.FixedShapeTensorType) or pa.types.is_fixed_size_list(t):
        storage = column.storage if isinstance(t, pa.FixedShapeTensorType) else column
        flat = storage.flatten()
        item = (tuple(int(d) for d in t.shape) if isinstance(t, pa.FixedShapeTensorType)
                else (storage.type.list_size,))
        values: np.ndarray = flat.to_numpy(zero_copy_only=not pa.types.is_boolean(flat.type))
        return values.reshape((len(column), *item))
    plain: np.ndarray = column.to_numpy(zero_copy_only=False)
    return plain
