"""Hostile and malformed infer requests over HTTP.

Each bad request gets a 4xx whose JSON body ``{"error": ...}`` names the problem (a failing
model: a 500 with the model's message), never a traceback, a file path or a shared-memory
name; no input slot leaks; and the next valid request still succeeds. Requests are crafted by
hand (urllib3 and raw sockets), since a well-behaved client cannot send most of them.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import urllib3

from bridges.rest import codec
from gateway.admission import CheckedInput
from gateway.config import TensorSpec
from gateway.errors import InvalidArgument
from tests.conftest import TEST_MODELS, RunningGateway, shm_names, start_gateway

UNKNOWN_NOPE = "Request for unknown model: 'nope' is not found"  # Triton's words

PATH_LIKE = re.compile(r"(?:/[\w.-]+){2,}")  # /dev/shm/x, /work/main/y.py, ...
HCL = "Inference-Header-Content-Length"
SEGMENT_BYTES = 64 << 20  # the gateway's input-slab segment size (gateway/core.py)


class Raw:
    """Crafted requests against one gateway, and the checks every answer must pass."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.pool = urllib3.PoolManager(
            retries=False, timeout=urllib3.Timeout(connect=5, read=30)
        )

    def post(self, model: str, body: Any, headers: dict[str, str] | None = None, *,
             version: str | None = None, chunked: bool = False) -> urllib3.BaseHTTPResponse:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return self.pool.request("POST", self.gw.http + path, body=body, headers=headers or {},
                                 chunked=chunked)

    def error(self, resp: urllib3.BaseHTTPResponse, status: int, *fragments: str) -> str:
        """Assert ``resp`` is a clean JSON error of ``status`` naming all ``fragments``."""
        text = resp.data.decode("utf-8", errors="replace")
        assert resp.status == status, (resp.status, text)
        assert resp.headers.get("content-type") == "application/json", resp.headers
        doc = json.loads(text)
        assert isinstance(doc, dict) and list(doc) == ["error"], doc
        message = doc["error"]
        assert isinstance(message, str) and message, doc
        for fragment in fragments:
            assert fragment.lower() in message.lower(), (fragment, message)
        for leak in ("/dev/shm", self.gw.shm_prefix, "Traceback", 'File "', ".py"):
            assert leak not in text, (leak, text)
        assert not PATH_LIKE.search(text), text
        return message

    def ok(self, resp: urllib3.BaseHTTPResponse) -> dict[str, Any]:
        assert resp.status == 200, (resp.status, resp.data[:500])
        return orjson.loads(resp.data)

    def still_serving(self) -> None:
        """A valid JSON and a valid binary request both succeed, values intact."""
        image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
        doc = self.ok(self.post("stub", jbody(tensor("IMAGE", "UINT8", image.shape,
                                                     image.ravel().tolist()))))
        assert doc["outputs"][0]["data"] == image.ravel().tolist()
        body, headers = bbody(tensor("IMAGE", "UINT8", image.shape), image.tobytes())
        doc = self.ok(self.post("stub", body, headers))
        assert doc["outputs"][0]["data"] == image.ravel().tolist()


def tensor(name: str, datatype: Any, shape: Any, data: Any = None) -> dict[str, Any]:
    t: dict[str, Any] = {"name": name, "datatype": datatype,
                         "shape": list(shape) if isinstance(shape, tuple) else shape}
    if data is not None:
        t["data"] = data
    return t


