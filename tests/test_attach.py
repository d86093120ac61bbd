"""The attach runtime end to end: a gateway that starts no copy, copies the test starts and
SIGKILLs the way a kubelet would, then starts again (``inferoxy worker``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
import urllib3
import zmq

from gateway.attach import gpu_index
from shm import wire
from supervisor.attach import BadAnnouncement, parse_announcement
from tests.conftest import ROOT, RunningGateway, start_gateway
from worker.attach import visible_gpus

MODELS = ROOT / "tests" / "models_attach.yaml"
EXIT_REFUSED = 4


class Copies:
    """Copy processes of one gateway, as a platform runs them."""

    def __init__(self, run_dir: Path, logs: Path,
                 command: tuple[str, ...] = ("-m", "inferoxy", "worker")) -> None:
        self.run_dir = run_dir
        self.logs = logs
        self.command = command
        self.procs: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def start(self, model: str, *extra: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        self._n += 1
        log = self.logs / f"copy-{model}-{self._n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *self.command, "--model", model, "--run-dir",
                 str(self.run_dir), "--attach-timeout-s", "30", *extra],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="") | (env or {}),
            )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]


def status(gw: RunningGateway) -> dict[str, Any]:
    return orjson.loads(urllib3.request("GET", f"{gw.admin_url}/status.json", timeout=5).data)


def copy_states(gw: RunningGateway, model: str) -> list[str]:
    entry = next(m for m in status(gw)["models"] if m["name"] == model)
    return [c["state"] for c in entry["copies"]]


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not in {timeout}s: {what}")


def wait_copies(gw: RunningGateway, model: str, states: list[str], timeout: float = 20.0
                ) -> None:
    """Wait until the model's copies are in ``states``; else fail with what the gateway says."""
    try:
        wait_for(lambda: copy_states(gw, model) == states, timeout, f"{model}: {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now {copy_states(gw, model)}\n{gw.log()[-4000:]}"
                             ) from None


def infer_x(gw: RunningGateway, model: str, x: list[int], timeout: float = 30
            ) -> urllib3.BaseHTTPResponse:
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": "INT32", "shape": [1, len(x)],
                                     "data": x}]})
    return urllib3.request("POST", f"{gw.http}/v2/models/{model}/infer", body=body,
                           timeout=timeout, retries=False)


@pytest.fixture(scope="module")
def attached(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[RunningGateway, Copies]]:
    tmp = tmp_path_factory.mktemp("attach")
    run_dir = tmp / "run"
    gw = start_gateway(tmp, MODELS, "--runtime", "attach", "--run-dir", str(run_dir),
                       "--simulate-gpus", "2", "--heartbeat-s", "0.2",
                       "--heartbeat-timeout-s", "5", ready=False)
    copies = Copies(run_dir, tmp)
    try:
        yield gw, copies
        copies.stop_all()
        assert gw.stop() == 0, gw.log()
        assert "Traceback" not in gw.log(), gw.log()
        assert not [p for p in run_dir.iterdir() if not p.name.startswith("attach-")]
    finally:
        copies.stop_all()
        gw.cleanup()


def test_no_copy_until_one_attaches(attached: tuple[RunningGateway, Copies]) -> None:
    gw, copies = attached
    assert copy_states(gw, "fragile") == ["starting", "starting"]
    entry = next(m for m in status(gw)["models"] if m["name"] == "fragile")
    assert "waiting for a copy to attach" in entry["reason"]
    assert urllib3.request("GET", f"{gw.http}/v2/health/ready").status == 503
    for model in ("fragile", "fragile", "hangs", "running_sum"):
        copies.start(model)
    copies.start("on_gpu", "--gpu", "0")
    copies.start("on_gpu", env={"NVIDIA_VISIBLE_DEVICES": "1"})  # as a device plugin says
    wait_for(lambda: urllib3.request("GET", f"{gw.http}/v2/health/ready").status == 200,
             what="ready once every model has a copy")
    wait_for(lambda: all(set(copy_states(gw, m)) == {"ready"} for m in ("fragile", "on_gpu")),
             what="every copy attached")
    gpus = next(m for m in status(gw)["models"] if m["name"] == "on_gpu")["copies"]
    assert sorted(c["gpu"] for c in gpus) == [0, 1]
    # The status page says which process on which host serves each copy.
    assert all(isinstance(c["pid"], int) and c["host"] == socket.gethostname() for c in gpus)
    response = infer_x(gw, "fragile", [3, 4, 5])
    assert response.status == 200 and response.json()["outputs"][0]["data"] == [3, 4, 5]


