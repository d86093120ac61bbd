"""The Docker runtime against a real engine: real containers running the real worker.

The engine is ``$DOCKER_HOST``'s, or (as root, with ``dockerd`` installed) a private one that
``tests/docker/start-engine.sh`` starts for this module. Without either the engine tests skip
and say why; in CI (``CI=true``) they fail instead. No registry can be reached from here, so
the model image is made with ``docker import`` from a tiny rootfs (a few directories and an
``/app/model.py``); the host's ``/usr``, Python and this checkout (with its virtualenv) are
bind-mounted read-only into every container (``--docker-volumes``). Registry pulls go to
Debian's ``docker-registry`` on loopback with htpasswd auth.

The configuration helpers at the top are I/O-free and always run.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import urllib3
from tritonclient.utils import InferenceServerException

from supervisor.docker import (
    DockerOptions,
    PullProgress,
    Volume,
    auth_for,
    container_config,
    parse_volumes,
    progress_bar,
    registry_of,
)
from supervisor.placement import Placement
from supervisor.runtime import CopySpec
from tests.conftest import ROOT, RunningGateway, free_port, shm_names, start_gateway
from tests.test_legacy import LEGACY_MODEL, infer_legacy

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ENGINE_DIR = ROOT / "tests" / "docker"


# -- I/O-free: what a container is asked to be ----------------------------------------------


def spec(placement: Placement) -> CopySpec:
    return CopySpec(copy_id=7, model="m", entrypoint="pkg.mod:Model", image="img:1",
                    parameters={"a": 1}, placement=placement, run_dir="/tmp/run-x",
                    shm_prefix="ifx-42", heartbeat_s=1.0)


def test_container_config_cpu_copy() -> None:
    options = DockerOptions(network="net", volumes=(Volume("/w", "/w", True),))
    config = container_config(spec(Placement("cpu", "", None)), options, gateway_pid=42,
                              user="1000:1000", name="n")
    assert config["command"][:3] == ["python", "-m", "worker"]
    assert config["command"][-2:] == ["--gateway-pid", "42"]
    assert "--shm-prefix" in config["command"] and "ifx-42" in config["command"]
    assert config["entrypoint"] == [""]
    assert config["labels"] == {"inferoxy.gateway": "42", "inferoxy.model": "m",
                                "inferoxy.copy": "7"}
    assert config["device_requests"] == []
    assert config["environment"]["CUDA_VISIBLE_DEVICES"] == ""
    assert config["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert config["pid_mode"] == "host" and config["user"] == "1000:1000"
    assert config["network"] == "net"
    mounts = {(m["Source"], m["Target"], m["ReadOnly"]) for m in config["mounts"]}
    assert mounts == {("/dev/shm", "/dev/shm", False), ("/tmp/run-x", "/tmp/run-x", False),
                      ("/w", "/w", True)}


def test_container_config_gpu_copy_sees_only_its_gpu() -> None:
    config = container_config(spec(Placement("cuda:0", "3", 3)), DockerOptions(),
                              gateway_pid=42, user="0:0", name="n")
    [request] = config["device_requests"]
    assert request["DeviceIDs"] == ["3"] and request["Capabilities"] == [["gpu"]]
    assert config["environment"]["CUDA_VISIBLE_DEVICES"] == "0"  # its only GPU, inside
    assert "network" not in config
    # A simulated GPU (device "cpu") asks the engine for none.
    simulated = container_config(spec(Placement("cpu", "3", 3)), DockerOptions(),
                                 gateway_pid=42, user="0:0", name="n")
    assert simulated["device_requests"] == []


def test_credentials_go_to_their_registry_only() -> None:
    options = DockerOptions(registry="registry.example.com:5000", username="u", password="p")
    assert auth_for("registry.example.com:5000/models/face:v5", options) == {
        "username": "u", "password": "p", "serveraddress": "registry.example.com:5000"}
    assert auth_for("other.example.com/models/face:v5", options) is None
    assert auth_for("models/face:v5", options) is None  # Docker Hub
    hub = DockerOptions(username="u", password="p")
    assert auth_for("models/face:v5", hub) is not None
    assert auth_for("localhost/face", hub) is None
    assert registry_of("localhost:5000/face") == "localhost:5000"
    assert registry_of("face") == registry_of("library/face:1") == "docker.io"


def test_volumes_parse_or_name_the_bad_entry() -> None:
    assert parse_volumes("/a:/b, /c:/d:ro,") == (Volume("/a", "/b"), Volume("/c", "/d", True))
    for bad in ("/a", "/a:/b:x", "a:/b", "/a:/b:ro:x"):
        with pytest.raises(ValueError, match="docker volume"):
            parse_volumes(bad)


def test_pull_progress_summary() -> None:
    progress = PullProgress("img:1")
    for event in [
        {"status": "Pulling from img", "id": "1"},
        {"status": "Pulling fs layer", "id": "aaa"},
        {"status": "Already exists", "id": "bbb"},
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 5e6, "total": 2e7}},
    ]:
        progress.update(event)
    assert progress.summary() == "pulling image img:1: 1/2 layers, 5.0/20.0 MB (25%)"
    assert "aaa downloading 5.0/20.0 MB" in progress.layer_lines()
    assert progress_bar(progress, width=8) == (
        "\r\x1b[Kimg:1 [##......]  25% 1/2 layers")  # on a terminal: one line, redrawn
    progress.update({"status": "Pull complete", "id": "aaa"})
    assert progress.fraction == 1.0 and progress.to_status()["state"] == "pulling"


# -- a real engine -------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the Docker tests must run in CI, but {reason}")
    pytest.skip(reason)


def knock(host: str) -> None:
    """Connect to the engine's socket and hang up; ``OSError`` if nothing listens.

    (The SDK leaks its socket when the connection is refused: knock first.)
    """
    if host.startswith("unix://"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(host.removeprefix("unix://"))
    elif host.startswith(("tcp://", "http://", "https://")):
        address, _, port = host.split("://", 1)[1].rstrip("/").rpartition(":")
        socket.create_connection((address, int(port)), timeout=5).close()


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    """``DOCKER_HOST`` of a reachable engine."""
    docker = pytest.importorskip("docker")
    host = os.environ.get("DOCKER_HOST", "")
    engine_dir = ""
    if not host:
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            unavailable("no Docker engine: set DOCKER_HOST, or run the tests as root with "
                        "dockerd installed (apt-get install docker.io)")
        engine_dir = tempfile.mkdtemp(prefix="ifxd-", dir="/tmp")  # short: socket path
        started = subprocess.run([ENGINE_DIR / "start-engine.sh", engine_dir],
                                 capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            subprocess.run([ENGINE_DIR / "stop-engine.sh", engine_dir], timeout=120)
            unavailable(f"dockerd did not start: {started.stderr[-2000:]}")
        host = started.stdout.strip().removeprefix("export DOCKER_HOST=")
    try:
        knock(host)
        client = docker.DockerClient(base_url=host, version="1.24")  # no I/O when made
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        unavailable(f"the Docker engine at {host} does not answer: {exc}")
    try:
        yield host
    finally:
        if engine_dir:
            subprocess.run([ENGINE_DIR / "stop-engine.sh", engine_dir], timeout=120)


@pytest.fixture(scope="module")
def client(engine: str) -> Iterator[Any]:
    import docker

    client = docker.DockerClient(base_url=engine)
    yield client
    client.close()


def rootfs(extra: dict[str, bytes] | None = None) -> bytes:
    """A tar of a near-empty Debian-style root: /usr and friends come from the host, mounted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in [("usr", 0o755), ("tmp", 0o1777), ("dev", 0o755), ("proc", 0o755),
                           ("sys", 0o755), ("etc", 0o755), ("root", 0o700), ("app", 0o755)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name in ("bin", "lib", "lib64", "sbin"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
        files = {"app/model.py": LEGACY_MODEL.read_bytes(), **(extra or {})}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_image(client: Any, repository: str, tag: str, extra: dict[str, bytes] | None = None,
                 ) -> str:
    path = f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin"
    client.api.import_image_from_data(rootfs(extra), repository=repository, tag=tag,
                                      changes=[f"ENV PATH={path}"])
    return f"{repository}:{tag}"


def host_volumes() -> str:
    """The host's Python and this checkout, read-only, at the same paths in the container."""
    paths = {"/usr", sys.base_prefix, sys.prefix, str(ROOT)}
    kept = sorted(p for p in paths
                  if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths))
    return ",".join(f"{p}:{p}:ro" for p in kept)


@pytest.fixture(scope="module")
def image(client: Any) -> Iterator[str]:
    ref = import_image(client, "inferoxy-test/worker", uuid.uuid4().hex[:12])
    yield ref
    client.api.remove_image(ref, force=True)


def models_yaml(path: Path, models: dict[str, dict[str, Any]]) -> Path:
    kinds = {
        "stub": ("examples.models.stub:Identity",
                 "inputs: [{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}]\n"
                 "    outputs: [{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}]"),
        "legacy": ("worker.legacy:LegacyModel",
                   "inputs: [{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]}]\n"
                   "    outputs: [{name: IMAGE, datatype: UINT8, shape: [-1, -1, 3]},\n"
                   "              {name: PREDICTION, datatype: UINT8, shape: [-1]}]"),
    }
    kinds["broken"] = ("no_such_module:Model", kinds["stub"][1])
    text = "models:\n"
    for name, m in models.items():
        entrypoint, tensors = kinds[m["kind"]]
        text += (f"  {name}:\n    entrypoint: {entrypoint}\n    address: {m['image']}\n"
                 f"    batch_size: 4\n    copies: {m.get('copies', 1)}\n"
                 f"    run_on_gpu: {str(m.get('gpu', False)).lower()}\n    {tensors}\n")
    path.write_text(text)
    return path


def docker_gateway(tmp_path: Path, engine: str, models: dict[str, dict[str, Any]], *extra: str,
                   **kwargs: Any) -> RunningGateway:
    return start_gateway(
        tmp_path, models_yaml(tmp_path / f"models-{uuid.uuid4().hex[:6]}.yaml", models),
        "--runtime", "docker", "--docker-host", engine, "--docker-volumes", host_volumes(),
        "--gpus", "", *extra, **kwargs,
    )


def containers_of(client: Any, gw: RunningGateway) -> list[Any]:
    return client.containers.list(all=True, ignore_removed=True,
                                  filters={"label": f"inferoxy.gateway={gw.process.pid}"})


def remove_containers(client: Any, gw: RunningGateway) -> None:
    for container in containers_of(client, gw):
        container.remove(force=True)


def wait_for(what: str, check: Any, timeout: float = 30, gw: RunningGateway | None = None,
             ) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{gw.log()}" if gw else ""))


def infer_image(url: str, model: str, image: np.ndarray) -> np.ndarray:
    with httpclient.InferenceServerClient(url) as c:
        inp = httpclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(image[None])
        out = c.infer(model, [inp]).as_numpy("IMAGE")
    assert out is not None
    return out[0]


def model_ready(url: str, model: str) -> bool:
    with httpclient.InferenceServerClient(url) as c:
        return bool(c.is_model_ready(model))


def repository_index(gw: RunningGateway) -> dict[str, dict[str, Any]]:
    response = urllib3.request("POST", f"{gw.http}/v2/repository/index", body=b"{}")
    assert response.status == 200, response.data
    return {m["name"]: m for m in response.json()}


IMAGE = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)


