"""Inferoxy's own images (``make images``) on a real engine, served from the gateway image.

The gateway container is run with the ``docker run`` command that ``Dockerfile``'s comment
documents, read from that comment, with only what differs on a test machine changed: this
engine's socket, a socket directory of the test's own (``TMPDIR``) instead of
``/run/inferoxy``, the test's models.yaml, free loopback ports, the local registry and its
credentials, a network with published ports (the test engine has no default bridge), and a
segment prefix of its own. The model images (``inferoxy/example-face``, with OpenCV in it,
and ``inferoxy/example-legacy``, an original-Inferoxy ``predict_batch`` model) are pushed to
Debian's ``docker-registry`` on loopback with htpasswd auth; the gateway pulls them with
credentials and starts their copies as containers.

Without the images (``make images``) the tests skip and say so; in CI (``CI=true``) they fail.
The start-up check (no engine, a wrong ``--docker-host``) needs neither engine nor images.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from tests import test_docker_runtime
from tests.conftest import ROOT, free_port, shm_names
from tests.test_docker_runtime import PASSWORD, USER, Registry, unavailable, wait_for
from tests.test_example_models import FACE_X, FACE_Y, astronaut
from tests.test_legacy import decode_prediction

VERSION = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)[1]
IMAGES = ("inferoxy/base", "inferoxy/gateway", "inferoxy/model-base", "inferoxy/example-face",
          "inferoxy/example-legacy")
GATEWAY_UID = "10001"

# The engine, its client and the registry: the Docker runtime tests' fixtures.
engine = test_docker_runtime.engine
client = test_docker_runtime.client
registry = test_docker_runtime.registry


# -- start-up: no engine, or the wrong one --------------------------------------------------


@pytest.mark.parametrize("how", ["missing socket", "refused port", "DOCKER_HOST", "bad url"])
def test_serve_without_an_engine_stops_at_start_with_one_line(tmp_path: Path, how: str) -> None:
    host = {"missing socket": f"unix://{tmp_path}/docker.sock",
            "refused port": f"tcp://127.0.0.1:{free_port()}",
            "DOCKER_HOST": f"unix://{tmp_path}/nothing.sock",
            "bad url": "ftp://engine.example"}[how]
    flags = [] if how == "DOCKER_HOST" else ["--docker-host", host]
    env = dict(os.environ, DOCKER_HOST=host if how == "DOCKER_HOST" else "")
    done = subprocess.run(
        [sys.executable, "-m", "inferoxy", "serve", "--runtime", "docker", *flags,
         "--models", str(ROOT / "examples" / "images" / "models.yaml"),
         "--http-port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"cannot reach the Docker engine at {host}: " in lines[0]
    if how != "bad url":  # the system's reason and what to do
        assert re.search(r"No such file or directory|Connection refused", lines[0]), lines[0]
        assert "--docker-host or DOCKER_HOST" in lines[0]


# -- the images -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(client: Any) -> dict[str, Any]:
    import docker.errors

    found = {}
    for name in IMAGES:
        try:
            found[name] = client.images.get(f"{name}:{VERSION}")
        except docker.errors.ImageNotFound:
            unavailable(f"image {name}:{VERSION} is missing: run `make images` first")
    return found


def test_images_are_labelled_and_built_on_the_local_base(images: dict[str, Any]) -> None:
    for name, image in images.items():
        labels = image.labels
        assert labels["org.opencontainers.image.title"] == name
        assert labels["org.opencontainers.image.version"] == VERSION
        assert f"{name}:latest" in image.tags and f"{name}:{VERSION}" in image.tags
    base_layers = images["inferoxy/base"].attrs["RootFS"]["Layers"]
    assert len(base_layers) == 1  # mmdebstrap's root filesystem, imported
    for name in IMAGES[1:]:  # everything else is built on it, nothing from elsewhere
        assert images[name].attrs["RootFS"]["Layers"][0] == base_layers[0], name
    gateway = images["inferoxy/gateway"].attrs["Config"]
    assert gateway["User"] == f"{GATEWAY_UID}:{GATEWAY_UID}"
    assert "/v2/health/ready" in " ".join(gateway["Healthcheck"]["Test"])


# -- the gateway image serving the model images -----------------------------------------------


def documented_run_command() -> list[str]:
    """The ``docker run`` command of Dockerfile's comment, as words."""
    comment = [line.removeprefix("#").strip() for line in (ROOT / "Dockerfile").read_text()
               .splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(comment) if line.startswith("docker run "))
    lines = []
    for line in comment[start:]:
        lines.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(lines))


