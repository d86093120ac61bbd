"""Every entry point of a real gateway fuzzed with hypothesis: the HTTP binary extension,
ZeroMQ multipart messages, WebSocket frames and gRPC messages with malformed fields.

Each hostile request gets exactly one answer, with a documented status and a readable error
(never a 500: the models here never raise), and the connection keeps serving. After the run
the gateway still answers a valid request and no shared-memory slot is leaked.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import grpc
import orjson
import pytest
import trio
import urllib3
import zmq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from inferoxy.client.websocket import open_stream
from inferoxy.protocol import zmq_message as message_wire
from tests import fuzz_strategies as fs
from tests.conftest import ROOT, RunningGateway, shm_names, start_gateway
from tests.fuzzing import assert_no_leak, assert_still_serving

MODELS = ROOT / "tests" / "models_limits.yaml"
LIVE = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
HTTP_STATUSES = {200, 400, 403, 404, 408, 409, 413, 503, 504}  # 504: a tiny "timeout" param
GRPC_OK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.DEADLINE_EXCEEDED}
MODEL_NAMES = st.sampled_from(["stub", "echo", "running_sum", "nope"])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    g = start_gateway(tmp_path_factory.mktemp("fuzz-bridges"), MODELS, "--allow-client-shm",
                      "--max-body-bytes", str(1 << 20), "--request-timeout-s", "5")
    try:
        yield g
        assert_still_serving(g)
        assert_no_leak(g)
        assert g.stop() == 0, g.log()
        assert shm_names(g.shm_prefix) == []
        assert "Traceback" not in g.log(), g.log()
    finally:
        g.cleanup()


# -- HTTP: the binary tensor extension ---------------------------------------------------------


@st.composite
def binary_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A JSON header + raw tensor bytes, with a header length that is right or not."""
    if draw(st.integers(0, 2)) == 2:  # (hypothesis tries small numbers first)
        header = draw(fs.v2_header_bytes())
        tail = draw(st.binary(max_size=600))
    else:
        header, tail = draw(fs.binary_v2_request())
    length = draw(st.sampled_from([len(header)] * 4 + [len(header) + 1, len(header) - 1, 0])
                  | st.integers(-3, 2000)
                  | st.text(string.ascii_letters + string.digits + " +-_.", max_size=6))
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(length)}
    if draw(st.integers(0, 9)) == 9:
        del headers["Inference-Header-Content-Length"]
    return header + tail, headers


@LIVE
@given(req=binary_request(), model=st.sampled_from(["echo", "echo", "stub", "running_sum",
                                                   "nope"]))
def test_http_binary_extension(gw: RunningGateway, req: tuple[bytes, dict[str, str]],
                               model: str) -> None:
    body, headers = req
    r = urllib3.request("POST", f"{gw.http}/v2/models/{model}/infer", body=body,
                        headers=headers, timeout=30, retries=False)
    event(f"status {r.status}")  # --hypothesis-show-statistics: how deep the fuzz got
    assert r.status in HTTP_STATUSES, (r.status, r.data[:300])
    if r.status != 200:
        assert isinstance(json.loads(r.data)["error"], str), r.data[:300]


# -- ZeroMQ: multipart messages ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dealer(gw: RunningGateway) -> Iterator[zmq.Socket[bytes]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(gw.zmq_url)
    yield sock
    sock.close(linger=0)
    context.term()


@st.composite
def zmq_message(draw: st.DrawFn) -> list[bytes]:
    header = draw(fs.zmq_header()) if draw(st.integers(0, 2)) == 2 else {}
    if draw(st.booleans()) or not header:
        header = {"model": draw(MODEL_NAMES), "id": draw(st.text(max_size=6)), **header}
    arrow = draw(fs.arrow_frames()) if draw(st.booleans()) else fs.valid_arrow_frame()
    frames = [draw(st.just(fs.dumps(header)).flatmap(fs.mangled) | st.binary(max_size=64)),
              arrow]
    count = draw(st.sampled_from([2, 2, 2, 1, 3]))
    return [*frames, draw(st.binary(max_size=32))][:count]