def _refused(proc: subprocess.Popen[bytes]) -> str:
    assert proc.wait(timeout=20) == EXIT_REFUSED, log_of(proc)
    return log_of(proc)


def test_refusals_say_why(attached: tuple[RunningGateway, Copies]) -> None:
    gw, copies = attached
    wait_for(lambda: urllib3.request("GET", f"{gw.http}/v2/health/ready").status == 200)
    cases = [
        (copies.start("nope"), "model 'nope' is not declared on this gateway"),
        (copies.start("fragile", "--version", "9"), "model 'fragile' has no version 9"),
        (copies.start("on_gpu", "--gpu", "5"), "GPU 5 is not one of this gateway's GPUs"),
        (copies.start("on_gpu"), "runs on a GPU and this copy sees none"),
        (copies.start("on_gpu", "--gpu", "0", "--gpu", "1"), "a copy uses one GPU"),
        (copies.start("on_gpu", "--gpu", "1"), "GPU 1 already runs a copy of model 'on_gpu'"),
    ]
    for proc, reason in cases:
        assert reason in _refused(proc)
    assert copy_states(gw, "on_gpu") == ["ready", "ready"]


def test_hostile_announcements(attached: tuple[RunningGateway, Copies]) -> None:
    """Raw ATTACH messages over pyzmq: a wrong protocol is told why; garbage changes nothing."""
    gw, copies = attached
    run_dir = str(copies.run_dir)
    token = "ab" * 8
    address, control, _ = wire.attach_paths(run_dir, token)
    ctx = zmq.Context()
    try:
        ours = ctx.socket(zmq.PULL)
        ours.bind(control)
        out = ctx.socket(zmq.PUSH)
        out.connect(wire.inbox_address(run_dir))
        good = {"token": token, "protocol": wire.PROTOCOL + 1, "model": "fragile",
                "version": "", "gpus": [], "pid": 1, "host": "h", "address": address,
                "control": control}
        for bad in ([b"ATTACH", b"{not json"], [b"ATTACH"], [b"NOPE", b"{}"],
                    wire.encode(wire.ATTACH, {"token": "../../etc"}),
                    wire.encode(wire.ATTACH, good | {"address": "ipc:///tmp/elsewhere.sock"}),
                    wire.encode(wire.ATTACH, good | {"gpus": "0"}),
                    wire.encode(wire.ATTACH, good | {"model": 7}),
                    wire.encode(wire.ATTACH, good)):
            out.send_multipart(bad)
        reasons = []
        while ours.poll(3000 if reasons else 10_000):
            kind, body = wire.decode(ours.recv_multipart())
            assert kind == wire.REFUSED, kind
            reasons.append(body["reason"])
        # Told why, once each: those that named our control socket (the others: logged only).
        # Each refusal goes over a socket of its own, so they may arrive in any order.
        assert sorted(reasons) == ["ATTACH whose gpus are not a list of GPU ids",
                                   "ATTACH without a model name",
                                   "the worker speaks wire protocol 2, this gateway 1: run "
                                   "the same Inferoxy release on both"]
    finally:
        ctx.destroy(linger=0)
    assert copy_states(gw, "fragile") == ["ready", "ready"]
    assert infer_x(gw, "fragile", [1]).status == 200


