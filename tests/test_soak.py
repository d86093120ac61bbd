"""Soak: mixed traffic over every bridge at once while model copies are SIGKILLed at random.

A gateway serves two copies of the stub and two of a stateful model. For ``SOAK_S`` seconds
(``INFEROXY_SOAK_S``, default 60) clients send, each request with an id of its own:

* HTTP (v2 JSON and the binary extension) and gRPC to the stub, from two threads each;
* WebSocket streams to the stateful model (a sequence per stream, reopened when it ends or
  its copy died);
* ZeroMQ to the stub, a few requests in flight;

while a killer SIGKILLs a random copy every 2-5 s. At the end:

* requests sent = responses received, per bridge, by request id (success or a typed error:
  a killed copy may fail a sequence, never lose an answer), and the gateway's own count of
  answers per bridge (``inferoxy_bridge_responses_total``) says the same;
* no slot or segment leaked: ``inferoxy_shm_slots_in_use`` is back to 0, every /dev/shm
  entry of the gateway's prefix belongs to the gateway or a live copy, none after it stops;
* the gateway's RSS is flat after warm-up: a leak detector, not a timing assert (the second
  half's median must stay within a generous bound of the first half's).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import trio
import tritonclient.grpc as grpcclient
import urllib3
import zmq
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed
from tritonclient.utils import InferenceServerException

from inferoxy.client.websocket import open_stream
from inferoxy.protocol import zmq_message
from inferoxy.protocol.websocket import decode_reply, encode_frame
from tests.conftest import ROOT, RunningGateway, child_pids, shm_names, start_gateway
from tests.fuzzing import assert_no_leak, assert_still_serving
from tests.test_lifecycle_e2e import _worker_pids

MODELS = ROOT / "tests" / "models_soak.yaml"
SOAK_S = float(os.environ.get("INFEROXY_SOAK_S", "60"))
WARMUP_FRACTION = 0.25  # RSS samples of the first quarter are warm-up
RSS_SLACK = 1.25  # second half's median RSS <= first half's x this + RSS_SLACK_MB
RSS_SLACK_MB = 40


@dataclass
class Ledger:
    """Ids sent and answered by one bridge's clients (thread-safe)."""

    sent: set[str] = field(default_factory=set)
    answered: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, rid: str) -> None:
        with self.lock:
            assert rid not in self.sent
            self.sent.add(rid)

    def answer(self, rid: str, outcome: str) -> None:
        with self.lock:
            self.answered[rid] += 1
            self.outcomes[outcome] += 1


def _image(i: int) -> np.ndarray:
    return np.full((1, 4, 4, 3), i % 251, np.uint8)


def http_client(gw: RunningGateway, ledger: Ledger, name: str, stop: threading.Event) -> None:
    pool = urllib3.PoolManager(maxsize=1)
    i = 0
    while not stop.is_set():
        i += 1
        rid = f"{name}-{i}"
        image = _image(i)
        if i % 2:  # v2 JSON
            doc = {"id": rid, "inputs": [{"name": "IMAGE", "datatype": "UINT8",
                                          "shape": list(image.shape),
                                          "data": image.reshape(-1).tolist()}]}
            body, headers = orjson.dumps(doc), {"Content-Type": "application/json"}
        else:  # the binary extension
            doc = {"id": rid, "parameters": {"binary_data_output": True},
                   "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": list(image.shape),
                               "parameters": {"binary_data_size": image.nbytes}}]}
            head = orjson.dumps(doc)
            body = head + image.tobytes()
            headers = {"Inference-Header-Content-Length": str(len(head))}
        ledger.send(rid)
        r = pool.request("POST", f"{gw.http}/v2/models/stub/infer", body=body,
                         headers=headers, timeout=60, retries=False)
        if r.status == 200 and i % 2:
            answer = json.loads(r.data)
            assert answer["id"] == rid, answer
            assert answer["outputs"][0]["data"] == image.reshape(-1).tolist()
        elif r.status == 200:
            n = int(r.headers["Inference-Header-Content-Length"])
            assert json.loads(r.data[:n])["id"] == rid
            assert r.data[n:] == image.tobytes()
        else:
            assert isinstance(json.loads(r.data)["error"], str), r.data
        ledger.answer(rid, str(r.status))
    pool.clear()


