"""``--workers 2``: two data-plane processes sharing the port, each batching stateless
models itself and sending batches straight to the copies.

Real gateways, real clients (tritonclient, perf_analyzer, raw sockets): infers in JSON, in
the binary extension and through client shared memory; requests land on both processes;
statistics sum every process; a data-plane process killed under load costs only its own
clients their connections, is restarted, and leaks neither slots nor segments; SIGTERM
drains.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
import urllib3

from tests.conftest import TEST_MODELS, RunningGateway, child_pids, shm_names, start_gateway
from tests.test_perf_analyzer import WRAPPER, _run

BRIDGES = "2"


def bridge_pids(gw: RunningGateway) -> list[int]:
    return child_pids(gw.process.pid, b"bridges.dataplane")


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def http(method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    """One request on a connection of its own, closed before returning (no pooled socket
    outlives the test)."""
    with urllib3.PoolManager() as pool:
        return pool.request(method, url, timeout=30, retries=False, **kwargs)


def metric(gw: RunningGateway, line_prefix: str) -> float:
    """The value of the first /metrics line that starts with ``line_prefix`` (0 if none)."""
    text = http("GET", f"{gw.metrics_url}/metrics").data.decode()
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.split()[-1])
    return 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def stub_infer(client: httpclient.InferenceServerClient, seed: int, binary: bool = True
               ) -> None:
    image = np.random.default_rng(seed).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
    inp.set_data_from_numpy(image, binary_data=binary)
    out = httpclient.InferRequestedOutput("IMAGE", binary_data=binary)
    result = client.infer("stub", [inp], outputs=[out])
    np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)


@pytest.fixture
def client(bw_gateway: RunningGateway) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(bw_gateway.url) as c:
        yield c


@pytest.fixture(scope="module")
def bw_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("bridges"), TEST_MODELS, "--allow-client-shm",
                       "--workers", BRIDGES)
    try:
        yield gw
        assert gw.stop() == 0, gw.log()
        assert shm_names(gw.shm_prefix) == [], gw.log()
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def test_json_binary_and_metadata(bw_gateway: RunningGateway,
                                  client: httpclient.InferenceServerClient) -> None:
    assert len(bridge_pids(bw_gateway)) == 2
    assert client.is_server_ready()
    assert client.get_model_metadata("synthetic")["inputs"][0]["name"] == "INPUT"
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)  # v2 JSON both ways
    result = client.infer("synthetic", [inp], outputs=[
        httpclient.InferRequestedOutput("OUTPUT", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), x * 2 + 1)
    stub_infer(client, 1, binary=True)
    stub_infer(client, 2, binary=False)
    # A large output (over the inline limit) comes back through the worker's slot.
    big = np.random.default_rng(3).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    inp = httpclient.InferInput("IMAGE", list(big.shape), "UINT8")
    inp.set_data_from_numpy(big)
    np.testing.assert_array_equal(client.infer("stub", [inp]).as_numpy("IMAGE"), big)
    # Errors come from the bridge's own checks and from the core's, as in one process.
    bad = httpclient.InferInput("INPUT", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), np.float32))
    with pytest.raises(Exception, match="expected"):
        client.infer("synthetic", [bad])
    with pytest.raises(Exception, match="unknown model"):
        client.get_model_metadata("nope")


def test_client_shared_memory(bw_gateway: RunningGateway,
                              client: httpclient.InferenceServerClient) -> None:
    """Regions are registered with the core (a forwarded call); the bridges' requests name
    them, and the core resolves them."""
    image = np.random.default_rng(7).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    key_in, key_out = f"/bw-in-{os.getpid()}", f"/bw-out-{os.getpid()}"
    h_in = shm.create_shared_memory_region("bw_in", key_in, image.nbytes)
    h_out = shm.create_shared_memory_region("bw_out", key_out, image.nbytes)
    try:
        shm.set_shared_memory_region(h_in, [image])
        client.register_system_shared_memory("bw_in", key_in, image.nbytes)
        client.register_system_shared_memory("bw_out", key_out, image.nbytes)
        for _ in range(6):  # several connections: both processes serve some
            c = httpclient.InferenceServerClient(bw_gateway.url)
            inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
            inp.set_shared_memory("bw_in", image.nbytes)
            out = httpclient.InferRequestedOutput("IMAGE")
            out.set_shared_memory("bw_out", image.nbytes)
            result = c.infer("stub", [inp], outputs=[out])
            assert result.get_output("IMAGE")["shape"] == list(image.shape)
            got = shm.get_contents_as_numpy(h_out, np.uint8, list(image.shape))
            np.testing.assert_array_equal(got, image)
            c.close()
        client.unregister_system_shared_memory()
    finally:
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def test_requests_land_on_both_processes(bw_gateway: RunningGateway) -> None:
    def answered(worker: str) -> float:
        return metric(bw_gateway, f'inferoxy_dataplane_responses_total{{process="{worker}"}}')

    before = [answered("0"), answered("1")]

    def one(seed: int) -> None:  # a fresh connection each: the kernel spreads them
        c = httpclient.InferenceServerClient(bw_gateway.url)
        try:
            stub_infer(c, seed)
        finally:
            c.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(40)))
    # Processes report every 0.25 s.
    wait_for(lambda: answered("0") + answered("1") >= sum(before) + 40)
    assert answered("0") > before[0] and answered("1") > before[1]
    # One batcher per model: the core batched requests of both processes together.
    assert metric(bw_gateway, 'nv_inference_request_failure_total{model="stub"') == 0


def test_sequences_across_processes(bw_gateway: RunningGateway) -> None:
    """A sequence's frames, each on a new connection (so either process may take it), reach
    the one core in order: the running sums come out right."""
    def frame(seq: int, value: float, start: bool, end: bool) -> tuple[float, int]:
        params = {"sequence_id": seq, "sequence_start": start, "sequence_end": end}
        body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4],
                                       "data": [value] * 4}], "parameters": params})
        r = http("POST", f"{bw_gateway.http}/v2/models/running_sum/infer", body=body,
                 headers={"Content-Type": "application/json", "Connection": "close"})
        assert r.status == 200, r.data
        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
        return out["SUM"][0], out["COUNT"][0]

    def run(seq: int) -> list[tuple[float, int]]:
        return [frame(seq, float(k), k == 1, k == 10) for k in range(1, 11)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(7001, 7005)))
    for got in results:
        assert got == [(k * (k + 1) / 2, k) for k in range(1, 11)]


def test_unload_and_load_reach_the_bridges(bw_gateway: RunningGateway,
                                           client: httpclient.InferenceServerClient) -> None:
    """The routing table follows the repository: unloaded, the model is 404 in every process
    (not loaded); loaded again, it serves in every process."""
    def infer_status() -> int:
        body = json.dumps({"inputs": [{"name": "X", "datatype": "INT32", "shape": [1, 1],
                                       "data": [5]}]})
        return http("POST", f"{bw_gateway.http}/v2/models/faulty/infer", body=body,
                    headers={"Connection": "close"}).status

    assert infer_status() == 200
    client.unload_model("faulty")
    wait_for(lambda: all(infer_status() == 404 for _ in range(8)))
    assert not client.is_model_ready("faulty")
    client.load_model("faulty")
    wait_for(lambda: all(infer_status() == 200 for _ in range(8)))


@pytest.mark.timeout(120)
def test_perf_analyzer(bw_gateway: RunningGateway, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    image = [(i * 7 + 3) % 256 for i in range(32 * 32 * 3)]
    tensor = {"content": image, "shape": [32, 32, 3]}
    data.write_text(json.dumps({"data": [{"IMAGE": tensor}],
                                "validation_data": [{"IMAGE": tensor}]}))
    args = [str(WRAPPER), "-m", "stub", "-u", bw_gateway.url, "-i", "http",
            "--input-data", str(data), "--shape", "IMAGE:32,32,3",
            "--concurrency-range", "4:4", "--measurement-interval", "500",
            "--max-trials", "10", "--stability-percentage", "10000"]
    status, output, _ = _run(args, tmp_path, None, b"")
    assert status == 0, output
    assert "Throughput:" in output and "error" not in output.lower(), output


def _raw_infer(port: int, sock: socket.socket | None) -> tuple[socket.socket, bytes]:
    """One keep-alive v2 JSON infer on ``sock`` (a new connection if None); its status line."""
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 16],
                                   "data": [1.0] * 16}]}).encode()
    sock.sendall(b"POST /v2/models/synthetic/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                      if ln.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return sock, head.split(b"\r\n")[0]


@pytest.mark.timeout(120)
def test_killed_data_plane_process_costs_only_its_connections(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--workers", BRIDGES,
                       env={"SYNTHETIC_A_MS": "2"})
    try:
        port = int(gw.url.rsplit(":", 1)[1])
        victim, survivor = bridge_pids(gw)
        stop_at = time.monotonic() + 60

        def client(i: int) -> tuple[int, str]:
            """(answers, how it ended): each client keeps one connection until it breaks."""
            sock: socket.socket | None = None
            n = 0
            try:
                while time.monotonic() < stop_at and n < 120:
                    sock, status = _raw_infer(port, sock)
                    assert status == b"HTTP/1.1 200 OK", status
                    n += 1
                return n, "ok"
            except (ConnectionError, OSError) as exc:
                return n, f"broken: {exc!r}"
            finally:
                if sock is not None:
                    sock.close()

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client, i) for i in range(16)]
            wait_for(lambda: metric(gw, 'inferoxy_dataplane_responses_total{process="0"}')
                     + metric(gw, 'inferoxy_dataplane_responses_total{process="1"}') > 50)
            os.kill(victim, signal.SIGKILL)
            results = [f.result(timeout=90) for f in futures]
        broken = [r for r in results if r[1] != "ok"]
        whole = [r for r in results if r[1] == "ok"]
        assert broken, results  # the clients of the killed process lost their connections
        assert whole, results  # the others never noticed
        # The process is restarted (a new pid beside the survivor) and serves again.
        wait_for(lambda: len(bridge_pids(gw)) == 2 and victim not in bridge_pids(gw))
        assert survivor in bridge_pids(gw)
        assert "data-plane process 0" in gw.log() or "data-plane process 1" in gw.log()
        for _ in range(8):
            sock, status = _raw_infer(port, None)
            sock.close()
            assert status == b"HTTP/1.1 200 OK"
        # Nothing leaked: no slot in use anywhere, no segment of the dead process.
        wait_for(lambda: metric(gw, "inferoxy_shm_slots_in_use ") == 0)
        wait_for(lambda: not [n for n in shm_names(gw.shm_prefix)
                              if n.startswith(f"{gw.shm_prefix}-{victim}-")])
        assert gw.stop() == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def test_sigterm_drains_every_bridge(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--workers", BRIDGES)
    try:
        pids = bridge_pids(gw)
        assert len(pids) == 2

        def slow(value: float) -> np.ndarray:
            with httpclient.InferenceServerClient(gw.url, network_timeout=30) as c:
                inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
                inp.set_data_from_numpy(np.full((1, 16), value, dtype=np.float32))
                return c.infer("slow", [inp]).as_numpy("OUTPUT")

        def pending() -> float:
            return metric(gw, 'nv_inference_pending_request_count{model="slow"')

        def received() -> float:
            with httpclient.InferenceServerClient(gw.url) as c:
                stats = c.get_inference_statistics("slow")
            return stats["model_stats"][0]["inference_stats"]["success"]["count"] + pending()

        with ThreadPoolExecutor(2) as pool:  # slow: 300 ms each, a queue of two
            futures = [pool.submit(slow, float(i)) for i in range(2)]
            wait_for(lambda: received() == 2 and pending() > 0)
            gw.process.send_signal(signal.SIGTERM)
            for i, f in enumerate(futures):
                np.testing.assert_allclose(f.result(timeout=20), i * 2 + 1)
            assert gw.process.wait(timeout=30) == 0
        assert not any(running(p) for p in pids)
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def test_data_plane_processes_die_with_a_killed_core(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, TEST_MODELS, "--workers", BRIDGES)
    try:
        pids = bridge_pids(gw)
        gw.stop(signal.SIGKILL)
        wait_for(lambda: not any(running(p) for p in pids), timeout=10)
    finally:
        gw.cleanup()


# -- the core's book of a bridge's requests (gateway.intake), without processes ------------

def test_book_settles_each_request_once() -> None:
    from gateway.intake import BridgeBook
    from gateway.request import BatchOutputs, RequestResult

    released: list[str] = []
    book = BridgeBook(0, 1234, "ifx-1234-b-")
    assert book.open(1) is not None and book.open(1) is None  # an id is used once
    # Answered before its inputs were free (deadline passed mid-batch): FREE is due later.
    book.answered(1, None)
    assert not book.quiet and book.inputs_freed(1) is True
    assert book.quiet and book.in_flight == 0
    # Inputs free first (the usual order): the answer carries it; nothing to say later.
    book.open(2)
    assert book.inputs_freed(2) is False
    batch = BatchOutputs({}, 1, lambda: released.append("2"))
    book.answered(2, RequestResult({}, batch))  # a held (large) output
    assert book.in_flight == 1 and released == []
    book.done(2)
    book.done(2)  # a repeated DONE changes nothing
    assert released == ["2"] and book.in_flight == 0
    # The process dies: open requests are cancelled, held outputs released, once each.
    cancelled: list[int] = []
    entry = book.open(3)
    assert entry is not None
    entry.cancel = lambda: cancelled.append(3)
    book.open(4)
    book.inputs_freed(4)
    book.answered(4, RequestResult({}, BatchOutputs({}, 1, lambda: released.append("4"))))
    book.die()
    assert cancelled == [3] and released == ["2", "4"] and book.dead


def test_errors_cross_the_wire_with_their_status() -> None:
    from gateway.errors import DeadlineExceeded, InvalidArgument, PayloadTooLarge, Unavailable
    from gateway.intake import error_from_wire, error_to_wire

    for exc in (InvalidArgument("bad"), PayloadTooLarge("big"), DeadlineExceeded("late"),
                Unavailable("busy", retry_after_s=3)):
        back = error_from_wire(error_to_wire(exc))
        assert type(back) is type(exc) and back.message == exc.message
        assert back.http_status == exc.http_status
    busy = error_from_wire(error_to_wire(Unavailable("x", 3)))
    assert isinstance(busy, Unavailable) and busy.retry_after_s == 3
    assert error_from_wire(["Nope", "m", 1]).http_status == 500
    assert error_from_wire("garbage").http_status == 500


def test_segment_cache_locates_views_and_prunes_unlinked_segments() -> None:
    """What the core uses to send a large output as a descriptor (``locate``), and what
    bridges and workers use to unmap segments whose owner is gone (``prune``)."""
    from shm.segment import SegmentCache
    from shm.slab import SlabAllocator

    slab = SlabAllocator(f"ifxt{os.getpid()}-locate", limit_bytes=1 << 20,
                         segment_bytes=1 << 16)
    cache = SegmentCache()
    try:
        slot = slab.allocate(4096)
        slot.view("uint8", (4096,))[:] = np.arange(4096) % 251
        desc = slot.descriptor("uint8", (16, 256))
        rows = cache.view(desc)[3:5]  # a slice of a peer's slot, as the core splits batches
        found = cache.locate(rows)
        assert found is not None
        assert (found.segment, found.offset, found.shape) == (
            desc.segment, desc.offset + 3 * 256, (2, 256))
        np.testing.assert_array_equal(cache.view(found), rows)
        assert cache.locate(np.zeros(4)) is None  # not in shared memory
        del rows
        slab.close()  # the owner unlinks its segments
        assert desc.segment in cache
        cache.prune()
        assert desc.segment not in cache
    finally:
        cache.close()
        slab.close()


# -- batches from many producers, statistics, copies dying, gRPC -----------------------------

DATAPLANE_MODELS = Path(__file__).parent / "models_dataplanes.yaml"


@pytest.fixture(scope="module")
def probe_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("probe"), DATAPLANE_MODELS, "--workers", "2")
    try:
        yield gw
        assert gw.stop() == 0, gw.log()
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def probe(url: str, value: float) -> tuple[np.ndarray, int, int]:
    """One request on a connection of its own: (Y, the predict call, its rows)."""
    with httpclient.InferenceServerClient(url, network_timeout=30) as c:
        inp = httpclient.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(np.full((1, 4), value, dtype=np.float32))
        r = c.infer("probe", [inp])
        return r.as_numpy("Y"), int(r.as_numpy("CALL")[0, 0]), int(r.as_numpy("ROWS")[0, 0])


def test_copy_runs_batches_of_both_processes_as_one(probe_gateway: RunningGateway) -> None:
    """Each data-plane process batches on its own; the copy runs what waits as one predict,
    and every request still gets its own rows back."""
    gw = probe_gateway
    stats_url = f"http://{gw.url}/v2/models/probe/stats"
    before = json.loads(http("GET", stats_url).data)["model_stats"][0]["execution_count"]
    with ThreadPoolExecutor(16) as pool:  # 16 connections: the kernel spreads them over both
        results = list(pool.map(lambda i: probe(gw.url, float(i)), range(96)))
    for i, (y, _, _) in enumerate(results):
        np.testing.assert_array_equal(y, np.full((1, 4), 2.0 * i))  # its own rows, no other
    calls: dict[int, int] = {}
    for _, call, rows in results:
        calls[call] = rows
    assert sum(calls.values()) == 96  # every row ran once, in the call that said so

    def batches_sent() -> int:
        stats = json.loads(http("GET", stats_url).data)["model_stats"][0]
        return int(stats["execution_count"]) - int(before)

    # Statistics reach the control process within a report period.
    wait_for(lambda: json.loads(http("GET", stats_url).data)["model_stats"][0][
        "inference_count"] >= 96, timeout=5)
    # The processes sent more batches than the copy ran predict calls: some ran together.
    assert batches_sent() > len(calls), (batches_sent(), calls)
    assert max(calls.values()) <= 8  # never more than the model's batch size


def test_statistics_and_metrics_sum_every_process(probe_gateway: RunningGateway) -> None:
    gw = probe_gateway
    port = int(gw.url.rsplit(":", 1)[1])
    with httpclient.InferenceServerClient(gw.url) as c:
        before = c.get_inference_statistics("synthetic")["model_stats"][0]
    for _ in range(24):  # a connection each: both processes serve some
        sock, status = _raw_infer(port, None)
        sock.close()
        assert status == b"HTTP/1.1 200 OK"

    def counted() -> bool:
        with httpclient.InferenceServerClient(gw.url) as c:
            now = c.get_inference_statistics("synthetic")["model_stats"][0]
        return (now["inference_stats"]["success"]["count"]
                - before["inference_stats"]["success"]["count"]) == 24

    wait_for(counted, timeout=5)
    assert metric(gw, 'nv_inference_request_success_total{model="synthetic"') >= 24
    assert metric(gw, 'inferoxy_dataplane_responses_total{process="0"}') > 0
    assert metric(gw, 'inferoxy_dataplane_responses_total{process="1"}') > 0


def test_grpc_on_every_process(probe_gateway: RunningGateway) -> None:
    """gRPC infer on many connections (both processes), and what they forward: metadata,
    statistics, errors with their status."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    gw = probe_gateway
    for i in range(12):
        with grpcclient.InferenceServerClient(gw.grpc_url) as c:
            inp = grpcclient.InferInput("INPUT", [1, 16], "FP32")
            inp.set_data_from_numpy(np.full((1, 16), float(i), dtype=np.float32))
            np.testing.assert_allclose(c.infer("synthetic", [inp]).as_numpy("OUTPUT"),
                                       2.0 * i + 1)
            assert c.get_model_metadata("probe").name == "probe"
            assert c.is_server_ready()
            with pytest.raises(InferenceServerException, match=r"NOT_FOUND|unknown model"):
                c.get_model_metadata("nothing-here")
    with grpcclient.InferenceServerClient(gw.grpc_url) as c:
        stats = c.get_inference_statistics("synthetic", as_json=True)
        assert int(stats["model_stats"][0]["inference_count"]) >= 12