@dataclass
class Served:
    gw: RunningGateway
    client: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, engine: str, client: Any,
           image: str) -> Iterator[Served]:
    """One gateway whose copies are containers: a stub and a legacy model."""
    gw = docker_gateway(tmp_path_factory.mktemp("docker"), engine, {
        "stub": {"kind": "stub", "image": image},
        "legacy": {"kind": "legacy", "image": image},
    })
    try:
        yield Served(gw, client)
        assert gw.stop() == 0, gw.log()
        # A clean stop removes its containers and every segment.
        assert containers_of(client, gw) == []
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()
        remove_containers(client, gw)


def test_infer_through_containers(served: Served) -> None:
    gw = served.gw
    np.testing.assert_array_equal(infer_image(gw.url, "stub", IMAGE), IMAGE)
    drawing, prediction = infer_legacy(gw.url, IMAGE)  # /app/model.py, inside the container
    np.testing.assert_array_equal(drawing, 255 - IMAGE)
    assert prediction["shape"] == [6, 8, 3] and prediction["draw"] is True
    assert "runtime docker" in gw.log()


def test_containers_are_labelled_and_share_shm_and_sockets(served: Served) -> None:
    gw, pid = served.gw, served.gw.process.pid
    containers = containers_of(served.client, gw)
    assert sorted(c.labels["inferoxy.model"] for c in containers) == ["legacy", "stub"]
    for container in containers:
        attrs = container.attrs
        assert container.status == "running"
        assert container.labels["inferoxy.gateway"] == str(pid)
        assert container.labels["inferoxy.copy"].isdecimal()
        host = attrs["HostConfig"]
        assert host["PidMode"] == "host"
        assert not host.get("DeviceRequests")  # CPU copies ask for no GPU
        env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        mounts = {m["Destination"]: m for m in attrs["Mounts"]}
        assert mounts["/dev/shm"]["Source"] == "/dev/shm" and mounts["/dev/shm"]["RW"]
        run_dirs = [d for d in mounts if Path(d).name.startswith(f"inferoxy-{pid}-")]
        assert len(run_dirs) == 1 and mounts[run_dirs[0]]["Source"] == run_dirs[0]
        # The worker's output slab is in the host's /dev/shm, named after its host pid (the
        # container's State.Pid): the name the gateway unlinks when the copy dies.
        worker_pid = attrs["State"]["Pid"]
        assert any(n.startswith(f"{gw.shm_prefix}-{pid}-w{worker_pid}-")
                   for n in shm_names(gw.shm_prefix)), shm_names(gw.shm_prefix)


