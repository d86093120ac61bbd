"""The model manager against a real redis-server: import, the management API, validation,
auth, two gateways sharing one registry, rolling replacement, Redis lost and back.

Each test starts its own redis-server (``tests.redis_server``) on a free port.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.conftest import ROOT, RunningGateway, free_port, start_gateway
from tests.redis_server import RedisServer

REGISTRY_MODELS = ROOT / "tests" / "models_registry.yaml"
PREFIX = "inferoxy:"
TENSORS = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [4]}],
           "outputs": [{"name": "Y", "datatype": "FP32", "shape": [4]}]}


def scaled(factor: float, **extra: Any) -> dict[str, Any]:
    """A declaration of tests.models.scaled (answers X * factor)."""
    return {"entrypoint": "tests.models.scaled:Scaled", "batch_size": 4,
            "parameters": {"factor": factor, **extra.pop("parameters", {})}, **TENSORS, **extra}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


class Admin:
    """The management API of one gateway."""

    def __init__(self, gw: RunningGateway, token: str | None = None) -> None:
        self.url = gw.admin_url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = urllib3.PoolManager()

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        r = self.http.request(method, self.url + path,
                              body=None if body is None else json.dumps(body).encode(),
                              headers=self.headers if headers is None else headers,
                              timeout=10, retries=False)
        return r.status, (json.loads(r.data) if r.data else None)


def infer(gw: RunningGateway, model: str, version: str | None = None) -> tuple[int, Any]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4],
                        "data": [1.0, 2.0, 3.0, 4.0]}]}
    r = urllib3.request("POST", gw.http + path, body=json.dumps(body).encode(), timeout=10,
                        retries=False)
    doc = json.loads(r.data) if r.data else None
    if r.status == 200:
        return 200, float(doc["outputs"][0]["data"][0])  # the factor that answered
    return r.status, doc


def eventually(check: Callable[[], bool], gw: RunningGateway, timeout: float = 30,
               what: str = "condition") -> float:
    """Wait for ``check``; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s:\n{gw.log()[-5000:]}")


def serving(gw: RunningGateway, model: str, factor: float, version: str | None = None
            ) -> Callable[[], bool]:
    return lambda: infer(gw, model, version) == (200, factor)


def registry_gateway(tmp_path: Path, redis: RedisServer, *extra: str,
                     models: Path = REGISTRY_MODELS) -> RunningGateway:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return start_gateway(tmp_path, models, "--redis", redis.url, *extra)