def jbody(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def bbody(t: dict[str, Any], raw: bytes, *, size: int | None = None
          ) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: JSON header, then ``raw``; and its header-length header."""
    t = {**t, "parameters": {"binary_data_size": len(raw) if size is None else size}}
    header = orjson.dumps({"inputs": [t]})
    return header + raw, {HCL: str(len(header))}


def chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


def syn(data: Any, shape: Any = (1, 16), datatype: Any = "FP32", **extra: Any) -> bytes:
    return jbody(tensor("INPUT", datatype, shape, data), **extra)


def x(data: Any, shape: Any = None) -> bytes:
    """A request to ``faulty``: INT32 ``X`` of shape [1, len(data)]."""
    return jbody(tensor("X", "INT32", shape or [1, len(data)], data))


SIXTEEN = [float(i) for i in range(16)]


def case_id(value: Any) -> str | None:
    """Short test ids: the model name, or the end of the body."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        text = value.decode("ascii", errors="replace")
        return re.sub(r"[^\w\[\]{}:,.\-\"' ]", "?", text)[-48:] or "empty"
    return None


@pytest.fixture(scope="module")
def raw(gateway: RunningGateway) -> Raw:
    return Raw(gateway)


# -- the request is not a v2 infer request --------------------------------------------------

@pytest.mark.parametrize(("body", "fragments"), [
    (b"{not json", ["not valid JSON"]),
    (b'{"inputs": [', ["not valid JSON"]),
    (b"", ["not valid JSON"]),
    (b'{"inputs": "\xff\xfe"}', ["not valid JSON"]),
    (b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
     ["not valid JSON"]),
    (b"[1, 2]", ["must be a JSON object"]),
    (b'"inputs"', ["must be a JSON object"]),
    (b"null", ["must be a JSON object"]),
    (b"{}", ["'inputs' must be a non-empty array"]),
    (b'{"inputs": []}', ["'inputs' must be a non-empty array"]),
    (b'{"inputs": {"INPUT": [1]}}', ["'inputs' must be a non-empty array"]),
    (b'{"inputs": [5]}', ["inputs[0] must be an object"]),
    (syn(SIXTEEN, id=5), ["'id' must be a string"]),
    (syn(SIXTEEN, parameters=[1]), ["request.parameters must be an object"]),
    (syn(SIXTEEN, parameters={"x": {"y": 1}}), ["parameters.x must be a string, number or bool"]),
    (syn(SIXTEEN, outputs={"name": "OUTPUT"}), ["'outputs' must be an array"]),
], ids=case_id)
def test_malformed_json(raw: Raw, body: bytes, fragments: list[str]) -> None:
    raw.error(raw.post("synthetic", body), 400, *fragments)
    raw.still_serving()


def test_unknown_model_or_version_is_404(raw: Raw) -> None:
    body = syn(SIXTEEN)
    raw.error(raw.post("nope", body), 404, UNKNOWN_NOPE)
    raw.error(raw.post("synthetic", body, version="2"), 404,
              "Request for unknown model: 'synthetic' version 2 is not found")
    raw.error(raw.post("nope", b"{not json"), 404, UNKNOWN_NOPE)
    doc = raw.ok(raw.post("synthetic", body, version="1"))
    assert doc["outputs"][0]["data"] == [v * 2 + 1 for v in SIXTEEN]
    raw.still_serving()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_compressed_body_is_refused(raw: Raw, encoding: str) -> None:
    resp = raw.post("synthetic", syn(SIXTEEN), {"Content-Encoding": encoding})
    raw.error(resp, 400, "compressed request bodies are not supported")
    raw.ok(raw.post("synthetic", syn(SIXTEEN), {"Content-Encoding": "identity"}))
    raw.still_serving()


@pytest.mark.parametrize("timeout", ["5", 1.5, -1, True, [1]])
def test_timeout_parameter_of_wrong_type(raw: Raw, timeout: Any) -> None:
    resp = raw.post("synthetic", syn(SIXTEEN, parameters={"timeout": timeout}))
    raw.error(resp, 400, "parameters.timeout")
    raw.ok(raw.post("synthetic", syn(SIXTEEN, parameters={"timeout": 30_000_000})))
    raw.still_serving()


# -- tensors that do not match the model's declaration -------------------------------------

@pytest.mark.parametrize(("model", "body", "fragments"), [
    ("synthetic", syn(SIXTEEN, datatype="INT32"), ["datatype 'INT32', expected 'FP32'"]),
    ("synthetic", syn(SIXTEEN, datatype="BYTES"), ["datatype 'BYTES', expected 'FP32'"]),
    ("synthetic", syn(SIXTEEN, datatype=None), ["datatype None, expected 'FP32'"]),
    ("synthetic", syn(SIXTEEN, shape=[16]), ["shape [16], expected [-1, 16]"]),
    ("synthetic", syn(SIXTEEN, shape=[1, 15]), ["shape [1, 15], expected [-1, 16]"]),
    ("synthetic", syn(SIXTEEN, shape=[1, 16, 1]), ["shape [1, 16, 1], expected [-1, 16]"]),
    ("synthetic", syn(SIXTEEN, shape=[1, -16]), ["shape must be an array of non-negative"]),
    ("synthetic", syn(SIXTEEN, shape=[1.0, 16]), ["shape must be an array of non-negative"]),
    ("synthetic", syn(SIXTEEN, shape=[True, 16]), ["shape must be an array of non-negative"]),
    ("synthetic", syn(SIXTEEN, shape="1,16"), ["shape must be an array of non-negative"]),
    ("synthetic", syn(SIXTEEN, shape=None), ["shape must be an array of non-negative"]),
    ("synthetic", syn([], shape=[0, 16]), ["batch dimension 0 must be in [1, 16]"]),
    ("synthetic", syn(SIXTEEN * 17, shape=[17, 16]), ["batch dimension 17 must be in [1, 16]"]),
    ("stub", jbody(tensor("IMAGE", "UINT8", [9, 1, 1, 3], [0] * 27)),
     ["batch dimension 9 must be in [1, 8]"]),
    ("stub", jbody(tensor("IMAGE", "UINT8", [1, 2, 2, 4], [0] * 16)),
     ["shape [1, 2, 2, 4], expected [-1, -1, -1, 3]"]),
    ("stub", jbody(tensor("IMAGE", "UINT8", [1, 1 << 40, 1 << 20, 3], [])),
     ["input tensors take more than the limit"]),
], ids=case_id)
def test_wrong_datatype_or_shape(raw: Raw, model: str, body: bytes, fragments: list[str]
                                 ) -> None:
    status = 413 if "limit" in fragments[0] else 400
    raw.error(raw.post(model, body), status, *fragments)
    raw.still_serving()


@pytest.mark.parametrize(("body", "fragments"), [
    (jbody(tensor("NOPE", "FP32", [1, 16], SIXTEEN)),
     ["inputs[0].name 'NOPE' is not an input of model 'synthetic' (inputs: INPUT)"]),
    (jbody({"datatype": "FP32", "shape": [1, 16], "data": SIXTEEN}),
     ["inputs[0].name None is not an input"]),
    (jbody(tensor(5, "FP32", [1, 16], SIXTEEN)), ["inputs[0].name 5 is not an input"]),
    (jbody(tensor("INPUT", "FP32", [1, 16], SIXTEEN), tensor("INPUT", "FP32", [1, 16], SIXTEEN)),
     ["input 'INPUT' is given twice"]),
    (jbody(tensor("INPUT", "FP32", [1, 16])), ["neither data nor binary_data_size"]),
    (jbody({**tensor("INPUT", "FP32", [1, 16], SIXTEEN), "parameters": 3}),
     ["inputs[0].parameters must be an object"]),
    (syn(SIXTEEN, outputs=[{"name": "NOPE"}]),
     ["outputs[0].name 'NOPE' is not an output of model 'synthetic' (outputs: OUTPUT)"]),
    (syn(SIXTEEN, outputs=["OUTPUT"]), ["outputs[0].name None is not an output"]),
    (syn(SIXTEEN, outputs=[{"name": "OUTPUT"}, {"name": "OUTPUT"}]),
     ["output 'OUTPUT' is requested twice"]),
    (syn(SIXTEEN, outputs=[{"name": "OUTPUT", "parameters": {"classification": 2}}]),
     ["classification extension is not supported"]),
], ids=case_id)
def test_unknown_duplicate_or_incomplete_tensors(raw: Raw, body: bytes, fragments: list[str]
                                                 ) -> None:
    raw.error(raw.post("synthetic", body), 400, *fragments)
    raw.still_serving()


# -- JSON tensor data ------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "body", "fragments"), [
    ("synthetic", syn([[1.0] * 8, [1.0] * 7]), ["'INPUT': data is not a regular array"]),
    ("synthetic", syn([[[1.0]] * 2, [1.0]]), ["data is not a regular array"]),
    ("synthetic", syn([[0.0] * 4] * 4), ["nested data has shape [4, 4], declared [1, 16]"]),
    ("synthetic", syn([[SIXTEEN]]), ["nested data has shape [1, 1, 16], declared [1, 16]"]),
    ("synthetic", syn(SIXTEEN[:15]), ["data has 15 elements, shape [1, 16] needs 16"]),
    ("synthetic", syn([*SIXTEEN, 1.0]), ["data has 17 elements, shape [1, 16] needs 16"]),
    ("synthetic", syn(SIXTEEN * 2, shape=[1, 16]), ["data has 32 elements"]),
    ("synthetic", syn(5.0), ["data has 1 elements"]),
    ("synthetic", syn(["a"] * 16), ["'INPUT': FP32 data must be numbers"]),
    ("synthetic", syn([*SIXTEEN[:15], "1.0"]), ["FP32 data must be numbers"]),
    ("synthetic", syn([None] * 16), ["FP32 data must be numbers"]),
    ("synthetic", syn([{"v": 1}] * 16), ["FP32 data must be numbers"]),
    ("synthetic", syn([True] * 16), ["FP32 data must be numbers"]),
    ("faulty", x([1.5]), ["'X': INT32 data must be integers"]),
    ("faulty", x([True]), ["INT32 data must be integers"]),
    ("faulty", x(["7"]), ["INT32 data must be integers"]),
    ("faulty", x([2**40]), ["'X': a value is out of range for INT32"]),
    ("faulty", x([0, -(2**40)]), ["out of range for INT32"]),
    ("faulty", x([2**31]), ["out of range for INT32"]),
    ("faulty", x([2**63]), ["out of range for INT32"]),
    ("faulty", x([2**64 - 1]), ["out of range for INT32"]),
    ("stub", jbody(tensor("IMAGE", "UINT8", [1, 1, 1, 3], [0, 0, -1])),
     ["out of range for UINT8"]),
    ("stub", jbody(tensor("IMAGE", "UINT8", [1, 1, 1, 3], [0, 256, 0])),
     ["out of range for UINT8"]),
], ids=case_id)
def test_bad_json_data(raw: Raw, model: str, body: bytes, fragments: list[str]) -> None:
    raw.error(raw.post(model, body), 400, *fragments)
    raw.still_serving()


