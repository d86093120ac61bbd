"""Open Inference Protocol v2 over HTTP: the request header and the response. I/O-free.

A request body is either JSON alone, or (binary tensor extension) a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw bytes of every input whose
``parameters.binary_data_size`` is set, in the order of the ``inputs`` array. This module
validates the header against the model's declared tensors and says how many bytes each
binary input takes; the HTTP adapter streams those bytes straight into shared-memory slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

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
from gateway.errors import InvalidArgument, Unsupported
from shm import bytes_tensor
from shm.bytes_tensor import BytesTensorError

# numpy kind of the tensor -> numpy kinds of JSON data accepted for it. "u" counts as an
# integer: numpy gives JSON ints in [2**63, 2**64) the kind "u", and the range check below (not
# the kind check) must answer for them, else UINT64 could not carry them and INT32 would say
# "must be integers" for an integer that is merely out of range.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


@dataclass(frozen=True, slots=True)
class InputTensor:
    checked: CheckedInput
    binary: bool  # bytes follow the header
    data: Any = None  # JSON data, when neither binary nor in a region (BYTES: its wire form)
    region: RegionRef | None = None

    @property
    def name(self) -> str:
        return self.checked.spec.name

    @property
    def datatype(self) -> str:
        return self.checked.spec.datatype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.checked.shape

    @property
    def dtype(self) -> np.dtype:
        return self.checked.dtype

    @property
    def nbytes(self) -> int:
        return self.checked.nbytes


@dataclass(frozen=True, slots=True)
class OutputRequest:
    name: str
    binary: bool
    region: RegionRef | None = None


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    request_id: str
    inputs: tuple[InputTensor, ...]
    outputs: tuple[OutputRequest, ...]
    rows: int
    timeout_us: int | None
    parameters: dict[str, Any]
    binary_bytes: int  # how many bytes follow the header




DECOUPLED_HTTP = "HTTP end point doesn't support models with decoupled transaction policy"


class InvalidJson(InvalidArgument):
    """The JSON part is not JSON at all; ``detail`` is the parser's message.

    A separate type so the HTTP adapter can say which bytes it parsed: with binary data, a
    missing or wrong ``Inference-Header-Content-Length`` shows up as exactly this error.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"request body is not valid JSON: {detail}")
        self.detail = detail


def _loads(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(str(exc)) from None
    if not isinstance(doc, dict):
        raise InvalidArgument("request body must be a JSON object")
    return doc


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}.parameters must be an object")
    for key, value in raw.items():
        if not isinstance(value, str | int | float | bool):
            raise InvalidArgument(f"{where}.parameters.{key} must be a string, number or bool")
    return raw


def parse_request(
    body: bytes | bytearray | memoryview, config: ModelConfig, limits: Limits
) -> ParsedRequest:
    """Validate a v2 infer request header against the model; raises InvalidArgument."""
    if config.decoupled:  # Triton's wording (501): its answers go out on a gRPC stream
        raise Unsupported(DECOUPLED_HTTP)
    doc = _loads(body)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    params = _parameters(doc.get("parameters"), "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument("'inputs' must be a non-empty array")

    inputs: list[InputTensor] = []
    checker = InputChecker(config, limits, bytes_ok=True)
    for i, raw in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} must be an object")
        checked = checker.check(where, raw.get("name"), raw.get("datatype"), raw.get("shape"))
        name, nbytes = checked.spec.name, checked.nbytes
        in_params = _parameters(raw.get("parameters"), where)
        region = region_ref(in_params)
        if region is not None:
            if "data" in raw or "binary_data_size" in in_params:
                raise InvalidArgument(
                    f"input {name!r} names a shared-memory region and also carries data"
                )
            inputs.append(InputTensor(checked, False, region=region))
        elif checked.bytes_limits is not None:  # BYTES: the size is the client's to say
            inputs.append(_bytes_input(checker, checked, raw, in_params))
        elif "binary_data_size" in in_params:
            size = in_params["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size != nbytes:
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size is {size!r}, but shape "
                    f"{list(checked.wire_shape)} of {checked.spec.datatype} takes {nbytes} bytes"
                )
            if "data" in raw:
                raise InvalidArgument(f"input {name!r} has both binary_data_size and data")
            inputs.append(InputTensor(checked, True))
        else:
            if "data" not in raw:
                raise InvalidArgument(f"input {name!r} has neither data nor binary_data_size")
            inputs.append(InputTensor(checked, False, raw["data"]))
    rows = checker.finish()

    binary_default = params.get("binary_data_output") is True
    outputs: list[OutputRequest] = []
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        outputs = [OutputRequest(t.name, binary_default) for t in config.outputs]
    else:
        if not isinstance(raw_outputs, list):
            raise InvalidArgument("'outputs' must be an array")
        limits.check_outputs(len(raw_outputs))
        for i, raw in enumerate(raw_outputs):
            spec = check_output_name(
                config, f"outputs[{i}]", raw.get("name") if isinstance(raw, dict) else None
            )
            if any(o.name == spec.name for o in outputs):  # as the gRPC bridge answers
                raise InvalidArgument(f"output {spec.name!r} is requested twice")
            o_params = _parameters(raw.get("parameters"), f"outputs[{i}]")
            if "classification" in o_params:
                raise InvalidArgument("the classification extension is not supported")
            binary = o_params.get("binary_data", binary_default)
            outputs.append(OutputRequest(spec.name, binary is True, region_ref(o_params)))

    return ParsedRequest(
        request_id=request_id,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        rows=rows,
        timeout_us=check_timeout(params.get("timeout")),
        parameters=params,
        binary_bytes=sum(t.nbytes for t in inputs if t.binary),
    )


