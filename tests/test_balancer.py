"""Two gateways (127.0.0.2 and 127.0.0.3) share one redis-server, behind a real HAProxy that
health-checks ``/v2/health/ready``. Under steady load through HAProxy: SIGTERM one (it drains,
traffic moves, nothing fails), start it again, add a model through one gateway's management
API (both serve it), SIGKILL the other (only requests in flight on it fail; the client retries
them and loses none). The test prints sent, answered, failed and retried."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.conftest import ROOT, RunningGateway, child_pids, free_port, start_gateway
from tests.redis_server import RedisServer

MODELS = ROOT / "tests" / "models_registry.yaml"
HOSTS = ("127.0.0.2", "127.0.0.3")
CLIENTS = 6
GRACE_S = "1.0"  # --drain-grace-s: longer than HAProxy takes to see "not ready" (2 x 100 ms)

HAPROXY_CFG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    option http-server-close
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
frontend v2
    bind 127.0.0.1:{front}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk
    http-check send meth GET uri /v2/health/ready
    http-check expect status 200
    default-server inter 100 fall 2 rise 2
    server g2 {h2}:{p2} check
    server g3 {h3}:{p3} check
"""


def haproxy_binary() -> str:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.fail("haproxy is not installed: apt-get install -y haproxy", pytrace=False)
    return binary


class HAProxy:
    def __init__(self, workdir: Path, servers: list[str]) -> None:
        self.front, self.stats = free_port(), free_port()
        (h2, p2), (h3, p3) = (s.split(":") for s in servers)
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(stats=self.stats, front=self.front, h2=h2, p2=p2,
                                          h3=h3, p3=p3))
        self.log = workdir / "haproxy.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(cfg)],
                                            stdout=out, stderr=subprocess.STDOUT)

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each gateway: status (UP/DOWN), 2xx answers, ..."""
        r = urllib3.request("GET", f"http://127.0.0.1:{self.stats}/stats;csv", timeout=5)
        rows = csv.DictReader(io.StringIO(r.data.decode().lstrip("# ")))
        return {row["svname"]: row for row in rows
                if row["pxname"] == "gateways" and row["svname"] in ("g2", "g3")}

    def wait(self, name: str, state: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.servers()[name]["status"].startswith(state):
                    return
            except (urllib3.exceptions.HTTPError, KeyError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"HAProxy never saw {name} {state}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=10)


class Load:
    """CLIENTS threads inferring through HAProxy; a failed attempt (connection error, or the
    balancer's 502/503 for a gateway gone under it) is counted and retried, up to 5 times."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.sent = 0
        self.answered: Counter[str] = Counter()
        self.failed: list[tuple[str, str, str]] = []  # (phase, request id, why)
        self.retried = 0
        self.lost: list[str] = []
        self.phase = "warm-up"
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(CLIENTS)]

    def _client(self, n: int) -> None:
        http = urllib3.PoolManager(maxsize=1)
        i = 0
        while not self.stop.is_set() and i < 20_000:
            i += 1
            rid = f"c{n}-{i}"
            body = json.dumps({"id": rid, "inputs": [{"name": "X", "datatype": "FP32",
                                                      "shape": [1, 4], "data": [i, 1, 2, 3]}]})
            with self._lock:
                self.sent += 1
            for attempt in range(5):
                try:
                    r = http.request("POST", f"{self.url}/v2/models/scaled/infer",
                                     body=body.encode(), timeout=20, retries=False)
                    why = "" if r.status == 200 else f"{r.status} {r.data[:200]!r}"
                    if not why:
                        doc = json.loads(r.data)
                        assert doc["id"] == rid and doc["outputs"][0]["data"][0] == float(i)
                except urllib3.exceptions.HTTPError as exc:
                    why = f"connection: {exc}"
                if not why:
                    with self._lock:
                        self.answered[rid] += 1
                    break
                with self._lock:
                    self.failed.append((self.phase, rid, why))  # when it failed
                    if attempt < 4:
                        self.retried += 1
                time.sleep(0.05)
            else:
                with self._lock:
                    self.lost.append(rid)
        http.clear()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def _gateway(tmp: Path, redis: RedisServer, host: str, port: int | None = None
             ) -> RunningGateway:
    tmp.mkdir(parents=True, exist_ok=True)
    return start_gateway(tmp, MODELS, "--redis", redis.url, "--drain-grace-s", GRACE_S,
                         "--workers", "1",  # as "auto" on a small host: HTTP in a data plane
                         host=host, http_port=port)