def test_json_data_at_the_edges_is_accepted(raw: Raw) -> None:
    """The checks above are not too strict: nested data of the right shape, ints for FP32,
    and the extreme values of INT32 all pass."""
    nested = [SIXTEEN[:16], SIXTEEN[::-1]]
    doc = raw.ok(raw.post("synthetic", syn(nested, shape=[2, 16])))
    assert doc["outputs"][0]["data"] == [v * 2 + 1 for v in SIXTEEN + SIXTEEN[::-1]]
    doc = raw.ok(raw.post("synthetic", syn(list(range(16)))))
    assert doc["outputs"][0]["data"] == [v * 2 + 1 for v in range(16)]
    doc = raw.ok(raw.post("faulty", x([-(2**31), 2**31 - 1], shape=[1, 2])))
    assert doc["outputs"][0]["data"] == [-(2**31), 2**31 - 1]


def test_codec_integer_ranges() -> None:
    """Unit level, for datatypes no test model has: JSON ints in [2**63, 2**64) (numpy kind
    "u") are integers, so UINT64 takes them and INT64 calls them out of range."""
    def write(datatype: str, data: list[Any]) -> np.ndarray:
        dtype = np.dtype(datatype)
        spec = TensorSpec("T", datatype.upper(), (len(data),))
        checked = CheckedInput(spec, (1, len(data)), dtype, dtype.itemsize * len(data))
        t = codec.InputTensor(checked, False, data)
        out = np.zeros((1, len(data)), dtype)
        codec.write_json_data(t, out)
        return out

    np.testing.assert_array_equal(write("uint64", [2**64 - 1, 2**63]), [[2**64 - 1, 2**63]])
    np.testing.assert_array_equal(write("int64", [-(2**63), 2**63 - 1]),
                                  [[-(2**63), 2**63 - 1]])
    with pytest.raises(InvalidArgument, match="out of range for INT64"):
        write("int64", [2**63])
    with pytest.raises(InvalidArgument, match="out of range for UINT64"):
        write("uint64", [-1])