def test_killed_container_is_replaced(served: Served) -> None:
    gw, client = served.gw, served.client
    [old] = [c for c in containers_of(client, gw) if c.labels["inferoxy.model"] == "stub"]
    old_pid = old.attrs["State"]["Pid"]
    old.kill()  # SIGKILL, behind the gateway's back

    def replaced() -> Any:
        running = [c for c in containers_of(client, gw)
                   if c.labels["inferoxy.model"] == "stub" and c.id != old.id
                   and c.status == "running"]
        return running and model_ready(gw.url, "stub") and running[0]

    new = wait_for("a new stub container", replaced, gw=gw)
    assert new.labels["inferoxy.copy"] == old.labels["inferoxy.copy"]
    np.testing.assert_array_equal(infer_image(gw.url, "stub", IMAGE), IMAGE)
    # The dead container is removed and its worker's slab unlinked by the gateway.
    wait_for("the dead container's removal",
             lambda: old.id not in {c.id for c in containers_of(client, gw)}, gw=gw)
    assert not [n for n in shm_names(gw.shm_prefix)
                if n.startswith(f"{gw.shm_prefix}-{gw.process.pid}-w{old_pid}-")]
    assert "exited with status 137" in gw.log()


def test_container_killed_under_load_is_back_within_its_backoff(served: Served) -> None:
    """The restart guarantee under the Docker runtime: a copy's container SIGKILLed three
    times under load is started again after each announced back-off (never silently later),
    is ready within back-off + start time, and every request is answered, correctly."""
    gw, client = served.gw, served.client
    wait_for("stub ready", lambda: model_ready(gw.url, "stub"), gw=gw)
    stop = time.monotonic() + 90
    answered: list[int] = []
    failures: list[str] = []

    def load() -> None:
        n = 0
        while time.monotonic() < stop and not failures:
            image = (IMAGE + n % 7).astype(np.uint8)
            try:
                np.testing.assert_array_equal(infer_image(gw.url, "stub", image), image)
            except Exception as exc:  # any wrong or failed answer fails the test below
                failures.append(repr(exc))
            n += 1
            answered.append(n)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for round_ in range(3):
            [old] = [c for c in containers_of(client, gw)
                     if c.labels["inferoxy.model"] == "stub" and c.status == "running"]
            seen = len(answered)
            wait_for("requests before the kill", lambda n=seen: len(answered) > n + 5, gw=gw)
            old.kill()
            killed = time.monotonic()
            wait_for("the stub back", lambda o=old: model_ready(gw.url, "stub") and any(
                c.id != o.id and c.status == "running" for c in containers_of(client, gw)
                if c.labels["inferoxy.model"] == "stub"), gw=gw)
            back_s = time.monotonic() - killed
            announced = [float(line.rsplit("restarting in ", 1)[1].rstrip("s"))
                         for line in gw.log().splitlines() if "restarting in" in line]
            assert announced, gw.log()
            assert max(announced) <= 1.6  # outside a crash loop the back-off stays short
            # Back-off plus a container's start (~0.3 s, generous on 2 shared cores).
            assert back_s < announced[-1] + 5.0, (round_, back_s, announced)
    finally:
        stop = 0.0
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures
    assert len(answered) > 20


