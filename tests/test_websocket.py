"""The WebSocket bridge: a video-like stream per connection, in order, with backpressure."""

from __future__ import annotations

import re
import time

import numpy as np
import trio
from trio_websocket import ConnectionRejected

from inferoxy.client.websocket import open_stream
from inferoxy.protocol.websocket import decode_reply, encode_frame
from tests.conftest import RunningGateway


def frame(value: float, i: int, end: bool = False) -> bytes:
    header: dict[str, object] = {
        "id": f"f{i}", "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4]}]}
    if end:
        header["end"] = True
    return encode_frame(header, [np.full((1, 4), value, np.float32)])


def run(fn, *args):  # type: ignore[no-untyped-def]
    return trio.run(fn, *args)


def test_stream_in_order_pipelined(gateway: RunningGateway) -> None:
    """40 frames sent without waiting: the running sum proves all arrived, once, in order."""
    async def main() -> list[tuple[str, float, int]]:
        url = f"{gateway.ws_url}/v2/models/running_sum/stream?sequence_id=ws-order"
        got = []
        async with open_stream(url) as ws:
            async with trio.open_nursery() as nursery:
                async def sender() -> None:
                    for i in range(1, 41):
                        await ws.send_message(frame(float(i), i, end=i == 40))
                nursery.start_soon(sender)
                for _ in range(40):
                    header, arrays = decode_reply(await ws.get_message())
                    got.append((header["id"], float(arrays["SUM"][0, 0]),
                                int(arrays["COUNT"][0, 0])))
        return got

    got = run(main)
    assert got == [(f"f{k}", k * (k + 1) / 2, k) for k in range(1, 41)]


def test_many_streams_at_once(gateway: RunningGateway) -> None:
    async def one(n: int, results: dict[int, list[int]]) -> None:
        async with open_stream(f"{gateway.ws_url}/v2/models/running_sum/stream") as ws:
            counts = []
            for i in range(1, 11):
                await ws.send_message(frame(1.0, i))
                _, arrays = decode_reply(await ws.get_message())
                counts.append(int(arrays["COUNT"][0, 0]))
            results[n] = counts

    async def main() -> dict[int, list[int]]:
        results: dict[int, list[int]] = {}
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(one, n, results)
        return results

    results = run(main)
    assert results == {n: list(range(1, 11)) for n in range(6)}


def test_bad_frames_get_errors_and_the_stream_goes_on(gateway: RunningGateway) -> None:
    async def main() -> list[dict[str, object]]:
        replies = []
        async with open_stream(
                f"{gateway.ws_url}/v2/models/running_sum/stream?sequence_id=ws-bad") as ws:
            await ws.send_message(frame(1.0, 1))
            await ws.send_message(b"\x01")  # too short
            await ws.send_message(b"\x05\x00\x00\x00{nope")  # not JSON
            bad_shape = encode_frame({"id": "b", "inputs": [
                {"name": "INPUT", "datatype": "FP32", "shape": [1, 3]}]},
                [np.zeros((1, 3), np.float32)])
            await ws.send_message(bad_shape)
            await ws.send_message(frame(2.0, 2)[:-4])  # short payload
            await ws.send_message("text")
            await ws.send_message(frame(2.0, 3))
            for _ in range(7):
                header, arrays = decode_reply(await ws.get_message())
                header["sum"] = float(arrays["SUM"][0, 0]) if "SUM" in arrays else None
                replies.append(header)
        return replies

    replies = run(main)
    assert replies[0]["sum"] == 1.0
    assert [r.get("code") for r in replies[1:6]] == [400] * 5
    assert "header length" in str(replies[1]["error"])
    assert "JSON" in str(replies[2]["error"])
    assert re.search(r"shape \[1, 3\], expected \[-1, 4\]", str(replies[3]["error"]))
    assert "ended early" in str(replies[4]["error"])
    # A refused frame's reply carries its id once the header could be read.
    assert [r["id"] for r in replies[1:6]] == ["", "", "b", "f2", ""]
    assert replies[6]["sum"] == 3.0  # the sequence went on, state intact


def test_closing_the_socket_ends_the_sequence(gateway: RunningGateway) -> None:
    async def main() -> None:
        url = f"{gateway.ws_url}/v2/models/running_sum/stream?sequence_id=ws-close"
        async with open_stream(url) as ws:
            await ws.send_message(frame(1.0, 1))
            await ws.get_message()

    run(main)
    end = time.monotonic() + 10
    while time.monotonic() < end and "sequence 'ws-close' ended (closed)" not in gateway.log():
        time.sleep(0.05)
    assert "sequence 'ws-close' ended (closed)" in gateway.log()


def test_unknown_model_is_rejected(gateway: RunningGateway) -> None:
    async def main() -> int:
        try:
            async with open_stream(f"{gateway.ws_url}/v2/models/nope/stream"):
                return 0
        except ConnectionRejected as exc:
            assert b"unknown model" in (exc.body or b"")
            return exc.status_code

    assert run(main) == 404


def test_stateless_models_stream_too(gateway: RunningGateway) -> None:
    async def main() -> list[np.ndarray]:
        outs = []
        async with open_stream(f"{gateway.ws_url}/v2/models/synthetic/stream") as ws:
            for i in range(3):
                x = np.full((1, 16), i, np.float32)
                await ws.send_message(encode_frame({"inputs": [
                    {"name": "INPUT", "datatype": "FP32", "shape": [1, 16]}]}, [x]))
                outs.append(decode_reply(await ws.get_message())[1]["OUTPUT"])
        return outs

    for i, out in enumerate(run(main)):
        np.testing.assert_allclose(out, i * 2 + 1)


def test_a_stream_cannot_take_over_another_streams_sequence(gateway: RunningGateway) -> None:
    async def main() -> int:
        url = f"{gateway.ws_url}/v2/models/running_sum/stream?sequence_id=ws-mine"
        async with open_stream(url) as ws:
            await ws.send_message(frame(1.0, 1))
            await ws.get_message()
            try:
                async with open_stream(url):
                    return 0
            except ConnectionRejected as exc:
                assert b"already streaming" in (exc.body or b"")
                await ws.send_message(frame(1.0, 2))  # the owner's stream is untouched
                _, arrays = decode_reply(await ws.get_message())
                assert int(arrays["COUNT"][0, 0]) == 2
                return exc.status_code

    assert run(main) == 409