# -- the binary tensor extension ------------------------------------------------------------

IMAGE = np.arange(60, dtype=np.uint8).reshape(1, 4, 5, 3)
IMAGE_T = tensor("IMAGE", "UINT8", IMAGE.shape)


def _framing_cases() -> list[Any]:
    body, headers = bbody(IMAGE_T, IMAGE.tobytes())
    n = int(headers[HCL])
    json_only, _ = bbody(IMAGE_T, b"", size=60)
    p = pytest.param
    return [
        p(body, {}, [HCL, "the whole body must be JSON"], id="header-missing"),
        p(json_only, {}, [f"{HCL} header is missing"], id="header-missing-no-bytes"),
        p(body, {HCL: "abc"}, [HCL, "must be a non-negative integer"], id="not-a-number"),
        p(body, {HCL: "-5"}, [HCL, "must be a non-negative integer"], id="negative"),
        p(body, {HCL: f"+{n}"}, [HCL, "must be a non-negative integer"], id="plus-sign"),
        p(body, {HCL: f"{n // 10}_{n % 10}"}, [HCL, "must be a non-negative integer"],
          id="underscore"),
        p(body, {HCL: "9" * 5000}, [HCL, "at most 20 digits"], id="5000-digits"),
        p(body, {HCL: "0"}, [HCL, "must be in [1,"], id="zero"),
        p(body, {HCL: str(10**19)}, [HCL, "must be in [1,"], id="huge"),
        p(body, {HCL: str(len(body) + 1)}, [HCL, "is larger than the body"], id="past-body"),
        p(body, {HCL: str(n - 3)}, [f"the first {n - 3} bytes", HCL, "not valid JSON"],
          id="cuts-the-json"),
        p(body, {HCL: str(n + 3)}, [f"the first {n + 3} bytes", HCL, "not valid JSON"],
          id="into-the-tensor"),
        p(body[:-7], headers, [f"body is {len(body) - 7} bytes", f"need {len(body)}"],
          id="body-short"),
        p(body + b"1234567", headers, [f"body is {len(body) + 7} bytes", f"need {len(body)}"],
          id="body-long"),
        p(*bbody(IMAGE_T, IMAGE.tobytes()[:59]),
          ["binary_data_size is 59, but shape [1, 4, 5, 3] of UINT8 takes 60 bytes"],
          id="size-vs-shape"),
        p(*bbody(IMAGE_T, IMAGE.tobytes(), size="60"), ["binary_data_size is '60'"],
          id="size-a-string"),
        p(*bbody(IMAGE_T, IMAGE.tobytes(), size=True), ["binary_data_size is True"],
          id="size-a-bool"),
        p(*bbody({**IMAGE_T, "data": [0] * 60}, IMAGE.tobytes()),
          ["has both binary_data_size and data"], id="size-and-data"),
        p(*bbody({**IMAGE_T, "shape": [1, 4, 5, 4]}, bytes(80)),
          ["shape [1, 4, 5, 4], expected [-1, -1, -1, 3]"], id="wrong-shape"),
        p(*bbody({**IMAGE_T, "datatype": "INT8"}, IMAGE.tobytes()),
          ["datatype 'INT8', expected 'UINT8'"], id="wrong-datatype"),
    ]