def test_orphans_of_a_killed_gateway_are_removed_at_the_next_start(
        tmp_path: Path, engine: str, client: Any, image: str) -> None:
    models = {"stub": {"kind": "stub", "image": image}}
    first = docker_gateway(tmp_path, engine, models)
    second = None
    try:
        [orphan] = containers_of(client, first)
        infer_image(first.url, "stub", IMAGE)  # segments in use, both sides
        first.stop(signal.SIGKILL)
        # Its worker sees the gateway gone and exits; the container stays behind.
        orphan.reload()
        wait_for("the orphan's worker to exit",
                 lambda: orphan.reload() or orphan.status == "exited", timeout=15)
        assert [c.id for c in containers_of(client, first)] == [orphan.id]
        assert shm_names(first.shm_prefix)  # the killed gateway's segments are left, too
        second = docker_gateway(tmp_path, engine, models, shm_prefix=first.shm_prefix)
        assert containers_of(client, first) == []
        assert "removed 1 container(s) left by dead gateways" in second.log()
        assert not [n for n in shm_names(first.shm_prefix)
                    if n.startswith(f"{first.shm_prefix}-{first.process.pid}-")]
        np.testing.assert_array_equal(infer_image(second.url, "stub", IMAGE), IMAGE)
    finally:
        first.cleanup()
        remove_containers(client, first)
        if second is not None:
            second.cleanup()
            remove_containers(client, second)


