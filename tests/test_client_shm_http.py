"""System shared memory over HTTP: clients' own regions, with unmodified tritonclient."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.conftest import TEST_MODELS, RunningGateway, start_gateway


@pytest.fixture(scope="module")
def shm_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("shm"), TEST_MODELS, "--allow-client-shm")
    try:
        yield gw
        assert gw.stop() == 0, gw.log()
    finally:
        gw.cleanup()


@pytest.fixture
def client(shm_gateway: RunningGateway) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(shm_gateway.url)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions() -> Iterator[list[object]]:
    handles: list[object] = []
    yield handles
    for h in handles:
        shm.destroy_shared_memory_region(h)


def _region(regions: list[object], name: str, key: str, size: int) -> object:
    handle = shm.create_shared_memory_region(name, key, size)
    regions.append(handle)
    return handle


def _no_leak(exc: InferenceServerException, *secrets: str) -> None:
    text = str(exc)
    assert "/dev/shm" not in text
    for s in secrets:
        assert s not in text, text


def test_inputs_and_outputs_in_regions(client: httpclient.InferenceServerClient,
                                       regions: list[object]) -> None:
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    h_in = _region(regions, "in", "/ifxclient_in", x.nbytes)
    h_out = _region(regions, "out", "/ifxclient_out", x.nbytes)
    shm.set_shared_memory_region(h_in, [x])
    client.register_system_shared_memory("in", "/ifxclient_in", x.nbytes)
    client.register_system_shared_memory("out", "/ifxclient_out", x.nbytes)
    status = client.get_system_shared_memory_status()
    assert {r["name"] for r in status} == {"in", "out"}
    assert client.get_system_shared_memory_status("in") == [
        {"name": "in", "key": "/ifxclient_in", "offset": 0, "byte_size": x.nbytes}]

    inp = httpclient.InferInput("INPUT", [2, 16], "FP32")
    inp.set_shared_memory("in", x.nbytes)
    out = httpclient.InferRequestedOutput("OUTPUT", binary_data=True)
    out.set_shared_memory("out", x.nbytes)
    result = client.infer("synthetic", [inp], outputs=[out])
    meta = result.get_output("OUTPUT")
    assert meta["shape"] == [2, 16]
    assert "data" not in meta and "parameters" not in meta  # no tensor data, as Triton does
    got = shm.get_contents_as_numpy(h_out, np.float32, [2, 16])
    np.testing.assert_allclose(got, x * 2 + 1)

    # Inputs in a region, output in the response, at an offset inside the region.
    both = _region(regions, "both", "/ifxclient_both", 4096)
    shm.set_shared_memory_region(both, [x[:1]], offset=1024)
    client.register_system_shared_memory("both", "/ifxclient_both", 2048, offset=0)
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_shared_memory("both", 64, offset=1024)
    result = client.infer("synthetic", [inp])
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x[:1] * 2 + 1)

    client.unregister_system_shared_memory("in")
    assert {r["name"] for r in client.get_system_shared_memory_status()} == {"out", "both"}


def test_batch_of_region_requests(shm_gateway: RunningGateway, regions: list[object]) -> None:
    """Concurrent requests, each with its own input and output region, batch together and
    each gets its own rows."""
    from concurrent.futures import ThreadPoolExecutor

    c = httpclient.InferenceServerClient(shm_gateway.url)
    for i in range(8):
        h_in = _region(regions, f"bin{i}", f"/ifxclient_bin{i}", 64)
        _region(regions, f"bout{i}", f"/ifxclient_bout{i}", 64)
        shm.set_shared_memory_region(h_in, [np.full((1, 16), i, np.float32)])
        c.register_system_shared_memory(f"bin{i}", f"/ifxclient_bin{i}", 64)
        c.register_system_shared_memory(f"bout{i}", f"/ifxclient_bout{i}", 64)

    def one(i: int) -> None:
        cl = httpclient.InferenceServerClient(shm_gateway.url)
        inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
        inp.set_shared_memory(f"bin{i}", 64)
        out = httpclient.InferRequestedOutput("OUTPUT")
        out.set_shared_memory(f"bout{i}", 64)
        for _ in range(5):
            cl.infer("synthetic", [inp], outputs=[out])
        cl.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    for i in range(8):
        got = shm.get_contents_as_numpy(regions[2 * i + 1], np.float32, [1, 16])
        np.testing.assert_allclose(got, np.full((1, 16), i * 2 + 1))
    c.unregister_system_shared_memory()
    c.close()


def test_hostile_registrations(client: httpclient.InferenceServerClient,
                               shm_gateway: RunningGateway, regions: list[object]) -> None:
    _region(regions, "small", "/ifxclient_small", 128)
    own = f"/{shm_gateway.shm_prefix}-1-g-0"
    cases = [
        ("a", "/../etc/passwd", 64, 0, "key must be"),
        ("b", "/ifxclient//small", 64, 0, "key must be"),
        ("c", "/" + "k" * 300, 64, 0, "key must be"),
        ("d", own, 64, 0, "server's own"),
        ("e", "/ifxclient_small", 256, 0, "exceeds the segment"),
        ("f", "/ifxclient_small", 64, 100, "exceeds the segment"),
        ("g", "/ifxclient_missing", 64, 0, "does not exist"),
    ]
    for name, key, size, offset, message in cases:
        with pytest.raises(InferenceServerException, match=message) as exc:
            client.register_system_shared_memory(name, key, size, offset=offset)
        assert exc.value.status() == "400"
        _no_leak(exc.value, key.strip("/") if len(key) < 100 else "kkkk")
    client.register_system_shared_memory("ok", "/ifxclient_small", 128)
    with pytest.raises(InferenceServerException, match="already registered"):
        client.register_system_shared_memory("ok", "/ifxclient_small", 128)
    with pytest.raises(InferenceServerException, match="no region named") as exc:
        client.get_system_shared_memory_status("nope")
    assert exc.value.status() == "404"


def test_hostile_uses(client: httpclient.InferenceServerClient,
                      regions: list[object]) -> None:
    h = _region(regions, "use", "/ifxclient_use", 64)
    shm.set_shared_memory_region(h, [np.ones((1, 16), np.float32)])
    client.register_system_shared_memory("use", "/ifxclient_use", 64)

    def infer_err(region: str, size: int, offset: int = 0) -> InferenceServerException:
        x = httpclient.InferInput("INPUT", [1, 16], "FP32")  # (a set offset is sticky)
        x.set_shared_memory(region, size, offset=offset)
        with pytest.raises(InferenceServerException) as exc:
            client.infer("synthetic", [x])
        _no_leak(exc.value, "ifxclient_use")
        return exc.value

    assert "no region named 'zzz'" in str(infer_err("zzz", 64))
    assert "exceeds the region" in str(infer_err("use", 64, offset=8))
    assert "the tensor takes 64" in str(infer_err("use", 32))
    # A client shrinks its segment after registering: an error for that request, and the
    # gateway and the worker keep serving.
    fd = os.open("/dev/shm/ifxclient_use", os.O_RDWR)
    os.ftruncate(fd, 16)
    os.close(fd)
    err = infer_err("use", 64)
    assert err.status() == "400" and "smaller" in str(err)
    fd = os.open("/dev/shm/ifxclient_use", os.O_RDWR)
    os.ftruncate(fd, 64)
    os.close(fd)
    shm.set_shared_memory_region(h, [np.ones((1, 16), np.float32)])
    x = httpclient.InferInput("INPUT", [1, 16], "FP32")
    x.set_shared_memory("use", 64)
    np.testing.assert_allclose(client.infer("synthetic", [x]).as_numpy("OUTPUT"), 3.0)
    # An output region too small for the output: that request fails, clearly.
    out = httpclient.InferRequestedOutput("OUTPUT")
    _region(regions, "tiny", "/ifxclient_tiny", 64)
    client.register_system_shared_memory("tiny", "/ifxclient_tiny", 32)
    out.set_shared_memory("tiny", 32)
    with pytest.raises(InferenceServerException, match="takes 64 bytes") as exc:
        client.infer("synthetic", [x], outputs=[out])
    _no_leak(exc.value, "ifxclient_tiny")


def test_disabled_by_default(gateway: RunningGateway, regions: list[object]) -> None:
    c = httpclient.InferenceServerClient(gateway.url)
    _region(regions, "x", "/ifxclient_x", 64)
    with pytest.raises(InferenceServerException, match="--allow-client-shm") as exc:
        c.register_system_shared_memory("x", "/ifxclient_x", 64)
    assert exc.value.status() == "403"
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_shared_memory("x", 64)
    with pytest.raises(InferenceServerException, match="disabled"):
        c.infer("synthetic", [inp])
    assert "system_shared_memory" not in c.get_server_metadata()["extensions"]


def test_repository_over_http(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path)
    try:
        c = httpclient.InferenceServerClient(gw.url)
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["stub"]["state"] == "READY"
        c.unload_model("stub")
        assert not c.is_model_ready("stub")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["stub"]["state"] == "UNAVAILABLE"
        img = np.zeros((1, 4, 4, 3), np.uint8)
        inp = httpclient.InferInput("IMAGE", [1, 4, 4, 3], "UINT8")
        inp.set_data_from_numpy(img)
        with pytest.raises(InferenceServerException, match="not loaded") as exc:
            c.infer("stub", [inp])
        assert exc.value.status() == "404"
        c.load_model("stub")
        assert c.is_model_ready("stub")
        np.testing.assert_array_equal(c.infer("stub", [inp]).as_numpy("IMAGE"), img)
        with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
            c.load_model("nope")
        assert gw.stop() == 0
    finally:
        gw.cleanup()
