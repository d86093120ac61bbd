"""One ZeroMQ request, from its Arrow frame to its reply frames.

``prepare`` is synchronous: it reads the request's one record batch in place (views into the
ZeroMQ frame), checks its columns against the model, splits its rows into parts of at most
``batch_size`` rows and gives each part's inputs a slab slot — copying the tensor values from
the frame into the slots is the one copy of the request's bytes. Pass-through columns are
copied out too (they are small), so the caller can free the frame before anything waits.

``Prepared.run`` submits the parts concurrently, waits for all of them (one failure cancels
the others and fails the request with its message), and encodes the outputs, rows in request
order, as one Arrow record batch: the parts' output views (in the workers' shared memory) are
written straight into the reply stream, its one copy. Every slot and result is released on
every path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import trio

from gateway.admission import Admission, InputChecker, check_timeout, refuse_unsupported
from gateway.config import ModelConfig, TensorSpec
from gateway.core import Gateway
from gateway.errors import InferoxyError, InvalidArgument, ModelError
from gateway.model_server import ModelServer
from gateway.request import RequestResult
from inferoxy.protocol import arrow_ipc, zmq_header
from inferoxy.protocol.errors import FrameError
from shm.datatypes import V2_TO_NUMPY


@dataclass(frozen=True, slots=True)
class InputRows:
    spec: TensorSpec
    item_shape: tuple[int, ...]
    values: np.ndarray  # (rows, prod(item_shape)), a view into the frame where it can be


def _declared(spec: TensorSpec) -> str:
    return "[" + ", ".join(map(str, spec.shape)) + "]"


def _input_rows(spec: TensorSpec, header: zmq_header.Header, column: pa.Array) -> InputRows:
    name = spec.name
    tensor = arrow_ipc.tensor_column(name, column)
    if tensor.datatype != spec.datatype:
        raise InvalidArgument(
            f"column {name!r} holds {column.type} values ({tensor.datatype}); model input "
            f"{name!r} is {spec.datatype} (Arrow {arrow_ipc.V2_TO_ARROW[spec.datatype]})"
        )
    given = (header.shape or {}).get(name)
    if tensor.item_shape is not None:
        item = tensor.item_shape
        if given is not None and given != item:
            raise InvalidArgument(
                f"column {name!r}: header shape.{name} is {list(given)} but the column's "
                f"tensor type says {list(item)}"
            )
    else:
        if given is not None:
            item = given
        elif -1 not in spec.shape:
            item = spec.shape
        else:
            raise InvalidArgument(
                f"input {name!r} has variable dimensions {_declared(spec)}: give its per-item "
                f"shape in the header's shape.{name}, or send an arrow.fixed_shape_tensor"
            )
        size = tensor.values.shape[1]
        if math.prod(item) != size:
            raise InvalidArgument(
                f"column {name!r}: per-item shape {list(item)} takes {math.prod(item)} values, "
                f"but its fixed_size_list holds {size}"
            )
    if not spec.accepts(item):
        raise InvalidArgument(
            f"column {name!r} has per-item shape {list(item)}, model input {name!r} expects "
            f"{_declared(spec)}"
        )
    return InputRows(spec, item, tensor.values)


def read_columns(
    config: ModelConfig, header: zmq_header.Header, batch: pa.RecordBatch
) -> tuple[list[InputRows], dict[str, pa.Array]]:
    """The model's inputs (views) and the pass-through columns (copied) of a request batch."""
    if batch.num_rows == 0:
        raise InvalidArgument("the record batch has no rows")
    input_names = {t.name for t in config.inputs}
    output_names = {t.name for t in config.outputs}
    unknown = sorted(set(header.shape or {}) - input_names)
    if unknown:
        raise InvalidArgument(f"header 'shape' names {unknown}, which are not inputs of model "
                              f"{config.name!r}")
    missing = [t.name for t in config.inputs if t.name not in batch.schema.names]
    if missing:
        raise InvalidArgument(
            f"the record batch has no column for input(s) {missing} of model {config.name!r} "
            f"(columns: {batch.schema.names})"
        )
    inputs = [_input_rows(spec, header, batch.column(spec.name)) for spec in config.inputs]
    passthrough: dict[str, pa.Array] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if name in input_names:
            continue
        if name in output_names:
            raise InvalidArgument(
                f"column {name!r} is not an input but is named as an output of model "
                f"{config.name!r}; rename the pass-through column"
            )
        if not arrow_ipc.is_plain(column.type):
            raise InvalidArgument(
                f"pass-through column {name!r} has type {column.type}; pass-through columns "
                f"must be of a plain type"
            )
        passthrough[name] = arrow_ipc.copy_plain(column)
    return inputs, passthrough