def grpc_client(gw: RunningGateway, ledger: Ledger, name: str, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    try:
        i = 0
        while not stop.is_set():
            i += 1
            rid = f"{name}-{i}"
            image = _image(i)
            inp = grpcclient.InferInput("IMAGE", list(image.shape), "UINT8")
            inp.set_data_from_numpy(image)
            ledger.send(rid)
            try:
                result = client.infer("stub", [inp], request_id=rid, client_timeout=60)
            except InferenceServerException as exc:
                assert exc.status() != "StatusCode.DEADLINE_EXCEEDED", exc  # no lost answer
                ledger.answer(rid, str(exc.status()))
                continue
            assert result.get_response().id == rid
            np.testing.assert_array_equal(result.as_numpy("IMAGE"), image)
            ledger.answer(rid, "OK")
    finally:
        client.close()


def ws_client(gw: RunningGateway, ledger: Ledger, name: str, stop: threading.Event) -> None:
    """Streams of up to 30 frames to the stateful model, 4 frames in flight."""

    async def stream(n: int) -> None:
        url = f"{gw.ws_url}/v2/models/running_sum/stream?sequence_id={name}-s{n}"
        async with open_stream(url) as ws:
            ids = [f"{name}-s{n}-f{k}" for k in range(30)]
            pending: list[str] = []
            sent = 0
            while (sent < len(ids) and not stop.is_set()) or pending:
                while sent < len(ids) and len(pending) < 4 and not stop.is_set():
                    rid = ids[sent]
                    header = {"id": rid, "inputs": [
                        {"name": "INPUT", "datatype": "FP32", "shape": [1, 4]}]}
                    if sent == len(ids) - 1:
                        header["end"] = True
                    ledger.send(rid)
                    await ws.send_message(encode_frame(header, [np.ones((1, 4), np.float32)]))
                    pending.append(rid)
                    sent += 1
                with trio.fail_after(60):
                    reply, arrays = decode_reply(await ws.get_message())
                rid = pending.pop(0)
                assert reply["id"] == rid, (reply, rid)  # in order, one each
                if "error" in reply:
                    ledger.answer(rid, str(reply["code"]))
                else:
                    ledger.answer(rid, "200")
                    assert int(arrays["COUNT"][0, 0]) >= 1

    async def main() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await stream(n)
            except ConnectionClosed:
                raise AssertionError("the gateway closed a stream") from None

    trio.run(main)


def zmq_client(gw: RunningGateway, ledger: Ledger, name: str, stop: threading.Event) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(gw.zmq_url)
    try:
        i = 0
        inflight = 0
        while not stop.is_set() or inflight:
            while inflight < 4 and not stop.is_set():
                i += 1
                rid = f"{name}-{i}"
                ledger.send(rid)
                images = np.concatenate([_image(i), _image(i + 1)])  # two rows per message
                sock.send_multipart(zmq_message.encode_request({"model": "stub", "id": rid},
                                                        {"IMAGE": images}))
                inflight += 1
            assert sock.poll(60_000), "a ZeroMQ request got no reply"
            header, outputs = zmq_message.decode_reply(sock.recv_multipart())
            inflight -= 1
            if header["status"] == "ok":
                assert outputs is not None and outputs["IMAGE"].shape == (2, 4, 4, 3)
                ledger.answer(str(header["id"]), "ok")
            else:
                ledger.answer(str(header["id"]), str(header["code"]))
    finally:
        sock.close(linger=0)
        context.term()


def killer(gw: RunningGateway, kills: list[int], stop: threading.Event) -> None:
    rng = random.Random(20261126)
    while not stop.wait(rng.uniform(2.0, 5.0)):
        pids = _worker_pids(gw.process.pid, rng.choice(["stub", "running_sum"]))
        if pids:
            victim = rng.choice(pids)
            try:
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)
            except ProcessLookupError:
                pass


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def bridge_answers(gw: RunningGateway) -> dict[str, float]:
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    totals: dict[str, float] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "inferoxy_bridge_responses":
            for s in family.samples:
                if s.name.endswith("_total"):
                    totals[s.labels["bridge"]] += s.value
    return dict(totals)