@pytest.mark.parametrize(("body", "headers", "fragments"), _framing_cases())
def test_binary_framing(raw: Raw, body: bytes, headers: dict[str, str],
                        fragments: list[str]) -> None:
    raw.error(raw.post("stub", body, headers), 400, *fragments)
    raw.still_serving()


def test_chunked_bodies_of_the_wrong_length(raw: Raw) -> None:
    """Without a Content-Length the body is streamed into its slot; a short or long body is
    only found out while reading, after the slot was taken."""
    body, headers = bbody(IMAGE_T, IMAGE.tobytes())
    n = int(headers[HCL])
    cases = [
        (chunks(body[:n], body[n:n + 30]), headers,
         ["request body ended early: input 'IMAGE' needs 60 bytes, got 30"]),
        (chunks(body[:n], body[n:]), {HCL: str(n + 100)},
         ["request body ended early: the JSON header", HCL, f"needs {n + 100} bytes"]),
        (chunks(body, b"12345"), headers,
         [f"request body is longer than the header and binary inputs ({n} + 60 bytes)"]),
        (chunks(body[:50], body[50:]), {}, [HCL, "not valid JSON"]),
        (chunks(body[:n - 3], body[n - 3:]), {HCL: str(n - 3)}, [HCL, "not valid JSON"]),
    ]
    for parts, hdrs, fragments in cases:
        raw.error(raw.post("stub", parts, hdrs, chunked=True), 400, *fragments)
        raw.still_serving()
    doc = raw.ok(raw.post("stub", chunks(body[:10], body[10:n + 7], body[n + 7:]), headers,
                          chunked=True))
    assert doc["outputs"][0]["data"] == IMAGE.ravel().tolist()


# -- slots are never leaked ------------------------------------------------------------------

