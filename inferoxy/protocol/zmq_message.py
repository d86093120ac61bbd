"""A ZeroMQ request and reply as the client sends and reads them: the header frame and one
Arrow record batch (``docs/protocols/zeromq-arrow.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from inferoxy.protocol.arrow_ipc import column_to_numpy, encode_batch, tensor_array
from inferoxy.protocol.zmq_header import encode_header


def encode_request(header: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> list[Any]:
    """The frames of a request (client side): each input is ``(rows, *item)``."""
    columns = {name: tensor_array(np.asarray(a)) for name, a in inputs.items()}
    return [encode_header(header), encode_batch(columns)]


def decode_reply(frames: list[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """A reply's header and, on success, its columns as numpy (client side)."""
    try:
        header = orjson.loads(bytes(frames[0]))
    except (orjson.JSONDecodeError, IndexError) as exc:
        raise ValueError(f"malformed reply header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("malformed reply header")
    if header.get("status") != "ok":
        return header, None
    if len(frames) != 2:
        raise ValueError(f"a successful reply has 2 frames, got {len(frames)}")
    data = frames[1]
    buf = pa.py_buffer(data.buffer if hasattr(data, "buffer") else data)
    batches = list(pa.ipc.open_stream(buf))
    if len(batches) == 1:
        columns = dict(zip(batches[0].schema.names, batches[0].columns, strict=True))
    else:
        table = pa.Table.from_batches(batches)
        columns = {n: table.column(n).combine_chunks() for n in table.column_names}
    return header, {name: column_to_numpy(col) for name, col in columns.items()}