@dataclass(eq=False, slots=True)
class Prepared:
    """A request whose inputs sit in slots, one admission per part, ready to run."""

    server: ModelServer
    header: zmq_header.Header
    parts: list[tuple[Admission, int]]  # (admission, rows)
    passthrough: dict[str, pa.Array]

    def release(self) -> None:
        for admission, _ in self.parts:
            admission.release()

    async def run(self) -> list[Any]:
        """Run every part, concurrently; the reply frames. Frees everything it holds."""
        header = self.header
        params = header.parameters or {}
        timeout_us = header.timeout_us or check_timeout(params.get("timeout"))
        rid = str(header.id)
        results: list[RequestResult | None] = [None] * len(self.parts)
        try:
            if len(self.parts) == 1:
                admission, rows = self.parts[0]
                results[0] = await admission.run(rows, params, timeout_us, rid)
            else:
                failures: list[InferoxyError] = []
                async with trio.open_nursery() as nursery:
                    for i, (admission, rows) in enumerate(self.parts):
                        nursery.start_soon(self._run_part, nursery, i, admission, rows, params,
                                           timeout_us, results, failures)
                if failures:
                    raise failures[0]
            done = [r for r in results if r is not None]
            return [zmq_header.encode_header({"id": header.id, "status": "ok"}),
                    self._encode(done)]
        finally:
            for r in results:
                if r is not None:
                    r.release()
            self.release()

    async def _run_part(self, nursery: trio.Nursery, i: int, admission: Admission, rows: int,
                        params: dict[str, Any], timeout_us: int | None,
                        results: list[RequestResult | None],
                        failures: list[InferoxyError]) -> None:
        try:
            results[i] = await admission.run(rows, params, timeout_us, f"{self.header.id}#{i}")
        except InferoxyError as exc:
            failures.append(exc)
            nursery.cancel_scope.cancel()

    def _encode(self, results: list[RequestResult]) -> pa.Buffer:
        config = self.server.config
        columns: dict[str, arrow_ipc.Column] = {}
        for spec in config.outputs:
            arrays = [r.outputs[spec.name] for r in results]
            item = arrays[0].shape[1:]
            if any(a.shape[1:] != item for a in arrays):
                shapes = sorted({str(list(a.shape[1:])) for a in arrays})
                raise ModelError(
                    f"model {config.name!r}: output {spec.name!r} has different per-item "
                    f"shapes in different parts of the request: {', '.join(shapes)}"
                )
            columns[spec.name] = arrays  # written once, from the worker's output slots
        columns.update(self.passthrough)
        return arrow_ipc.encode_batch(columns)


def prepare(gateway: Gateway, header: zmq_header.Header, frame: memoryview) -> Prepared:
    """Check a request and copy its inputs into slots (see the module's docstring)."""
    server = gateway.model(header.model, header.version)
    gateway.ensure_accepting(server)
    config = server.config
    refuse_unsupported(config, "ZeroMQ")
    try:
        batch = arrow_ipc.read_batch(frame)
        inputs, passthrough = read_columns(config, header, batch)
    except FrameError as exc:  # the wire's own checks: the client's mistake
        raise InvalidArgument(exc.message) from None
    rows = batch.num_rows
    del batch
    params = header.parameters or {}
    step = config.max_rows  # a model without a batch dimension: one request per row
    if rows > step and params.get("sequence_id") not in (None, 0, ""):
        raise InvalidArgument(
            f"a sequence request must fit one batch: {rows} rows, model {config.name!r} "
            f"takes at most {step}"
        )
    parts: list[tuple[Admission, int]] = []
    prepared = Prepared(server, header, parts, passthrough)
    try:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            checker = InputChecker(config, gateway.limits)
            admission = gateway.admission(server)
            parts.append((admission, n))
            for rows_of in inputs:
                spec = rows_of.spec
                shape = (n, *rows_of.item_shape) if config.batched else rows_of.item_shape
                checked = checker.check(f"column {spec.name!r}", spec.name, spec.datatype,
                                        shape)
                slot = admission.slot(checked)
                dest = slot.view(V2_TO_NUMPY[spec.datatype], (n, rows_of.values.shape[1]))
                np.copyto(dest, rows_of.values[start:start + n])
            checker.finish()
    except BaseException:
        prepared.release()
        raise
    return prepared