def _wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_hostile_requests_leak_no_slots(raw: Raw, gateway: RunningGateway) -> None:
    """Bad requests that got as far as taking an input slot give it back.

    The slab pools slots of a size class in 64 MiB segments and hands out the most recently
    freed slot first, so a leak shows as a new /dev/shm segment only once a segment's slots
    run out. Hence the tensors here: ~17 MB ones take a 32 MiB slot (two to a segment), so a
    leak shows within a round or two; tensors over 64 MiB get a segment of their own, which
    must be gone once the error is answered. (The small JSON tensors take 16 KiB slots,
    4096 to a segment: they are there for breadth, not detection.) Loopback only; ~0.2 GB
    sent in all.
    """
    mid = [1, 2048, 2800, 3]  # 17,203,200 bytes: a 32 MiB slot
    big = [1, 4096, 5462, 3]  # 67,117,056 bytes: a segment of its own
    assert SEGMENT_BYTES // 4 < np.prod(mid) <= SEGMENT_BYTES // 2 < SEGMENT_BYTES < np.prod(big)
    n_mid = int(np.prod(mid))
    mid_bytes = np.random.default_rng(4).integers(0, 256, n_mid, dtype=np.uint8).tobytes()
    mid_body, mid_headers = bbody(tensor("IMAGE", "UINT8", mid), mid_bytes)
    n = int(mid_headers[HCL])
    big_header, big_headers = bbody(tensor("IMAGE", "UINT8", big), b"", size=int(np.prod(big)))
    small = [1, 100, 50, 3]

    def hostile() -> None:
        # Streamed (chunked) bodies: the slot is taken, (partly) filled, then the body
        # turns out short or long.
        resp = raw.post("stub", chunks(mid_body[:n], mid_bytes[:100_000]), mid_headers,
                        chunked=True)
        raw.error(resp, 400, "ended early", "got 100000")
        resp = raw.post("stub", chunks(mid_body[:n], mid_body[n:], b"x" * 100), mid_headers,
                        chunked=True)
        raw.error(resp, 400, "longer than")
        resp = raw.post("stub", chunks(big_header, bytes(100_000)), big_headers, chunked=True)
        raw.error(resp, 400, f"needs {np.prod(big)} bytes, got 100000")
        # JSON data that fails its checks after the slot was taken.
        raw.error(raw.post("stub", jbody(tensor("IMAGE", "UINT8", mid, [0] * 10))),
                  400, f"data has 10 elements, shape {mid} needs {np.prod(mid)}")
        raw.error(raw.post("stub", jbody(tensor("IMAGE", "UINT8", big, [0] * 10))),
                  400, f"data has 10 elements, shape {big}")
        raw.error(raw.post("stub", jbody(tensor("IMAGE", "UINT8", small,
                                                [0] * 14_999 + [300]))), 400, "out of range")
        raw.error(raw.post("stub", jbody(tensor("IMAGE", "UINT8", small,
                                                ["a"] * 15_000))), 400, "must be integers")
        # Refused before any slot was taken.
        raw.error(raw.post("stub", mid_body[:-1], mid_headers), 400, "need")

    raw.still_serving()
    hostile()  # the first round creates the pooled segments that later rounds reuse
    before = shm_names(gateway.shm_prefix)
    for _ in range(8):
        hostile()
        assert shm_names(gateway.shm_prefix) == before
    raw.still_serving()
    # the slots are not just gone, they are reusable: a valid ~17 MB request works
    header = orjson.dumps({
        "inputs": [{**tensor("IMAGE", "UINT8", mid), "parameters": {"binary_data_size": n_mid}}],
        "parameters": {"binary_data_output": True},
    })
    resp = raw.post("stub", header + mid_bytes, {HCL: str(len(header))})
    assert resp.status == 200, resp.data[:300]
    assert resp.data[int(resp.headers[HCL]):] == mid_bytes


def test_client_gone_mid_body_frees_its_slot(raw: Raw, gateway: RunningGateway) -> None:
    big = [1, 4096, 5462, 3]
    header, headers = bbody(tensor("IMAGE", "UINT8", big), b"", size=int(np.prod(big)))
    raw.still_serving()
    before = shm_names(gateway.shm_prefix)
    host, port = gateway.url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"POST /v2/models/stub/infer HTTP/1.1\r\nHost: {gateway.url}\r\n"
            f"Content-Length: {len(header) + int(np.prod(big))}\r\n"
            f"{HCL}: {headers[HCL]}\r\n\r\n".encode() + header + bytes(200_000)
        )
        # the slot (a segment of its own) is taken once the JSON header is read
        assert _wait_for(lambda: len(shm_names(gateway.shm_prefix)) == len(before) + 1)
    assert _wait_for(lambda: shm_names(gateway.shm_prefix) == before)
    raw.still_serving()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length, from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                  if k.strip().lower() == "content-length")
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return int(lines[0].split()[1]), body