def foreign_segments(gw: RunningGateway) -> list[str]:
    """/dev/shm entries of the gateway's prefix that belong to no live process of it."""
    live = set(_worker_pids(gw.process.pid, "stub") + _worker_pids(gw.process.pid,
                                                                     "running_sum"))
    own = f"{gw.shm_prefix}-{gw.process.pid}-"
    planes = tuple(f"{gw.shm_prefix}-{pid}-" for pid in  # data-plane processes' slabs
                   child_pids(gw.process.pid, b"-m", b"bridges.dataplane"))
    stray = []
    for name in shm_names(gw.shm_prefix):
        rest = name.removeprefix(own)
        if rest == name and not name.startswith(planes):
            stray.append(name)  # another (dead) gateway's: swept at start, never made here
        elif rest.startswith("w"):
            pid = int(rest[1:].split("-")[0])
            if pid not in live:
                stray.append(name)
    return stray


def test_soak_every_bridge_with_copies_killed(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, MODELS, "--heartbeat-timeout-s", "3",
                       "--crash-loop-exits", "1000")
    try:
        ledgers = {b: Ledger() for b in ("rest", "grpc", "ws", "zmq")}
        stop = threading.Event()
        kills: list[int] = []
        clients: list[tuple[Callable[..., None], str, str]] = [
            (http_client, "rest", "h1"), (http_client, "rest", "h2"),
            (grpc_client, "grpc", "g1"), (grpc_client, "grpc", "g2"),
            (ws_client, "ws", "w1"), (zmq_client, "zmq", "z1"),
        ]
        errors: list[BaseException] = []

        def guarded(fn: Callable[..., None], *args: object) -> None:
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=guarded, args=(fn, gw, ledgers[b], name, stop),
                                    daemon=True) for fn, b, name in clients]
        threads.append(threading.Thread(target=guarded, args=(killer, gw, kills, stop),
                                        daemon=True))
        for t in threads:
            t.start()
        rss: list[int] = []
        deadline = time.monotonic() + SOAK_S
        while time.monotonic() < deadline and not stop.is_set():
            rss.append(rss_kib(gw.process.pid))
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=90)
            assert not t.is_alive(), "a client did not finish"
        assert not errors, errors

        counted = bridge_answers(gw)
        for bridge, ledger in ledgers.items():
            assert ledger.sent, f"{bridge}: nothing was sent"
            assert set(ledger.answered) == ledger.sent, (
                f"{bridge}: {len(ledger.sent - set(ledger.answered))} request(s) unanswered")
            assert max(ledger.answered.values()) == 1, f"{bridge}: a request answered twice"
            assert counted.get(bridge, 0) == len(ledger.sent), (bridge, counted, len(ledger.sent))
            print(f"{bridge}: {len(ledger.sent)} requests, outcomes {dict(ledger.outcomes)}")
        assert ledgers["rest"].outcomes["200"] and ledgers["grpc"].outcomes["OK"]
        assert ledgers["ws"].outcomes["200"] and ledgers["zmq"].outcomes["ok"]
        assert len(kills) >= 3, kills
        print(f"copies killed: {len(kills)}")

        assert_no_leak(gw)
        deadline = time.monotonic() + 15  # a killed copy's slab goes when its exit is seen
        while (stray := foreign_segments(gw)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not stray, stray

        settled = rss[int(len(rss) * WARMUP_FRACTION):]
        first, second = settled[: len(settled) // 2], settled[len(settled) // 2:]
        m1, m2 = statistics.median(first), statistics.median(second)
        print(f"gateway RSS: {m1 / 1024:.1f} MiB -> {m2 / 1024:.1f} MiB (median, after warm-up)")
        assert m2 <= m1 * RSS_SLACK + RSS_SLACK_MB * 1024, (m1, m2)

        assert_still_serving(gw)
        assert gw.stop() == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()[-5000:]
    finally:
        gw.cleanup()
