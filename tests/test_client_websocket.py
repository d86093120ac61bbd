"""inferoxy.client over the WebSocket bridge: the same idiom as REST, gRPC and ZeroMQ."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from inferoxy.client import AsyncClient, Client, InferenceError
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