def test_early_answer_then_hang_up_logs_no_traceback(raw: Raw, gateway: RunningGateway
                                                     ) -> None:
    """Errors found before the body is read are answered at once; a client that reads the
    answer and hangs up straight away used to race hypercorn's close of the socket and log
    "Error in ASGI Framework" with a traceback (most of the time, on loopback)."""
    log_from = len(gateway.log())
    host, port = gateway.url.rsplit(":", 1)
    requests = [
        b"POST /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
        b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Content-Encoding: gzip\r\n\r\n{",
        b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        b"Inference-Header-Content-Length: x\r\n\r\n{",
    ]
    for i in range(300):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(requests[i % len(requests)])
            status, body = _read_response(sock)
            assert status in (400, 404), body
    raw.still_serving()
    log = gateway.log()[log_from:]
    assert "Traceback" not in log, log


def test_stalled_body_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    """A client that sends the JSON header and then stalls gets a 408 once the request
    timeout passes, and its slot (taken at the declared size) is given back."""
    gw = start_gateway(tmp_path, TEST_MODELS, "--request-timeout-s", "1")
    try:
        raw = Raw(gw)
        raw.still_serving()
        before = shm_names(gw.shm_prefix)
        big = [1, 4096, 5462, 3]  # a segment of its own
        header, headers = bbody(tensor("IMAGE", "UINT8", big), b"", size=int(np.prod(big)))
        host, port = gw.url.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=15) as binary, \
                socket.create_connection((host, int(port)), timeout=15) as json_only:
            binary.sendall(
                f"POST /v2/models/stub/infer HTTP/1.1\r\nHost: {gw.url}\r\n"
                f"Content-Length: {len(header) + int(np.prod(big))}\r\n"
                f"{HCL}: {headers[HCL]}\r\n\r\n".encode() + header + bytes(1000)
            )
            json_only.sendall(
                f"POST /v2/models/stub/infer HTTP/1.1\r\nHost: {gw.url}\r\n"
                f"Content-Length: 1000\r\n\r\n".encode() + b'{"inputs": ['
            )
            assert _wait_for(lambda: len(shm_names(gw.shm_prefix)) == len(before) + 1)
            started = time.monotonic()
            for sock, came in ((binary, len(header) + 1000), (json_only, 12)):
                status, body = _read_response(sock)
                assert status == 408, body
                message = json.loads(body)["error"]
                assert message == f"the request body did not arrive within 1 s (got {came} bytes)"
            assert time.monotonic() - started < 5
            assert shm_names(gw.shm_prefix) == before
        raw.still_serving()
    finally:
        status = gw.stop()
    assert status == 0, gw.log()
    assert shm_names(gw.shm_prefix) == []
    assert "Traceback" not in gw.log(), gw.log()


# -- the body size limit ---------------------------------------------------------------------

