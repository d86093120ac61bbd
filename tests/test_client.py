"""``inferoxy.client``: one idiom over REST, gRPC and ZeroMQ, blocking and Trio."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

import numpy as np
import pytest
import trio

from inferoxy.client import AsyncClient, Client, InferenceError
from tests.conftest import RunningGateway

PROTOCOLS = ["http", "grpc", "zmq"]


def _url(gateway: RunningGateway, protocol: str) -> str:
    return {"http": gateway.url, "grpc": gateway.grpc_url, "zmq": gateway.zmq_url}[protocol]


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, gateway: RunningGateway) -> Iterator[Client]:
    protocol = request.param
    with getattr(Client, protocol)(_url(gateway, protocol)) as c:
        yield c


def images(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def echo_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "IMAGE": images(n, 8, 5, seed),
        "VEC": rng.standard_normal((n, 16)).astype(np.float32),
        "IDX": rng.integers(-1000, 1000, (n, 2, 2), dtype=np.int32),
        "FLAG": rng.integers(0, 2, (n, 3)).astype(np.bool_),
        "SCALAR": rng.standard_normal(n),
    }


def test_round_trip_of_many_dtypes(client: Client) -> None:
    sent = echo_inputs(3, seed=1)
    got = client.infer("echo", sent)
    assert set(got) == set(sent)
    for name, array in sent.items():
        assert got[name].dtype == array.dtype, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_values_version_and_timeout(client: Client) -> None:
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    for version in (None, 1, "1"):
        out = client.infer("synthetic", {"INPUT": x}, version=version, timeout=10.0)
        np.testing.assert_allclose(out["OUTPUT"], x * 2 + 1)


def test_errors_are_typed(client: Client) -> None:
    x = np.ones((1, 16), dtype=np.float32)
    with pytest.raises(InferenceError) as info:
        client.infer("nope", {"INPUT": x})
    assert info.value.code == 404
    with pytest.raises(InferenceError) as info:
        client.infer("synthetic", {"INPUT": x}, version=9)
    assert info.value.code == 404
    with pytest.raises(InferenceError) as info:
        client.infer("synthetic", {"INPUT": x.astype(np.float64)})
    assert info.value.code == 400 and "FP32" in info.value.message
    with pytest.raises(InferenceError) as info:  # faulty, mode 2: a wrong output dtype
        client.infer("faulty", {"X": np.full((1, 2), 2, np.int32)})
    assert info.value.code == 500 and "declared INT32" in info.value.message
    with pytest.raises(InferenceError) as info:
        client.infer("slow", {"INPUT": x}, timeout=0.05)
    assert info.value.code == 504
    np.testing.assert_allclose(client.infer("synthetic", {"INPUT": x})["OUTPUT"], x * 3)


def test_infer_many_keeps_row_order(client: Client) -> None:
    sent = images(150, 16, 16, seed=3)
    sent[:, 0, 0, 0] = np.arange(150) % 256
    got = client.infer_many("stub", {"IMAGE": sent}, rows_per_request=8, window=4)
    np.testing.assert_array_equal(got["IMAGE"], sent)


def test_zmq_infer_many_splits_beyond_batch_size(gateway: RunningGateway) -> None:
    sent = images(300, 64, 64, seed=4)  # requests of 64 rows; the stub batches 8
    with Client.zmq(gateway.zmq_url) as client:
        got = client.infer_many("stub", {"IMAGE": sent}, rows_per_request=64, window=8)
        np.testing.assert_array_equal(got["IMAGE"], sent)
        with pytest.raises(InferenceError) as info:
            client.infer_many("faulty", {"X": np.full((12, 2), 2, np.int32)},
                              rows_per_request=4)
        assert info.value.code == 500
        # the failed call's stray replies do not confuse the next one
        np.testing.assert_array_equal(client.infer("stub", {"IMAGE": sent[:5]})["IMAGE"],
                                      sent[:5])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client(gateway: RunningGateway, protocol: str) -> None:
    url = _url(gateway, protocol)
    batches = {i: images(1 + i % 4, 16, 8 + i, seed=i) for i in range(12)}
    many = images(100, 16, 16, seed=99)

    async def main() -> None:
        async with getattr(AsyncClient, protocol)(url) as client:
            got: dict[int, np.ndarray] = {}

            async def one(i: int) -> None:
                got[i] = (await client.infer("stub", {"IMAGE": batches[i]}))["IMAGE"]

            async with trio.open_nursery() as nursery:  # all in flight together
                for i in batches:
                    nursery.start_soon(one, i)
            for i, array in batches.items():
                np.testing.assert_array_equal(got[i], array)

            out = await client.infer_many("stub", {"IMAGE": many}, rows_per_request=16,
                                          window=4)
            np.testing.assert_array_equal(out["IMAGE"], many)
            with pytest.raises(InferenceError) as info:
                await client.infer("nope", {"IMAGE": many[:1]})
            assert info.value.code == 404
            with pytest.raises(InferenceError) as info:
                await client.infer_many("faulty", {"X": np.full((8, 2), 2, np.int32)},
                                        rows_per_request=2)
            assert info.value.code == 500

    trio.run(main)


def _open_fds() -> list[str]:
    gc.collect()
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(fds)


@pytest.mark.parametrize("protocol", [*PROTOCOLS, "websocket"])
def test_a_closed_client_leaves_nothing_open(gateway: RunningGateway, protocol: str) -> None:
    """Open, use and close each client a few times: no socket, epoll or pipe stays behind (an
    AsyncClient.http thread's gevent hub did; so did a blocking WebSocket client's thread)."""
    url = {"websocket": gateway.ws_url}.get(protocol) or _url(gateway, protocol)
    x = np.ones((1, 16), np.float32)

    async def trio_round() -> None:
        async with getattr(AsyncClient, protocol)(url) as client:
            await client.infer("synthetic", {"INPUT": x})

    def rounds() -> None:
        with getattr(Client, protocol)(url) as client:
            client.infer("synthetic", {"INPUT": x})
        trio.run(trio_round)

    rounds()  # the first makes what a process keeps (e.g. this thread's gevent hub)
    before = _open_fds()
    for _ in range(3):
        rounds()
    assert _open_fds() == before
