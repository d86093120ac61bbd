"""inferoxy.client over the WebSocket bridge: the same idiom as REST, gRPC and ZeroMQ."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionRejected

from inferoxy.client import AsyncClient, Client, InferenceError
from inferoxy.client.websocket import open_stream
from tests.conftest import RunningGateway


def test_blocking_client_streams_a_sequence(gateway: RunningGateway) -> None:
    with Client.websocket(gateway.ws_url) as client:
        x = np.arange(16, dtype=np.float32)[None]
        np.testing.assert_allclose(client.infer("synthetic", {"INPUT": x})["OUTPUT"], x * 2 + 1)
        sums = [client.infer("running_sum", {"INPUT": np.full((1, 4), 2.0, np.float32)})
                for _ in range(3)]
        assert [int(s["COUNT"][0, 0]) for s in sums] == [1, 2, 3]  # one stream, one sequence
        last = client.infer("running_sum", {"INPUT": np.ones((1, 4), np.float32)},
                            parameters={"sequence_end": True})
        assert float(last["SUM"][0, 0]) == 7.0
        again = client.infer("running_sum", {"INPUT": np.ones((1, 4), np.float32)})
        assert int(again["COUNT"][0, 0]) == 1  # a new stream, a new sequence
        with pytest.raises(InferenceError) as exc:
            client.infer("synthetic", {"INPUT": np.zeros((1, 3), np.float32)})
        assert exc.value.code == 400 and "expected [-1, 16]" in str(exc.value)
        with pytest.raises(InferenceError) as exc:
            client.infer("nope", {"INPUT": x})
        assert exc.value.code == 404


def test_trio_client(gateway: RunningGateway) -> None:
    async def main() -> list[int]:
        async with AsyncClient.websocket(gateway.ws_url) as client:
            counts = []
            for _ in range(4):
                out = await client.infer("running_sum",
                                         {"INPUT": np.ones((1, 4), np.float32)})
                counts.append(int(out["COUNT"][0, 0]))
            return counts

    assert trio.run(main) == [1, 2, 3, 4]


def _unclosed_sockets(main: Callable[[], Awaitable[object]]) -> list[str]:
    """The "unclosed socket" ResourceWarnings left once ``main`` has run and garbage is
    collected (a leaked socket is only found by the collector)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        trio.run(main)
        gc.collect()
    return [str(w.message) for w in caught
            if issubclass(w.category, ResourceWarning) and "unclosed" in str(w.message)]


def test_a_refused_stream_leaves_no_socket_open(gateway: RunningGateway) -> None:
    url = f"{gateway.ws_url}/v2/models/nope/stream"

    async def refused(opener: Callable[[str], AbstractAsyncContextManager[object]]) -> None:
        for _ in range(3):
            with pytest.raises(ConnectionRejected) as exc:
                async with opener(url):
                    pass
            assert exc.value.status_code == 404

    # trio-websocket 0.12 alone leaks one socket per refusal (``open_websocket_url`` here
    # left 3): what open_stream works around. Not asserted, so that a release that fixes it
    # does not fail the suite; the workaround then finds nothing to close.
    assert _unclosed_sockets(partial(refused, open_stream)) == []

    async def client() -> None:  # the client's streams go through open_stream
        async with AsyncClient.websocket(gateway.ws_url) as c:
            for _ in range(3):
                with pytest.raises(InferenceError) as exc:
                    await c.infer("nope", {"INPUT": np.zeros((1, 4), np.float32)})
                assert exc.value.code == 404

    assert _unclosed_sockets(client) == []


def _open_to(port: int) -> int:
    """Client sockets on this host still open to ``port`` (established, or half-closed by the
    server: CLOSE_WAIT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                remote, state = line.split()[2], line.split()[3]
                count += int(remote.rsplit(":", 1)[1], 16) == port and state in ("01", "08")
    return count


async def _none_open_to(port: int) -> int:
    with trio.move_on_after(10):
        while _open_to(port):
            await trio.sleep(0.05)
    return _open_to(port)


def test_a_timed_out_stream_is_closed(gateway: RunningGateway) -> None:
    """A request the client stops waiting for drops its stream, and its connection."""
    port = int(gateway.ws_url.rsplit(":", 1)[1])
    x = np.zeros((1, 16), np.float32)

    async def main() -> None:
        async with AsyncClient.websocket(gateway.ws_url, wait_s=0.05) as client:
            with pytest.raises(InferenceError) as exc:
                await client.infer("slow", {"INPUT": x})  # 300 ms a batch
            assert exc.value.code == 503
            assert await _none_open_to(port) == 0

    trio.run(main)


def test_closing_the_blocking_client_ends_its_thread_and_streams(
        gateway: RunningGateway) -> None:
    port = int(gateway.ws_url.rsplit(":", 1)[1])
    threads = threading.active_count()
    for _ in range(5):  # closing raced the stream's own close: it hung now and then
        client = Client.websocket(gateway.ws_url)
        client.infer("running_sum", {"INPUT": np.ones((1, 4), np.float32)})
        client.infer("synthetic", {"INPUT": np.ones((1, 16), np.float32)})
        client.close()
        assert threading.active_count() <= threads
        assert trio.run(_none_open_to, port) == 0