def test_oversized_body_is_413(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--max-body-bytes", "100000")
    try:
        raw = Raw(gw)
        small = np.zeros((1, 100, 300, 3), np.uint8)  # 90,000 bytes
        large = np.zeros((1, 100, 400, 3), np.uint8)  # 120,000 bytes
        body, headers = bbody(tensor("IMAGE", "UINT8", large.shape), large.tobytes())
        raw.error(raw.post("stub", body, headers), 413, "exceeds the limit of 100000")
        raw.error(raw.post("stub", chunks(body[:50_000], body[50_000:]), headers, chunked=True),
                  413, "limit of 100000")
        big_json = jbody(tensor("IMAGE", "UINT8", [1, 100, 200, 3], [0] * 60_000))
        assert len(big_json) > 100_000
        raw.error(raw.post("stub", big_json), 413, "limit of 100000")
        raw.error(raw.post("stub", chunks(big_json[:1000], big_json[1000:]), chunked=True),
                  413, "limit of 100000")
        # a small header that declares too much is refused before the bytes are read
        header, hdrs = bbody(tensor("IMAGE", "UINT8", large.shape), b"", size=large.size)
        raw.error(raw.post("stub", chunks(header), hdrs, chunked=True), 413,
                  "input tensors take more than the limit of 100000 bytes")

        body, headers = bbody(tensor("IMAGE", "UINT8", small.shape), small.tobytes())
        doc = raw.ok(raw.post("stub", body, headers))
        assert doc["outputs"][0]["shape"] == list(small.shape)
        raw.still_serving()
    finally:
        status = gw.stop()
    assert status == 0, gw.log()
    assert shm_names(gw.shm_prefix) == []
    assert "Traceback" not in gw.log(), gw.log()


# -- model failures, and models with two inputs --------------------------------------------

SIDE_MODELS = """
models:
  faulty:
    entrypoint: tests.models.faulty:Faulty
    batch_size: 4
    copies: 1
    inputs: [{name: X, datatype: INT32, shape: [-1]}]
    outputs: [{name: Y, datatype: INT32, shape: [-1]}]
  pair:
    entrypoint: tests.models.faulty:Faulty
    batch_size: 4
    copies: 1
    inputs: [{name: X, datatype: INT32, shape: [-1]}, {name: B, datatype: FP32, shape: [4]}]
    outputs: [{name: Y, datatype: INT32, shape: [-1]}]
"""


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raw]:
    """A gateway of this module's own: failing models log tracebacks (on purpose), which the
    shared gateway's log must not show."""
    tmp = tmp_path_factory.mktemp("side")
    models = tmp / "models.yaml"
    models.write_text(SIDE_MODELS)
    gw = start_gateway(tmp, models)
    yield Raw(gw)
    status = gw.stop()
    assert status == 0, gw.log()
    assert shm_names(gw.shm_prefix) == []
    log = gw.log()
    # the only tracebacks are the workers' own reports of the model raising
    assert log.count("Traceback") == log.count("model raised on batch"), log


def _faulty_ok(side: Raw) -> None:
    doc = side.ok(side.post("faulty", x([5, 6, 7])))
    assert doc["outputs"][0]["data"] == [5, 6, 7]


@pytest.mark.parametrize(("value", "fragments"), [
    (1, ["model 'faulty'", "ValueError: the model refused this input"]),
    (2, ["model 'faulty'", "output 'Y' is float64, declared INT32"]),
    (3, ["model 'faulty'", "'Y' has shape [2, 1]", "batch size 1"]),
])
def test_model_errors_are_500_and_the_copy_keeps_serving(side: Raw, value: int,
                                                         fragments: list[str]) -> None:
    _faulty_ok(side)
    for _ in range(3):
        side.error(side.post("faulty", x([value])), 500, *fragments)
        _faulty_ok(side)
    # the same copy answered throughout: it was never restarted
    assert side.gw.log().count("of model faulty started") == 1, side.gw.log()
    assert side.gw.log().count("of model faulty ready") == 1, side.gw.log()


def test_inputs_with_differing_batch_dims_or_missing(side: Raw) -> None:
    xs = tensor("X", "INT32", [1, 2], [8, 9])
    bs = tensor("B", "FP32", [2, 4], [0.5] * 8)
    side.error(side.post("pair", jbody(xs, bs)), 400,
               "input 'B' has batch dimension 2, other inputs have 1")
    side.error(side.post("pair", jbody(xs)), 400, "missing input(s) ['B'] of model 'pair'")
    side.error(side.post("pair", jbody(xs, tensor("B", "FP32", [1, 4], [0.5] * 4), xs)), 400,
               "input 'X' is given twice")
    # binary and JSON inputs mixed, batch dims differing
    header = orjson.dumps({"inputs": [
        {**tensor("X", "INT32", [2, 1]), "parameters": {"binary_data_size": 8}},
        tensor("B", "FP32", [1, 4], [0.5] * 4),
    ]})
    resp = side.post("pair", header + np.array([8, 9], np.int32).tobytes(),
                     {HCL: str(len(header))})
    side.error(resp, 400, "input 'B' has batch dimension 1, other inputs have 2")
    doc = side.ok(side.post("pair", jbody(xs, tensor("B", "FP32", [1, 4], [0.5] * 4))))
    assert doc["outputs"][0]["data"] == [8, 9]
    _faulty_ok(side)