def unused_subnet() -> str:
    """A /24 that no route of this host uses (engines of other tests may share the host)."""
    taken = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()  # Iface Destination Gateway Flags ... Mask: little-endian hex
        destination, mask = (ipaddress.IPv4Address(bytes.fromhex(f)[::-1])
                             for f in (fields[1], fields[7]))
        if int(mask):
            taken.append(ipaddress.ip_network(f"{destination}/{mask}", strict=False))
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise AssertionError(f"no free /24 among the host's routes: {taken}")


@dataclass
class Deployment:
    name: str  # the gateway container's
    http: str  # host:port on loopback
    grpc: str
    prefix: str  # shared-memory segments
    run_dir: Path
    refs: dict[str, str]  # model -> image reference in the registry
    command: list[str] = field(default_factory=list)

    def docker(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(self.docker("inspect", self.name))[0])

    def logs(self) -> str:
        done = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True,
                              timeout=60)
        return done.stdout + done.stderr


def push(client: Any, registry: Registry, name: str) -> str:
    repository = f"{registry.address}/{name}"
    client.api.tag(f"{name}:{VERSION}", repository, VERSION)
    for event in client.api.push(repository, VERSION, stream=True, decode=True,
                                 auth_config={"username": USER, "password": PASSWORD}):
        assert "error" not in event, event
    ref = f"{repository}:{VERSION}"
    client.api.remove_image(ref)  # the tag only: the gateway must pull it
    return ref


def models_yaml(path: Path, refs: dict[str, str]) -> None:
    config = yaml.safe_load((ROOT / "examples" / "images" / "models.yaml").read_text())
    for model, ref in refs.items():
        config["models"][model]["address"] = ref
    config["models"]["face"]["copies"] = 2  # one keeps serving while the other restarts
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def deployed(engine: str, client: Any, images: dict[str, Any], registry: Registry,
             ) -> Iterator[Deployment]:
    if os.geteuid() != 0:
        unavailable("the gateway container's socket directory must belong to uid 10001: "
                    "run the image tests as root")
    refs = {"face": push(client, registry, "inferoxy/example-face"),
            "brightness": push(client, registry, "inferoxy/example-legacy")}
    root = Path(tempfile.mkdtemp(prefix="ifx-img-"))
    run_dir = root / "run"  # the socket directory: the gateway's user's, at one path
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, int(GATEWAY_UID), int(GATEWAY_UID))
    models_yaml(root / "models.yaml", refs)
    root.chmod(0o755)
    (root / "models.yaml").chmod(0o644)
    socket_path = engine.removeprefix("unix://")
    network = f"ifx-img-{uuid.uuid4().hex[:8]}"
    deployment = Deployment(f"inferoxy-{uuid.uuid4().hex[:8]}", f"127.0.0.1:{free_port()}",
                            f"127.0.0.1:{free_port()}", f"ifxi{uuid.uuid4().hex[:8]}",
                            run_dir, refs)
    ports = {"8000": deployment.http.split(":")[1], "8001": deployment.grpc.split(":")[1]}
    values = {"INFEROXY_DOCKER_REGISTRY": registry.address, "INFEROXY_DOCKER_USERNAME": USER,
              "INFEROXY_DOCKER_PASSWORD": PASSWORD}
    words = documented_run_command()
    command = []
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if word == "$(stat -c %g /var/run/docker.sock)":
            word = str(os.stat(socket_path).st_gid)
        elif before == "--name":
            word = deployment.name
        elif before == "-v":
            word = (word.replace("/var/run/docker.sock:", f"{socket_path}:", 1)
                    .replace("/run/inferoxy:/run/inferoxy", f"{run_dir}:{run_dir}")
                    .replace("$PWD/examples/images/models.yaml", str(root / "models.yaml")))
        elif before == "-p":
            address, _, container_port = word.split(":")
            assert address == "127.0.0.1", word  # loopback only, as documented
            word = f"{address}:{ports.pop(container_port)}:{container_port}"
        elif before == "-e":
            key = word.split("=", 1)[0]
            word = f"{key}={values.pop(key)}"
        elif word == "inferoxy/gateway":
            word = f"inferoxy/gateway:{VERSION}"
        command.append(word)
    assert not ports and not values, (ports, values)  # every one of them is documented
    image_at = command.index(f"inferoxy/gateway:{VERSION}")
    command[image_at:image_at] = ["--network", network, "-e", f"TMPDIR={run_dir}",
                                  "-e", f"INFEROXY_SHM_PREFIX={deployment.prefix}"]
    deployment.command = command
    deployment.docker("network", "create", "--subnet", unused_subnet(), network)
    try:
        deployment.docker(*command[1:])
        wait_for("the gateway container ready", lambda: ready(deployment), timeout=90)
        yield deployment
    finally:
        deployment.docker("rm", "-f", deployment.name, check=False)
        for name in shm_names(deployment.prefix):  # a failed test's SIGKILLed gateway's
            Path("/dev/shm", name).unlink(missing_ok=True)
        for container in client.containers.list(
                all=True, filters={"label": "inferoxy.model"}, ignore_removed=True):
            if container.image.tags and container.image.tags[0] in refs.values():
                container.remove(force=True)
        deployment.docker("network", "rm", network, check=False)
        for ref in refs.values():
            deployment.docker("rmi", ref, check=False)
        shutil.rmtree(root, ignore_errors=True)