def test_unreachable_redis_at_start_exits_3(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "inferoxy", "serve", "--models", str(REGISTRY_MODELS),
         "--redis", f"redis://127.0.0.1:{port}/0", "--http-port", str(free_port()),
         "--admin-port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in done.stderr


def test_import_crud_and_validation(tmp_path: Path, redis_server: RedisServer) -> None:
    r = redis_server.client()
    # Already in the registry: one the file also declares (the file wins), one it does not
    # (kept), and one edited by hand into something invalid (skipped, never fatal).
    r.set(f"{PREFIX}model:scaled", json.dumps(scaled(9.0)))
    r.set(f"{PREFIX}model:kept", json.dumps(scaled(5.0)))
    r.set(f"{PREFIX}model:broken", '{"entrypoint": "tests.models.scaled:Scaled", "batch_')
    gw = registry_gateway(tmp_path, redis_server)
    try:
        admin = Admin(gw)
        log = gw.log()
        assert "models.yaml declares 'scaled' differently" in log
        assert "kept from the registry (not in models.yaml): broken, kept" in log
        assert "skipping the stored declaration of 'broken'" in log
        assert infer(gw, "scaled") == (200, 1.0)
        assert infer(gw, "kept") == (200, 5.0)
        assert json.loads(r.get(f"{PREFIX}model:scaled"))["parameters"] == {"factor": 1.0}

        status, listing = admin.call("GET", "/v2/admin/models")
        assert status == 200
        assert [m["name"] for m in listing["models"]] == ["kept", "scaled"]
        assert [i["name"] for i in listing["invalid"]] == ["broken"]
        assert listing["models"][1]["versions"] == [
            {"version": "1", "state": "READY", "reason": ""}]

        # add
        status, doc = admin.call("POST", "/v2/admin/models", {"name": "added", **scaled(4.0)})
        assert status == 201, doc
        assert doc["declaration"]["parameters"] == {"factor": 4.0}
        eventually(serving(gw, "added", 4.0), gw, what="the added model serving")
        assert admin.call("POST", "/v2/admin/models/added", scaled(4.0))[0] == 409
        status, doc = admin.call("GET", "/v2/admin/models/added")
        assert status == 200 and doc["default_version"] == "1"

        # validation: 400 naming the field, nothing written
        status, doc = admin.call("PATCH", "/v2/admin/models/added", {"batch_size": -1})
        assert status == 400 and "batch_size" in doc["error"], doc
        status, doc = admin.call("PATCH", "/v2/admin/models/added", {"colour": "red"})
        assert status == 400 and "colour" in doc["error"], doc
        status, doc = admin.call("PUT", "/v2/admin/models/added", {**scaled(4.0),
                                                                   "entrypoint": "os.system"})
        assert status == 400 and "entrypoint" in doc["error"], doc
        status, doc = admin.call("POST", "/v2/admin/models/..%2Fetc", scaled(1.0))
        assert status in (400, 404)
        status, doc = admin.call("POST", "/v2/admin/models", {"name": "a b", **scaled(1.0)})
        assert status == 400 and "model name" in doc["error"], doc
        status, doc = admin.call("PUT", "/v2/admin/models/added", {
            **scaled(4.0), "versions": {"1": {}, "2": {"max_queue_size": -1}}})
        assert status == 400 and "version '2': max_queue_size" in doc["error"], doc
        assert json.loads(r.get(f"{PREFIX}model:added"))["parameters"] == {"factor": 4.0}

        # patch (a JSON merge patch), then replace
        status, doc = admin.call("PATCH", "/v2/admin/models/added",
                                 {"parameters": {"factor": 6.0}})
        assert status == 200, doc
        eventually(serving(gw, "added", 6.0), gw, what="the patched model serving")
        status, doc = admin.call("PUT", "/v2/admin/models/added", scaled(7.0))
        assert status == 200, doc
        eventually(serving(gw, "added", 7.0), gw, what="the replaced model serving")
        assert admin.call("PATCH", "/v2/admin/models/nope", {"copies": 1})[0] == 404

        # delete
        assert admin.call("DELETE", "/v2/admin/models/added")[0] == 204
        assert admin.call("GET", "/v2/admin/models/added")[0] == 404
        assert admin.call("DELETE", "/v2/admin/models/added")[0] == 404
        eventually(lambda: infer(gw, "added")[0] == 404, gw, what="the deleted model gone")
        assert r.get(f"{PREFIX}model:added") is None
    finally:
        gw.cleanup()
    assert "Traceback" not in gw.log(), gw.log()


def test_admin_token(tmp_path: Path, redis_server: RedisServer) -> None:
    gw = registry_gateway(tmp_path, redis_server, "--admin-token", "s3cret")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, doc = Admin(gw).call("GET", "/v2/admin/models", headers=headers)
            assert status == 401, (headers, doc)
            r = urllib3.request("POST", f"{gw.http}/v2/repository/index", body=b"{}",
                                headers=headers)
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            r = urllib3.request("POST", f"{gw.http}/v2/repository/models/scaled/unload",
                                headers=headers)
            assert r.status == 401
        admin = Admin(gw, "s3cret")
        assert admin.call("GET", "/v2/admin/models")[0] == 200
        assert admin.call("PUT", "/v2/admin/models/other", scaled(2.0))[0] == 201
        r = urllib3.request("POST", f"{gw.http}/v2/repository/index", body=b"{}",
                            headers=admin.headers)
        assert r.status == 200
        assert infer(gw, "scaled") == (200, 1.0)  # inference stays open
        assert "s3cret" not in gw.log()
    finally:
        gw.cleanup()


def test_two_gateways_share_one_registry(tmp_path: Path, redis_server: RedisServer) -> None:
    a = registry_gateway(tmp_path / "a", redis_server)
    b = registry_gateway(tmp_path / "b", redis_server)
    try:
        admin_a, admin_b = Admin(a), Admin(b)
        assert admin_a.call("PUT", "/v2/admin/models/shared", scaled(3.0))[0] == 201
        # b hears of it at once (pub/sub) and starts it; the copy itself takes its load time
        seen = eventually(lambda: any(m["name"] == "shared" for m in index(b)), b, timeout=5,
                          what="b seeing the new model")
        assert seen < 2.0
        eventually(serving(b, "shared", 3.0), b, what="b serving the new model")
        assert admin_b.call("PATCH", "/v2/admin/models/shared",
                            {"parameters": {"factor": 8.0}})[0] == 200
        eventually(serving(a, "shared", 8.0), a, what="a serving b's change")
        assert admin_b.call("DELETE", "/v2/admin/models/shared")[0] == 204
        eventually(lambda: infer(a, "shared")[0] == 404, a, timeout=5,
                   what="a dropping the model b deleted")
    finally:
        a.cleanup()
        b.cleanup()


def index(gw: RunningGateway) -> list[dict[str, str]]:
    r = urllib3.request("POST", f"{gw.http}/v2/repository/index", body=b"{}")
    assert r.status == 200
    return json.loads(r.data)


class ClientLoop:
    """Infers in a loop on a thread; records every answer."""

    def __init__(self, gw: RunningGateway, model: str) -> None:
        self.answers: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(gw, model), daemon=True)

    def _run(self, gw: RunningGateway, model: str) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(infer(gw, model))
            except Exception as exc:  # a failed request is what we look for
                self.answers.append((0, repr(exc)))

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_rolling_replace_keeps_answering(tmp_path: Path, redis_server: RedisServer) -> None:
    gw = registry_gateway(tmp_path, redis_server)
    try:
        admin = Admin(gw)
        with ClientLoop(gw, "scaled") as loop:
            time.sleep(0.3)
            # the new declaration takes a second to load; the old one serves meanwhile
            status, doc = admin.call("PUT", "/v2/admin/models/scaled",
                                     scaled(2.0, parameters={"load_s": 1.0}))
            assert status == 200, doc
            eventually(lambda: loop.answers[-1] == (200, 2.0), gw, what="the switch")
            # a new version next to the unchanged old one; requests that name no version
            # move to it once it is ready (the latest READY version)
            shared = scaled(2.0, parameters={"load_s": 1.0})
            v2 = {"parameters": {"factor": 3.0, "load_s": 1.0}}
            status, doc = admin.call("PUT", "/v2/admin/models/scaled",
                                     {**shared, "versions": {"1": {}, "2": v2}})
            assert status == 200, doc
            eventually(lambda: loop.answers[-1] == (200, 3.0), gw, what="version 2")
            assert "model scaled version 1 changed" not in gw.log().split("version 2: starting")[1]
            # then version 1 dropped from the declaration: drained and stopped
            status, doc = admin.call("PUT", "/v2/admin/models/scaled",
                                     {**shared, "versions": {"2": v2}})
            assert status == 200, doc
            eventually(lambda: [m["version"] for m in index(gw) if m["name"] == "scaled"]
                       == ["2"], gw, what="version 1 stopped")
            time.sleep(0.5)
        assert loop.answers, "the client loop never ran"
        failures = [a for a in loop.answers if a[0] != 200]
        assert not failures, failures[:5]
        factors = [a[1] for a in loop.answers]
        assert factors[0] == 1.0 and factors[-1] == 3.0
        assert set(factors) == {1.0, 2.0, 3.0}
        first_2 = factors.index(2.0)
        assert 1.0 not in factors[first_2 + 50:], "the old declaration kept answering"
    finally:
        gw.cleanup()