# -- a registry with credentials -----------------------------------------------------------

USER, PASSWORD, WRONG = "inferoxy", "s3cret-pass", "not-the-pass-1234"


@dataclass
class Registry:
    address: str  # host:port
    image: str  # pushed there, absent from the engine until pulled


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, client: Any) -> Iterator[Registry]:
    """Debian's docker-registry on loopback with htpasswd auth, holding one model image."""
    binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
    if binary is None or htpasswd is None:
        unavailable("docker-registry and htpasswd are not installed "
                    "(apt-get install docker-registry apache2-utils)")
    assert binary is not None and htpasswd is not None
    root = tmp_path_factory.mktemp("registry")
    users = subprocess.run([htpasswd, "-Bbn", USER, PASSWORD], capture_output=True,
                           text=True, check=True).stdout
    (root / "htpasswd").write_text(users)
    address = f"127.0.0.1:{free_port()}"
    (root / "config.yml").write_text(f"""
version: 0.1
log: {{level: error, accesslog: {{disabled: true}}}}
storage: {{filesystem: {{rootdirectory: {root}/data}}}}
http: {{addr: "{address}"}}
auth: {{htpasswd: {{realm: inferoxy-test, path: {root}/htpasswd}}}}
""")
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        http = urllib3.PoolManager()
        wait_for("the registry", lambda: _answers(http, f"http://{address}/v2/"), timeout=20)
        # Its own image (a layer of random bytes): a pull must download it.
        local = import_image(client, "inferoxy-test/private", uuid.uuid4().hex[:12],
                             {"app/weights.bin": os.urandom(1 << 20)})
        repository = f"{address}/inferoxy-test/private"
        client.api.tag(local, repository, "v1")
        auth = {"username": USER, "password": PASSWORD}
        for event in client.api.push(repository, "v1", auth_config=auth, stream=True,
                                     decode=True):
            assert "error" not in event, event
        client.api.remove_image(local, force=True)
        client.api.remove_image(f"{repository}:v1", force=True)
        yield Registry(address, f"{repository}:v1")
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _answers(http: urllib3.PoolManager, url: str) -> bool:
    try:
        return http.request("GET", url, retries=False, timeout=1).status == 401
    except urllib3.exceptions.HTTPError:
        return False