def ready(deployment: Deployment) -> bool:
    state = deployment.inspect()["State"]
    assert state["Running"], deployment.logs()
    try:
        with httpclient.InferenceServerClient(deployment.http) as c:
            return bool(c.is_server_ready())
    except Exception:
        return False


def model_containers(client: Any, deployment: Deployment) -> list[Any]:
    pid = deployment.inspect()["State"]["Pid"]
    return client.containers.list(all=True, ignore_removed=True,
                                  filters={"label": f"inferoxy.gateway={pid}"})


def infer_face_http(url: str, image: np.ndarray) -> tuple[int, list[int]]:
    with httpclient.InferenceServerClient(url) as c:
        inp = httpclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(image[None])
        result = c.infer("face", [inp])
        count, boxes = result.as_numpy("COUNT"), result.as_numpy("BOXES")
    assert count is not None and boxes is not None
    return int(count[0, 0]), boxes[0, 0].tolist()


def assert_the_face(count: int, box: list[int]) -> None:
    x, y, w, h = box
    assert count == 1, (count, box)
    assert FACE_X[0] <= x and x + w <= FACE_X[1] and FACE_Y[0] <= y and y + h <= FACE_Y[1], box


def test_gateway_image_pulls_and_serves_over_http_and_grpc(deployed: Deployment,
                                                          client: Any) -> None:
    image = astronaut()
    assert_the_face(*infer_face_http(deployed.http, image))
    with grpcclient.InferenceServerClient(deployed.grpc) as c:
        inp = grpcclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(image[None])
        result = c.infer("face", [inp])
        count, boxes = result.as_numpy("COUNT"), result.as_numpy("BOXES")
        assert count is not None and boxes is not None
        assert_the_face(int(count[0, 0]), boxes[0, 0].tolist())
    # The original-Inferoxy model, through worker.legacy in its own image.
    with httpclient.InferenceServerClient(deployed.http) as c:
        inp = httpclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
        inp.set_data_from_numpy(image[None])
        result = c.infer("brightness", [inp])
        drawing, prediction = result.as_numpy("IMAGE"), result.as_numpy("PREDICTION")
    assert drawing is not None and prediction is not None
    assert drawing.shape == (1, *image.shape)
    assert (drawing[0, ..., 0] == drawing[0, ..., 2]).all()  # grey
    assert decode_prediction(prediction[0]) == {"brightness": pytest.approx(0.4, abs=0.2),
                                                "label": "dark"}
    log = deployed.logs()
    for ref in deployed.refs.values():  # pulled from the registry, with credentials
        assert f"pulled image {ref}" in log, log
    assert PASSWORD not in log
    containers = model_containers(client, deployed)
    assert sorted(c.labels["inferoxy.model"] for c in containers) == ["brightness", "face",
                                                                      "face"]
    for container in containers:
        assert container.attrs["Config"]["Image"] == deployed.refs[
            container.labels["inferoxy.model"]]
        assert container.attrs["Config"]["User"] == f"{GATEWAY_UID}:{GATEWAY_UID}"