def test_kill_restart_rounds_lose_no_request(attached: tuple[RunningGateway, Copies]) -> None:
    """Steady load on two copies; three rounds of SIGKILL one copy, start it again. Every
    request id is answered once, with its own data."""
    gw, copies = attached
    wait_copies(gw, "fragile", ["ready", "ready"])
    fragile = [p for p in copies.procs if p.poll() is None and "--model" in p.args
               and p.args[p.args.index("--model") + 1] == "fragile"]
    assert len(fragile) == 2
    stop = threading.Event()
    answers: Counter[str] = Counter()
    failures: list[str] = []
    sent = Counter[str]()

    def client(n: int) -> None:
        client = httpclient.InferenceServerClient(gw.url, network_timeout=30)
        i = 0
        while not stop.is_set() and i < 5000:
            rid = f"c{n}-{i}"
            i += 1
            x = np.array([[100 + n, i % 1000 + 100, 5]], dtype=np.int32)
            inp = httpclient.InferInput("X", [1, 3], "INT32")
            inp.set_data_from_numpy(x)
            sent[rid] += 1
            try:
                result = client.infer("fragile", [inp], request_id=rid)
            except Exception as exc:
                failures.append(f"{rid}: {exc}")
                continue
            y = result.as_numpy("Y")
            if result.get_response()["id"] != rid or y is None or not np.array_equal(y, x):
                failures.append(f"{rid}: wrong answer {result.get_response()}")
            answers[rid] += 1
        client.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    restarts = 0
    try:
        for round_ in range(3):
            time.sleep(0.5)
            victim = fragile[round_ % 2]
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            wait_for(lambda: sorted(copy_states(gw, "fragile")) != ["ready", "ready"],
                     timeout=5, what="the gateway sees the copy go")
            time.sleep(0.3)  # load runs on one copy meanwhile
            fragile[round_ % 2] = copies.start("fragile")
            restarts += 1
            wait_copies(gw, "fragile", ["ready", "ready"])  # the restarted copy is admitted
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    total = sum(sent.values())
    print(f"\nattach rounds: sent {total}, answered {sum(answers.values())}, "
          f"failed {len(failures)}, copy restarts {restarts}")
    assert failures == []
    assert total > 100 and set(sent) == set(answers) and set(answers.values()) == {1}
    entry = next(m for m in status(gw)["models"] if m["name"] == "fragile")
    assert sum(c["restarts"] for c in entry["copies"]) == 3
    assert gw.log().count("admitted worker") >= 9  # 6 at first, 3 restarts


def test_hung_copy_is_killed(attached: tuple[RunningGateway, Copies]) -> None:
    """A batch that hangs: the gateway cannot signal a process it did not start, so it tells
    the worker's control thread to die. The request is retried once on the next copy (which
    hangs too, and is killed too), then fails clearly."""
    gw, copies = attached
    hangs = next(p for p in copies.procs if p.poll() is None and "hangs" in p.args)
    answer: list[urllib3.BaseHTTPResponse] = []
    poison = threading.Thread(target=lambda: answer.append(infer_x(gw, "hangs", [99])))
    poison.start()
    try:
        for _ in range(2):  # the copy, then the one its retry went to
            assert hangs.wait(timeout=15) == -signal.SIGKILL, log_of(hangs)
            assert "the gateway killed this copy" in log_of(hangs)
            hangs = copies.start("hangs")  # as the platform restarts it
    finally:
        poison.join(timeout=30)
    assert answer and answer[0].status == 500, answer and answer[0].data
    assert gw.log().count("hung: one batch ran for more than 1s") >= 2
    wait_for(lambda: infer_x(gw, "hangs", [1]).status == 200, what="a new copy serves")


def test_frozen_copy_is_given_up(attached: tuple[RunningGateway, Copies]) -> None:
    """SIGSTOP a copy (a frozen process: no heartbeat, and its control thread cannot act on a
    KILL): the gateway gives its slot up, retries what it held on the other copy, and the
    process dies of the KILL waiting for it once it runs again."""
    gw, copies = attached
    wait_copies(gw, "fragile", ["ready", "ready"])
    frozen = next(p for p in copies.procs if p.poll() is None and "fragile" in p.args)
    frozen.send_signal(signal.SIGSTOP)
    try:
        answers = [infer_x(gw, "fragile", [i, 1]) for i in range(10)]  # some wait for it
        assert [a.json()["outputs"][0]["data"] for a in answers] == [[i, 1] for i in range(10)]
        wait_for(lambda: "still holds its lock" in gw.log(), timeout=15)
        assert "no heartbeat for 5s" in gw.log()
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(timeout=10) == -signal.SIGKILL, log_of(frozen)
    copies.start("fragile")
    wait_copies(gw, "fragile", ["ready", "ready"])


def test_sequence_fails_clearly_when_its_copy_dies(
        attached: tuple[RunningGateway, Copies]) -> None:
    gw, copies = attached
    wait_copies(gw, "running_sum", ["ready"])

    def frame(seq: str, value: float, start: bool = False) -> urllib3.BaseHTTPResponse:
        params: dict[str, Any] = {"sequence_id": seq} | ({"sequence_start": True}
                                                          if start else {})
        body = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4],
                                         "data": [value] * 4}], "parameters": params})
        return urllib3.request("POST", f"{gw.http}/v2/models/running_sum/infer", body=body,
                               timeout=30)

    assert frame("s1", 1.0, start=True).status == 200
    assert frame("s1", 2.0).json()["outputs"][0]["data"] == [3.0] * 4
    holder = next(p for p in copies.procs if p.poll() is None and "running_sum" in p.args)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    wait_for(lambda: copy_states(gw, "running_sum") != ["ready"], timeout=5)
    late = frame("s1", 1.0)
    assert late.status in (400, 500) and "died" in late.json()["error"], late.data
    copies.start("running_sum")
    wait_for(lambda: frame("s2", 4.0, start=True).status == 200, what="a fresh sequence")
    assert frame("s2", 1.0).json()["outputs"][0]["data"] == [5.0] * 4