def test_redis_lost_and_back(tmp_path: Path, redis_server: RedisServer) -> None:
    gw = registry_gateway(tmp_path, redis_server)
    try:
        admin = Admin(gw)
        assert admin.call("PUT", "/v2/admin/models/extra", scaled(2.0))[0] == 201
        eventually(serving(gw, "extra", 2.0), gw, what="the extra model serving")
        redis_server.kill()
        eventually(lambda: admin.call("GET", "/v2/admin/models")[0] == 503, gw, timeout=5,
                   what="503 while Redis is gone")
        status, doc = admin.call("PUT", "/v2/admin/models/more", scaled(1.0))
        assert status == 503 and "Redis" in doc["error"], doc
        for _ in range(20):  # inference goes on with the last known registry
            assert infer(gw, "scaled") == (200, 1.0)
            assert infer(gw, "extra") == (200, 2.0)
        # Redis comes back empty (it had no persistence): the gateway writes back its models
        redis_server.start()
        took = eventually(lambda: admin.call("GET", "/v2/admin/models")[0] == 200, gw,
                          timeout=10, what="management back after Redis restarted")
        assert took < 5
        names = [m["name"] for m in admin.call("GET", "/v2/admin/models")[1]["models"]]
        assert names == ["extra", "scaled"]
        assert "restored the 2 model(s) this gateway knew" in gw.log()
        assert infer(gw, "extra") == (200, 2.0)
        # and changes flow again
        assert admin.call("PATCH", "/v2/admin/models/extra",
                          {"parameters": {"factor": 4.0}})[0] == 200
        eventually(serving(gw, "extra", 4.0), gw, what="a change after the reconnect")
        # a restart that keeps the data (a snapshot here) restores nothing: Redis is the truth
        redis_server.client().save()
        redis_server.kill()
        eventually(lambda: admin.call("GET", "/v2/admin/models")[0] == 503, gw, timeout=5,
                   what="503 while Redis is gone again")
        redis_server.start()
        eventually(lambda: admin.call("GET", "/v2/admin/models")[0] == 200, gw, timeout=10,
                   what="management back after the second restart")
        assert gw.log().count("restored the") == 1
        assert infer(gw, "extra") == (200, 4.0)
    finally:
        gw.cleanup()
    assert "Traceback" not in gw.log(), gw.log()