def test_gateway_container_is_confined(deployed: Deployment) -> None:
    """Read-only root, only the served ports published (on loopback), the host's pid and ipc
    namespaces, not root, and healthy by its own HEALTHCHECK."""
    attrs = deployed.inspect()
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["PidMode"] == "host" and host["IpcMode"] == "host"
    assert not host["NetworkMode"].startswith("host")
    published = {port: [(b["HostIp"], b["HostPort"]) for b in bindings]
                 for port, bindings in host["PortBindings"].items()}
    assert published == {"8000/tcp": [("127.0.0.1", deployed.http.split(":")[1])],
                         "8001/tcp": [("127.0.0.1", deployed.grpc.split(":")[1])]}
    assert attrs["Config"]["User"] == f"{GATEWAY_UID}:{GATEWAY_UID}"
    with open(f"/proc/{attrs['State']['Pid']}/status") as status:
        uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {GATEWAY_UID}  # on the host, too
    written = subprocess.run(["docker", "exec", "-u", "0", deployed.name, "touch", "/etc/x"],
                             capture_output=True, text=True, timeout=60)
    assert "Read-only file system" in written.stderr, written  # even for root
    wait_for("the HEALTHCHECK's verdict",
             lambda: deployed.inspect()["State"]["Health"]["Status"] == "healthy", timeout=60)


def test_killed_model_container_is_replaced_while_requests_are_answered(
        deployed: Deployment, client: Any) -> None:
    image = astronaut()
    stop = threading.Event()
    answered: list[int] = []
    failures: list[str] = []

    def load() -> None:
        while not stop.is_set() and len(failures) < 5:
            try:
                assert_the_face(*infer_face_http(deployed.http, image))
                answered.append(1)
            except Exception as exc:  # a wrong or failed answer fails the test below
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):  # rounds, bounded
            victim = next(c for c in model_containers(client, deployed)
                          if c.labels["inferoxy.model"] == "face" and c.status == "running")
            seen = len(answered)
            wait_for("answers before the kill", lambda n=seen: len(answered) > n + 3)
            victim.kill()  # SIGKILL, behind the gateway's back
            seen = len(answered)

            def replaced(old: Any = victim) -> bool:
                faces = [c for c in model_containers(client, deployed)
                         if c.labels["inferoxy.model"] == "face" and c.status == "running"]
                return len(faces) == 2 and old.id not in {c.id for c in faces}

            wait_for("the face copy replaced", replaced, timeout=60)
            wait_for("answers after", lambda n=seen: len(answered) > n + 3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures
    assert "exited with status 137" in deployed.logs()


def test_docker_stop_drains_and_leaves_nothing_behind(deployed: Deployment,
                                                      client: Any) -> None:
    """Last: stops the gateway. Requests sent while it stops get their answer or a clear
    refusal (503, or a connection the stopped gateway no longer accepts), never a wrong one."""
    image = astronaut()
    pid = deployed.inspect()["State"]["Pid"]
    assert model_containers(client, deployed)
    assert shm_names(deployed.prefix)
    outcomes: list[str] = []
    stopping = threading.Event()

    def load() -> None:
        for _ in range(2000):  # bounded; ends once the gateway refuses
            try:
                assert_the_face(*infer_face_http(deployed.http, image))
                outcomes.append("ok")
            except InferenceServerException as exc:
                outcomes.append(f"{exc.status()} {exc.message()}")
                if stopping.is_set():
                    return
            except (OSError, http.client.HTTPException) as exc:
                # Refused, or accepted and closed unanswered (the engine's port proxy does
                # that once the gateway is gone): never sent on to a model.
                outcomes.append(f"closed {exc!r}")
                return
            except Exception as exc:
                outcomes.append(f"wrong {exc!r}")
                return

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for("answers before the stop", lambda: outcomes.count("ok") >= 6)
    stopping.set()
    deployed.docker("stop", "--time", "60", deployed.name)
    for t in threads:
        t.join(timeout=60)
    state = deployed.inspect()["State"]
    log = deployed.logs()
    assert state["ExitCode"] == 0, log
    assert "received SIGTERM; draining" in log and "Traceback" not in log, log
    wrong = [o for o in outcomes if o != "ok" and not o.startswith(("503", "closed"))]
    assert not wrong, wrong
    assert client.containers.list(all=True, filters={"label": f"inferoxy.gateway={pid}"}) == []
    assert shm_names(deployed.prefix) == []
    assert list(deployed.run_dir.iterdir()) == []  # its socket directory, emptied