def test_gateway_restart_on_the_same_run_dir(tmp_path: Path) -> None:
    """A gateway SIGKILLed and started again (its container restarted, the Pod's socket
    directory kept): the old copy sees a new gateway, exits, and its restart attaches."""
    run_dir = tmp_path / "run"
    args = ("--runtime", "attach", "--run-dir", str(run_dir))
    small = tmp_path / "models.yaml"
    small.write_text(MODELS.read_text().split("  hangs:")[0])
    gw = start_gateway(tmp_path, small, *args, ready=False)
    # As a slim model image runs it (worker/Dockerfile: numpy and pyzmq, no gateway).
    copies = Copies(run_dir, tmp_path, ("-m", "worker.attach"))
    try:
        first = copies.start("fragile")
        wait_for(lambda: "ready" in copy_states(gw, "fragile"))
        gw.stop(signal.SIGKILL)
        # The new one serves HTTP from a data-plane process: batches reach attached copies
        # from there too.
        gw2 = start_gateway(tmp_path, small, *args, "--workers", "1", ready=False)
        try:
            assert first.wait(timeout=15) == 0, log_of(first)  # it saw the new gateway
            copies.start("fragile")
            copies.start("fragile")
            wait_for(lambda: infer_x(gw2, "fragile", [8]).status == 200)
            answers = [infer_x(gw2, "fragile", [i, 2]) for i in range(20)]
            assert [a.json()["outputs"][0]["data"] for a in answers] == [
                [i, 2] for i in range(20)]
        finally:
            copies.stop_all()
            assert gw2.stop() == 0
            gw2.cleanup()
    finally:
        copies.stop_all()
        gw.cleanup()


# -- the I/O-free parts ----------------------------------------------------------------------

def _body(run_dir: str = "/run/x", **changes: Any) -> dict[str, Any]:
    token = "0123456789abcdef"
    address, control, _ = wire.attach_paths(run_dir, token)
    return {"token": token, "protocol": wire.PROTOCOL, "model": "m", "version": "",
            "gpus": ["GPU-1"], "pid": 7, "host": "node-1", "address": address,
            "control": control} | changes


def test_parse_announcement() -> None:
    a = parse_announcement(_body(), "/run/x")
    assert (a.model, a.gpus, a.pid, a.lock) == ("m", ("GPU-1",), 7,
                                               "/run/x/attach-0123456789abcdef.lock")
    control = _body()["control"]
    for changes, reason, told in [
        ({"token": "../../x"}, "valid token", ""),
        ({"token": 5}, "valid token", ""),
        ({"token": "ABCDEF0123456789"}, "valid token", ""),
        ({"address": "ipc:///elsewhere/attach-0123456789abcdef.sock"}, "run directory", ""),
        ({"protocol": "1"}, "wire protocol", control),
        ({"model": ""}, "model name", control),
        ({"model": "m" * 300}, "model name", control),
        ({"version": 2}, "version", control),
        ({"gpus": "0"}, "gpus", control),
        ({"gpus": [""]}, "gpus", control),
        ({"gpus": ["0"] * 65}, "gpus", control),
        ({"pid": "7"}, "pid", control),
    ]:
        with pytest.raises(BadAnnouncement, match=reason) as caught:
            parse_announcement(_body(**changes), "/run/x")
        assert caught.value.control == told, changes
    with pytest.raises(BadAnnouncement, match="run directory"):  # another gateway's directory
        parse_announcement(_body("/run/y"), "/run/x")


def test_gpu_index() -> None:
    """A copy may name its GPU by index or by the UUID a device plugin hands it."""
    uuids = {"GPU-8f0e2c1a-0000-4000-8000-000000000001": 1}
    assert gpu_index("0", uuids) == 0
    assert gpu_index("GPU-8f0e2c1a-0000-4000-8000-000000000001", uuids) == 1
    assert gpu_index("GPU-unknown", uuids) is None and gpu_index("MIG-1", {}) is None


def test_visible_gpus() -> None:
    assert visible_gpus({"NVIDIA_VISIBLE_DEVICES": "GPU-a1b2"}) == ["GPU-a1b2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1, 3"}) == ["1", "3"]
    assert visible_gpus({"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({}) == []