def _add_model(gw: RunningGateway, name: str, body: dict[str, Any]) -> int:
    r = urllib3.request("PUT", f"{gw.admin_url}/v2/admin/models/{name}",
                        body=json.dumps(body).encode(), timeout=10)
    return r.status


def _serves(url: str, model: str) -> bool:
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4],
                                   "data": [1, 1, 1, 1]}]}).encode()
    try:
        r = urllib3.request("POST", f"{url}/v2/models/{model}/infer", body=body, timeout=5,
                            retries=False)
    except urllib3.exceptions.HTTPError:
        return False
    return r.status == 200 and json.loads(r.data)["outputs"][0]["data"][0] == 5.0


def test_two_gateways_behind_haproxy(tmp_path: Path, redis_server: RedisServer) -> None:
    g2 = _gateway(tmp_path / "g2", redis_server, HOSTS[0])
    g3 = _gateway(tmp_path / "g3", redis_server, HOSTS[1])
    gateways = [g2, g3]
    proxy = HAProxy(tmp_path, [g2.url, g3.url])
    try:
        proxy.wait("g2", "UP")
        proxy.wait("g3", "UP")
        with Load(f"http://127.0.0.1:{proxy.front}") as load:
            time.sleep(1.0)
            # 1. SIGTERM g2: readiness false first, HAProxy takes it out, then it drains.
            load.phase = "sigterm"
            before = int(proxy.servers()["g3"]["hrsp_2xx"])
            g2.process.send_signal(signal.SIGTERM)
            proxy.wait("g2", "DOWN", timeout=5)
            assert g2.process.wait(timeout=30) == 0, g2.log()
            assert int(proxy.servers()["g3"]["hrsp_2xx"]) > before  # traffic moved
            assert "readiness is false; serving on for 1s" in g2.log()
            # g2 comes back on the same address; HAProxy sends to it again.
            load.phase = "restart"
            g2 = _gateway(tmp_path / "g2b", redis_server, HOSTS[0], int(g2.url.split(":")[1]))
            gateways.append(g2)
            proxy.wait("g2", "UP")
            # 2. A model added through g2's management API serves through both within 2 s.
            load.phase = "add-model"
            assert _add_model(g2, "added", {
                "entrypoint": "tests.models.scaled:Scaled", "batch_size": 4,
                "parameters": {"factor": 5.0},
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [4]}],
                "outputs": [{"name": "Y", "datatype": "FP32", "shape": [4]}]}) == 201
            added = time.monotonic()
            pending = {g.http for g in (g2, g3)}
            while pending and time.monotonic() - added < 10:
                pending = {url for url in pending if not _serves(url, "added")}
                time.sleep(0.02)
            took = time.monotonic() - added
            assert not pending, f"not serving the added model in 10 s: {pending}"
            assert _serves(f"http://127.0.0.1:{proxy.front}", "added")
            time.sleep(0.5)
            # 3. SIGKILL g3 — all its processes at once, as when its container or node dies:
            # only what is in flight on it fails; the client retries those.
            load.phase = "sigkill"
            planes = child_pids(g3.process.pid, b"bridges.dataplane")
            assert planes  # --workers 1: HTTP is served by a data-plane process
            for pid in (g3.process.pid, *planes):
                os.kill(pid, signal.SIGKILL)
            g3.process.wait(timeout=10)
            proxy.wait("g3", "DOWN", timeout=5)
            time.sleep(1.0)
            load.phase = "after"
            time.sleep(0.5)
        answered = sum(load.answered.values())
        print(f"\nbalancer: sent {load.sent}, answered {answered}, failed {len(load.failed)}, "
              f"retried {load.retried}, lost {len(load.lost)}; model added -> served by both "
              f"in {took:.2f} s; failures by phase "
              f"{dict(Counter(phase for phase, _, _ in load.failed))}")
        assert [f for f in load.failed if f[0] != "sigkill"] == []  # the drain failed none
        # Only requests in flight on g3 failed: at most one per client, each retried once.
        assert len(load.failed) <= CLIENTS and load.retried == len(load.failed)
        assert load.lost == [] and answered == load.sent and set(load.answered.values()) == {1}
        assert took < 2.0, f"the added model served by both only after {took:.2f} s"
    finally:
        proxy.stop()
        for gw in gateways:
            gw.cleanup()
