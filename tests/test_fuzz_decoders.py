"""The I/O-free decoders of every entry point, fuzzed with hypothesis.

Whatever bytes arrive, a decoder either returns or raises a typed error: the bridge's own
(answered with 400/413), or the shared wire modules' ``FrameError`` (``inferoxy.protocol``,
which the bridges answer with 400); any other exception would be a 500 or a dead connection. The
same strategies drive the live bridges in ``tests/test_fuzz_bridges.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.grpc import codec as grpc_codec
from bridges.rest import codec as rest_codec
from bridges.zmq import infer as zmq_infer
from gateway.admission import Limits
from gateway.config import parse_model
from gateway.errors import InferoxyError
from inferoxy.protocol import arrow_ipc, zmq_header
from inferoxy.protocol import websocket as frames
from inferoxy.protocol.errors import FrameError
from tests import fuzz_strategies as fs

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
REFUSED = (InferoxyError, FrameError)
LIMITS = Limits(max_tensor_bytes=1 << 20, max_tensor_elements=1 << 18, max_inputs=8,
                max_outputs=8)
ECHO = parse_model("echo", {
    "entrypoint": "examples.models.stub:Identity", "batch_size": 4,
    "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in fs.ECHO_INPUTS],
    "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in fs.ECHO_INPUTS],
})


@FAST
@given(st.binary(max_size=512) | fs.v2_header_bytes())
def test_rest_header(raw: bytes) -> None:
    try:
        parsed = rest_codec.parse_request(raw, ECHO, LIMITS)
    except InferoxyError:
        return
    for tensor in parsed.inputs:  # what the bridge does next with JSON data
        if not tensor.binary and tensor.region is None:
            out = np.zeros(tensor.shape, tensor.dtype)
            try:
                rest_codec.write_json_data(tensor, out)
            except InferoxyError:
                pass


@FAST
@given(st.binary(max_size=512) | fs.ws_frame_bytes())
def test_websocket_frame(raw: bytes) -> None:
    try:
        frames.parse_frame(raw, 4096)
    except REFUSED:
        pass


@FAST
@given(st.text(max_size=64))
def test_websocket_text_frame(text: str) -> None:
    with pytest.raises(FrameError):
        frames.parse_frame(text)


@FAST
@given(st.binary(max_size=512) | fs.zmq_header_bytes())
def test_zmq_header(raw: bytes) -> None:
    try:
        zmq_header.parse_header(raw)
    except REFUSED:
        pass
    zmq_header.peek_request_id(raw)  # never raises


@FAST
@given(fs.arrow_frames())
def test_zmq_arrow_frame(raw: bytes) -> None:
    try:
        batch = arrow_ipc.read_batch(raw)
    except REFUSED:
        return
    header = zmq_header.Header("x", "echo")
    try:
        zmq_infer.read_columns(ECHO, header, batch)
    except REFUSED:
        pass


@FAST
@given(st.binary(max_size=512) | fs.grpc_request_bytes())
def test_grpc_request(raw: bytes) -> None:
    wire_request = grpc_codec.split_request(raw)  # never raises
    try:
        parsed = grpc_codec.parse_request(wire_request, ECHO, LIMITS)
    except InferoxyError:
        return
    for tensor in parsed.inputs:
        if tensor.contents is not None:
            out = np.zeros(tensor.checked.shape, tensor.checked.dtype)
            try:
                grpc_codec.write_contents(tensor, out)
            except InferoxyError:
                pass


def test_strategies_reach_the_happy_path() -> None:
    """The strategies are not all garbage: valid requests come out of them too."""
    good = fs.valid_v2_header()
    parsed = rest_codec.parse_request(good, ECHO, LIMITS)
    assert [t.name for t in parsed.inputs] == [n for n, _, _ in fs.ECHO_INPUTS]
    batch = arrow_ipc.read_batch(fs.valid_arrow_frame())
    inputs, _ = zmq_infer.read_columns(ECHO, zmq_header.Header("x", "echo"), batch)
    assert len(inputs) == len(fs.ECHO_INPUTS)
    frame = frames.parse_frame(fs.valid_ws_frame())
    assert frame.header["id"] == "ok" and len(frame.payload) == 12


# -- crashes the fuzzers found, kept -----------------------------------------------------------


def test_arrow_column_name_that_is_not_utf8() -> None:
    """Was a UnicodeDecodeError out of the decoder: a 500 and a traceback in the bridge."""
    frame = fs.valid_arrow_frame()
    i = frame.index(b"SCALAR")
    bad = frame[:i] + b"\x80" + frame[i + 1:]
    with pytest.raises(FrameError, match="not UTF-8"):
        arrow_ipc.read_batch(bad)