def test_copy_killed_under_load_loses_no_request(tmp_path: Path) -> None:
    """Both processes send batches straight to the copy; it is killed twice under load: every
    request is answered once, correctly (the batches it ran are retried by their producer)."""
    gw = start_gateway(tmp_path, DATAPLANE_MODELS, "--workers", "2")

    def copy_pids() -> list[int]:
        return child_pids(gw.process.pid, b"worker", b"synthetic")

    try:
        answers: dict[int, float] = {}

        def one(i: int) -> None:
            with httpclient.InferenceServerClient(gw.url, network_timeout=60) as c:
                inp = httpclient.InferInput("INPUT", [1, 16], "FP32")
                inp.set_data_from_numpy(np.full((1, 16), float(i), dtype=np.float32))
                out = c.infer("synthetic", [inp]).as_numpy("OUTPUT")
                answers[i] = float(out[0, 0])

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(400)]
            for seen in (60, 160):
                wait_for(lambda n=seen: len(answers) > n)  # type: ignore[misc]
                victim = copy_pids()
                assert len(victim) == 1, victim
                os.kill(victim[0], signal.SIGKILL)
                wait_for(lambda v=victim: copy_pids() not in ([], v))  # type: ignore[misc]
            for f in futures:
                f.result(timeout=120)
        assert answers == {i: 2.0 * i + 1 for i in range(400)}
        assert gw.stop() == 0, gw.log()
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()