def test_hand_edited_value_is_skipped(tmp_path: Path, redis_server: RedisServer) -> None:
    r = redis_server.client()
    r.config_set("notify-keyspace-events", "K$g")  # so hand edits are heard at once
    gw = registry_gateway(tmp_path, redis_server)
    try:
        admin = Admin(gw)
        r.set(f"{PREFIX}model:scaled", json.dumps({**scaled(2.0), "batch_size": "lots"}))
        eventually(lambda: "skipping the stored declaration of 'scaled'" in gw.log(), gw,
                   timeout=5, what="the invalid value reported")
        assert "batch_size" in gw.log()
        assert infer(gw, "scaled") == (200, 1.0)  # the last valid declaration serves on
        status, listing = admin.call("GET", "/v2/admin/models")
        assert status == 200
        assert listing["invalid"][0]["name"] == "scaled"
        assert "batch_size" in listing["invalid"][0]["error"]
        # an invalid value is fixed with a whole declaration
        assert admin.call("PUT", "/v2/admin/models/scaled", scaled(5.0))[0] == 200
        eventually(serving(gw, "scaled", 5.0), gw, what="the fixed declaration serving")
        # a hand-made key with a bad name never reaches a runtime
        r.set(f"{PREFIX}model:../../etc", json.dumps(scaled(1.0)))
        eventually(lambda: "skipping the stored declaration of '../../etc'" in gw.log(), gw,
                   timeout=5, what="the bad name reported")
        assert gw.process.poll() is None
    finally:
        gw.cleanup()
    assert "Traceback" not in gw.log(), gw.log()


def test_a_replacement_on_a_host_whose_gpus_are_all_taken(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """One (simulated) GPU, held by the model's only copy: the new declaration's copy starts
    on that GPU beside the old one (placement is per declaration), takes over once ready,
    and no request fails on the way."""
    gw = registry_gateway(tmp_path, redis_server, "--simulate-gpus", "1")
    try:
        admin = Admin(gw)
        status, doc = admin.call("PUT", "/v2/admin/models/scaled",
                                 scaled(1.0, run_on_gpu=True))
        assert status == 200, doc
        eventually(serving(gw, "scaled", 1.0), gw, what="the GPU declaration serving")
        with ClientLoop(gw, "scaled") as loop:
            time.sleep(0.3)
            status, doc = admin.call("PUT", "/v2/admin/models/scaled",
                                     scaled(2.0, run_on_gpu=True, parameters={"load_s": 0.5}))
            assert status == 200, doc
            eventually(lambda: loop.answers[-1] == (200, 2.0), gw, what="the switch")
            time.sleep(0.3)
        assert "the new declaration is ready; switched to it" in gw.log()
        eventually(lambda: "version 1 was replaced: stopped" in gw.log(), gw,
                   what="the old declaration stopped")
        failures = [a for a in loop.answers if a[0] != 200]
        assert not failures, failures[:5]
        factors = [a[1] for a in loop.answers]
        assert factors[0] == 1.0 and factors[-1] == 2.0
        assert 1.0 not in factors[factors.index(2.0):]  # never back to the old one
    finally:
        gw.cleanup()