def forget_image(client: Any, ref: str) -> None:
    import docker.errors

    try:
        client.api.remove_image(ref, force=True)
    except docker.errors.NotFound:
        pass


def test_failed_pull_and_gpu_request_leave_other_models_serving(
        tmp_path: Path, engine: str, client: Any, image: str, registry: Registry) -> None:
    """A wrong password, a GPU the engine cannot give, a model that does not load: those
    models are unavailable with the registry's / engine's / model's reason (and the broken
    model's log reaches the gateway's); the stub keeps serving."""
    forget_image(client, registry.image)
    gw = docker_gateway(
        tmp_path, engine, {
            "stub": {"kind": "stub", "image": image},
            "private": {"kind": "stub", "image": registry.image},
            "gpu": {"kind": "stub", "image": image, "gpu": True},
            "broken": {"kind": "broken", "image": image},
        },
        "--gpus", "0",  # one GPU, as the host would report it: its copy asks the engine for it
        env={"INFEROXY_DOCKER_REGISTRY": registry.address, "INFEROXY_DOCKER_USERNAME": USER,
             "INFEROXY_DOCKER_PASSWORD": WRONG},
        ready=False,
    )
    try:
        wait_for("the stub", lambda: model_ready(gw.url, "stub"), gw=gw)
        index = wait_for("the failures",
                         lambda: (i := repository_index(gw))["private"]["reason"]
                         and i["gpu"]["reason"] and i["broken"]["reason"] and i, gw=gw)
        assert "unauthorized" in index["private"]["reason"].lower(), index
        assert "gpu" in index["gpu"]["reason"].lower(), index
        assert "ModuleNotFoundError" in index["broken"]["reason"], index
        failures = (("private", "unauthorized"), ("gpu", "gpu"), ("broken", "no_such_module"))
        for model, reason in failures:
            with pytest.raises(InferenceServerException) as failure:
                infer_image(gw.url, model, IMAGE)
            assert failure.value.status() == "503"
            assert reason in str(failure.value).lower()
        np.testing.assert_array_equal(infer_image(gw.url, "stub", IMAGE), IMAGE)
        # No pull, no container; the GPU copy's containers are created and refused a start.
        containers = containers_of(client, gw)
        assert "private" not in [c.labels["inferoxy.model"] for c in containers]
        assert not [c for c in containers
                    if c.labels["inferoxy.model"] == "gpu" and c.status == "running"]
        wait_for("the broken model's log", lambda: "worker[broken#" in gw.log(), gw=gw)
        assert WRONG not in gw.log()  # never logged
    finally:
        gw.cleanup()
        remove_containers(client, gw)


def test_pull_with_credentials(tmp_path: Path, engine: str, client: Any,
                               registry: Registry) -> None:
    forget_image(client, registry.image)
    gw = docker_gateway(
        tmp_path, engine, {"private": {"kind": "legacy", "image": registry.image}},
        "--docker-registry", registry.address, "--docker-username", USER,
        "--docker-password", PASSWORD,
    )
    try:
        drawing, _ = infer_legacy(gw.url, IMAGE, model="private")
        np.testing.assert_array_equal(drawing, 255 - IMAGE)
        log = gw.log()
        assert f"pulling image {registry.image} from {registry.address}" in log
        assert f"pulled image {registry.image}" in log
        assert PASSWORD not in log
        [container] = containers_of(client, gw)
        assert container.image.tags == [registry.image]
    finally:
        gw.cleanup()
        remove_containers(client, gw)