@LIVE
@given(message=zmq_message())
def test_zmq_frames(dealer: zmq.Socket[bytes], message: list[bytes]) -> None:
    dealer.send_multipart(message)
    assert dealer.poll(30_000), "no reply: every request gets one"
    reply = dealer.recv_multipart()
    if message[0] == b"":  # read as a REQ client's delimiter: echoed before the reply
        assert reply[0] == b""
        reply = reply[1:]
    header, _ = message_wire.decode_reply(reply)
    event(f"status {header.get('code', 200)}")
    assert header["status"] in ("ok", "error"), header
    if header["status"] == "error":
        assert header["code"] in HTTP_STATUSES and isinstance(header["message"], str), header
    assert not dealer.poll(0), "one request, one reply"


# -- WebSocket: frames of one stream -----------------------------------------------------------


@LIVE
@given(frames=st.lists(fs.ws_frame_bytes() | st.just(fs.valid_ws_frame())
                       | st.text(max_size=8), min_size=1, max_size=6),
       model=st.sampled_from(["stub", "echo"]))
def test_websocket_frames(gw: RunningGateway, frames: list[bytes | str], model: str) -> None:
    async def main() -> list[dict[str, Any]]:
        async with open_stream(f"{gw.ws_url}/v2/models/{model}/stream",
                               message_queue_size=16) as ws:
            for frame in frames:
                await ws.send_message(frame)
            replies = []
            with trio.fail_after(30):
                for _ in frames:
                    message = await ws.get_message()
                    assert isinstance(message, bytes)
                    n = int.from_bytes(message[:4], "little")
                    replies.append(orjson.loads(message[4:4 + n]))
            return replies

    replies = trio.run(main)
    assert len(replies) == len(frames)  # one reply per frame, the stream goes on
    for reply in replies:
        event(f"status {reply.get('code', 200)}")
        assert "outputs" in reply or (reply["code"] in HTTP_STATUSES
                                      and isinstance(reply["error"], str)), reply


# -- gRPC: messages with malformed fields ------------------------------------------------------


@pytest.fixture(scope="module")
def channel(gw: RunningGateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gw.grpc_url) as ch:
        yield ch


def _infer_raw(channel: grpc.Channel) -> Any:
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=lambda b: b,
                               response_deserializer=pb.ModelInferResponse.FromString)


@LIVE
@given(request=MODEL_NAMES.flatmap(fs.any_grpc_request))
def test_grpc_malformed_fields(channel: grpc.Channel, request: pb.ModelInferRequest) -> None:
    try:
        _infer_raw(channel)(request.SerializeToString(), timeout=30)
    except grpc.RpcError as exc:
        event(f"code {exc.code()}")
        assert exc.code() in GRPC_OK_CODES, (exc.code(), exc.details())
        assert exc.details(), exc
    else:
        event("ok")


@LIVE
@given(raw=fs.grpc_request_bytes() | st.binary(max_size=256))
def test_grpc_bytes(channel: grpc.Channel, raw: bytes) -> None:
    try:
        _infer_raw(channel)(raw, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in GRPC_OK_CODES, (exc.code(), exc.details())


@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(requests=st.lists(MODEL_NAMES.flatmap(fs.any_grpc_request), min_size=1, max_size=6))
def test_grpc_stream(channel: grpc.Channel, requests: list[pb.ModelInferRequest]) -> None:
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=pb.ModelStreamInferResponse.FromString)
    answers = list(stream(iter(requests), timeout=30))
    assert len(answers) == len(requests)  # one answer (or error message) per request


# -- crashes the fuzzers found, kept -----------------------------------------------------------


def test_zmq_arrow_column_name_that_is_not_utf8(dealer: zmq.Socket[bytes]) -> None:
    """Was a 500 ("internal error") with a traceback in the gateway's log."""
    frame = fs.valid_arrow_frame()
    i = frame.index(b"SCALAR")
    dealer.send_multipart([orjson.dumps({"model": "echo", "id": "bad-name"}),
                           frame[:i] + b"\x80" + frame[i + 1:]])
    assert dealer.poll(30_000)
    header, _ = message_wire.decode_reply(dealer.recv_multipart())
    assert header["id"] == "bad-name" and header["code"] == 400, header
    assert "not UTF-8" in header["message"]
    dealer.send_multipart([orjson.dumps({"model": "echo", "id": "good"}), frame])
    assert dealer.poll(30_000)
    assert message_wire.decode_reply(dealer.recv_multipart())[0]["status"] == "ok"
