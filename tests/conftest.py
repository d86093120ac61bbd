"""Fixtures that start a real gateway (``inferoxy serve``) with real worker processes."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models.yaml"


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now, never handed out before in this test process.

    Drawn below the kernel's ephemeral range (where client sockets get their ports), so a
    gateway's listener cannot collide with an outgoing connection of another test; and never
    twice, so two listeners of one gateway never get the same port (asking the kernel for
    port 0 twice can answer the same port once the first socket is closed).
    """
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free loopback port in 20000-32000")


def child_pids(parent: int, *needles: bytes) -> list[int]:
    """The pids of ``parent``'s children whose argv holds every one of ``needles``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        ppid = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))
        if ppid == parent and all(n in argv for n in needles):
            pids.append(int(proc.name))
    return sorted(pids)


def shm_names(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix + "-"))


@dataclass
class RunningGateway:
    process: subprocess.Popen[bytes]
    url: str  # host:port, as tritonclient wants it
    metrics_url: str
    shm_prefix: str
    log_path: Path
    grpc_url: str = ""  # host:port, as tritonclient.grpc wants it
    ws_url: str = ""  # ws://host:port
    zmq_url: str = ""  # tcp://host:port, the ZeroMQ bridge
    admin_url: str = ""  # http://host:port, the management API

    @property
    def http(self) -> str:
        return f"http://{self.url}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def cleanup(self) -> None:
        """Whatever a test did to it, leave no process and no segment behind."""
        if self.process.poll() is None:
            try:
                self.stop(signal.SIGTERM, timeout=20)
            except subprocess.TimeoutExpired:
                self.stop(signal.SIGKILL)
        deadline = time.monotonic() + 10  # workers of a killed gateway exit by themselves
        while time.monotonic() < deadline and _children_alive(self.process.pid):
            time.sleep(0.05)
        for name in shm_names(self.shm_prefix):
            os.unlink(f"/dev/shm/{name}")


def _children_alive(pid: int) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                status = (proc / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                return True
    return False


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path,
               timeout: float = 60, probe: str = "ready") -> None:
    # "Connection: close" and a pool closed on the way out: no connection of the harness
    # stays open on the gateway (tests count connections, e.g. --max-connections).
    with urllib3.PoolManager(headers={"Connection": "close"}) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{log_path.read_text()}")
            try:
                response = http.request("GET", f"{url}/v2/health/{probe}", timeout=1,
                                        retries=False)
                if response.status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"gateway not ready in {timeout}s:\n{log_path.read_text()}")


def start_gateway(tmp_path: Path, models: Path = TEST_MODELS, *extra: str,
                  shm_prefix: str | None = None, env: dict[str, str] | None = None,
                  ready: bool = True, host: str = "127.0.0.1",
                  http_port: int | None = None) -> RunningGateway:
    """``inferoxy serve`` on ``models``, once it is ready (``ready=False``: once it is live,
    for tests of models that never get ready); ``env`` adds to its environment; ``host``: a
    loopback address to listen on; ``http_port``: a given one (a gateway started again)."""
    prefix = shm_prefix or f"ifxt{uuid.uuid4().hex[:8]}"
    http_port, grpc_port, metrics_port = http_port or free_port(), free_port(), free_port()
    ws_port, zmq_port, admin_port = free_port(), free_port(), free_port()
    log_path = tmp_path / f"gateway-{http_port}.log"
    if "--workers" not in extra:
        # One process unless a test asks for data-plane processes (tests/test_dataplanes.py);
        # INFEROXY_TEST_WORKERS=N runs the whole suite against N data-plane processes.
        extra = ("--workers", os.environ.get("INFEROXY_TEST_WORKERS", "0"), *extra)
    # ResourceWarnings (Python hides them by default) reach the log: a leak shows there.
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                      "always::ResourceWarning"]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYNTHETIC_A_MS="20",
               SYNTHETIC_B_MS="0.5", PYTHONWARNINGS=warnings) | (env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inferoxy", "serve", "--models", str(models),
             "--host", host, "--http-port", str(http_port),
             "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
             "--shm-prefix", prefix, "--ws-port", str(ws_port), "--zmq-port", str(zmq_port),
             "--admin-port", str(admin_port),
             "--heartbeat-timeout-s", "5", *extra],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    gw = RunningGateway(process, f"{host}:{http_port}", f"http://{host}:{metrics_port}",
                        prefix, log_path, f"{host}:{grpc_port}")
    gw.ws_url = f"ws://{host}:{ws_port}"
    gw.zmq_url = f"tcp://{host}:{zmq_port}"
    gw.admin_url = f"http://127.0.0.1:{admin_port}"  # --admin-host: loopback by default
    try:
        wait_ready(gw.http, process, log_path, probe="ready" if ready else "live")
    except BaseException:
        gw.cleanup()
        raise
    return gw


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One gateway shared by the tests that do not break it."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
        status = gw.stop()
        assert status == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
        assert "ResourceWarning" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


@pytest.fixture
def own_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    """A gateway of the test's own, for tests that kill things."""
    gw = start_gateway(tmp_path)
    yield gw
    gw.cleanup()