def _bytes_input(checker: InputChecker, checked: CheckedInput, raw: dict[str, Any],
                 in_params: dict[str, Any]) -> InputTensor:
    """A BYTES input: binary (4-byte lengths, checked once in its slot) or JSON strings
    (encoded here to that form)."""
    name = checked.spec.name
    if "binary_data_size" in in_params:
        size = in_params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input {name!r}: binary_data_size must be a non-negative "
                                  f"integer, got {size!r}")
        if "data" in raw:
            raise InvalidArgument(f"input {name!r} has both binary_data_size and data")
        return InputTensor(checker.sized(checked, size), True)
    if "data" not in raw:
        raise InvalidArgument(f"input {name!r} has neither data nor binary_data_size")
    try:
        wire = bytes_tensor.from_strings(raw["data"], checked.shape, checked.bytes_limits
                                         or bytes_tensor.BytesLimits(), f"input {name!r}")
    except BytesTensorError as exc:
        raise InvalidArgument(str(exc)) from None
    return InputTensor(checker.sized(checked, len(wire)), False, wire)


def write_json_data(tensor: InputTensor, out: np.ndarray) -> None:
    """Convert an input's JSON ``data`` (flat or nested, row-major) into ``out``."""
    try:
        arr = np.asarray(tensor.data)
    except ValueError:
        raise InvalidArgument(f"input {tensor.name!r}: data is not a regular array") from None
    # Data may be flat or nested, but nesting that disagrees with the declared shape (say
    # [[..4..]]*4 for [1, 16]) is a client bug: reshaping it silently would reorder values.
    shape = tensor.checked.wire_shape
    if arr.ndim > 1 and arr.shape != shape:
        raise InvalidArgument(
            f"input {tensor.name!r}: nested data has shape {list(arr.shape)}, declared "
            f"{list(shape)}"
        )
    if arr.size != out.size:
        raise InvalidArgument(
            f"input {tensor.name!r}: data has {arr.size} elements, shape "
            f"{list(shape)} needs {out.size}"
        )
    accepted = _JSON_KINDS[tensor.dtype.kind]
    if arr.size and arr.dtype.kind not in accepted:
        want = {"b": "booleans", "iu": "integers", "iuf": "numbers"}[accepted]
        raise InvalidArgument(f"input {tensor.name!r}: {tensor.datatype} data must be {want}")
    if tensor.dtype.kind in "iu" and arr.size:
        info = np.iinfo(tensor.dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidArgument(
                f"input {tensor.name!r}: a value is out of range for {tensor.datatype}"
            )
    out.reshape(-1)[...] = arr.reshape(-1)


def encode_response(
    model: str,
    version: str,
    request_id: str,
    outputs: tuple[OutputRequest, ...],
    arrays: dict[str, np.ndarray],
    datatypes: dict[str, str],
    in_regions: dict[str, tuple[int, ...]] | None = None,
    batched: bool = True,
) -> tuple[bytes, list[memoryview]]:
    """The response's JSON header, and the bytes of its binary outputs (to follow it, in
    order; views into the outputs, valid until they are released).

    Outputs the worker wrote into the client's regions carry their shape and region only.
    Without ``batched`` (a model without a batch dimension) shapes lose the leading 1 the
    gateway added on the way in.
    """
    skip = 0 if batched else 1
    doc_outputs: list[dict[str, Any]] = []
    blobs: list[np.ndarray] = []
    for o in outputs:
        if in_regions and o.name in in_regions and o.region is not None:
            # As Triton does: no "parameters" (Triton's C++ client, perf_analyzer's, reads any
            # output parameters as the binary extension's and fails without binary_data_size).
            doc_outputs.append({
                "name": o.name, "datatype": datatypes[o.name],
                "shape": list(in_regions[o.name][skip:]),
            })
            continue
        arr = arrays[o.name]
        entry: dict[str, Any] = {
            "name": o.name, "datatype": datatypes[o.name], "shape": list(arr.shape[skip:]),
        }
        if arr.dtype.kind == "O":  # BYTES
            _bytes_output(entry, arr, o.binary, blobs)
        elif o.binary:
            entry["parameters"] = {"binary_data_size": arr.nbytes}
            blobs.append(arr)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        doc_outputs.append(entry)
    # "id" always, even "": the OIP's response schema requires it (KServe's client reads it).
    doc: dict[str, Any] = {
        "model_name": model, "model_version": version, "id": request_id, "outputs": doc_outputs,
    }
    header = orjson.dumps(doc)
    # The binary outputs stay where they are (views of the worker's shared memory): the HTTP
    # layer sends them from there, or copies them once into its own buffer.
    # (An empty output has no bytes to cast: memoryview refuses a shape with a 0 in it.)
    return header, [np.ascontiguousarray(b).data.cast("B") if b.size else memoryview(b"")
                    for b in blobs]


def _bytes_output(entry: dict[str, Any], arr: np.ndarray, binary: bool,
                  blobs: list[np.ndarray]) -> None:
    """A BYTES output (an object array of ``bytes``): binary in its wire form, or JSON
    strings."""
    try:
        if binary:
            wire = bytes_tensor.encode_array(arr)
            entry["parameters"] = {"binary_data_size": len(wire)}
            blobs.append(np.frombuffer(wire, np.uint8))
        else:
            entry["data"] = bytes_tensor.to_json(arr, f"output {entry['name']!r}")
    except BytesTensorError as exc:
        raise InvalidArgument(str(exc)) from None
