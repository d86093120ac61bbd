"""The Docker runtime: each copy is a container of the model's image running the worker.

Theory of operation
-------------------
A copy is one container created from the model's image (``address`` in ``models.yaml``)
with the worker as its command: ``python -m worker`` and the arguments the local runtime
passes (``supervisor.runtime.worker_args``), plus ``--gateway-pid``. The image's entrypoint
is reset, so ``python`` must be on the image's ``PATH`` with the ``worker`` and ``shm``
packages importable (``worker/Dockerfile`` is that base image). Every call to the engine
goes through the ``docker`` SDK in a thread (``trio.to_thread``): the Trio thread never
waits on the engine.

What a container shares with the gateway, and why:

- ``/dev/shm``, bind-mounted: tensors travel as descriptors into POSIX shared-memory
  segments, which are files in ``/dev/shm``. A bind mount shares exactly those files; SysV
  IPC and message queues stay private (``ipc_mode="host"`` would share them too).
- the gateway's run directory, bind-mounted at the same path: the ZeroMQ ``ipc://`` sockets.
- the host pid namespace (``pid_mode="host"``): a worker names its output slab after its own
  pid (``{prefix}-w{pid}-*``) and, when a copy dies, the gateway unlinks that slab by the pid
  its runtime reported (``RunningCopy.pid``). In the host namespace the worker's pid is the
  container's ``State.Pid``, so one naming scheme serves both runtimes and a killed container's
  slab is still unlinked; in private namespaces every worker would be pid 1 and their slab
  names would collide. It also lets the worker watch the gateway: its parent is the engine's
  shim, not the gateway, so it exits when ``--gateway-pid`` is gone instead.
- the gateway's uid:gid (``user``): segments are created mode 0600 and the run directory is
  0700, so worker and gateway must be the same user to open each other's.

A GPU copy gets a device request for its GPU only (``device_ids=[gpu]``); inside the
container that GPU is the only one, device 0, so ``CUDA_VISIBLE_DEVICES=0``. A CPU copy
(or a simulated GPU) gets no device request, ``CUDA_VISIBLE_DEVICES=""`` and
``NVIDIA_VISIBLE_DEVICES=void`` (an image built ``FROM nvidia/cuda`` would otherwise ask the
NVIDIA runtime for every GPU).

Containers are labelled ``inferoxy.gateway=<gateway pid>``, ``inferoxy.model`` and
``inferoxy.copy``. A copy's container is removed once it has exited (after its last log
lines were forwarded to the gateway's stderr); a gateway that was killed leaves its
containers behind, and the next gateway's ``sweep_orphans`` removes every labelled container
whose gateway pid is no longer alive.

Images are pulled when the engine does not have them, with the configured credentials when
the image lives in the configured registry (credentials never go to another registry).
Pull progress is logged per layer (at most every few seconds), drawn as a bar on an
interactive terminal, and kept in ``pulls`` for status readers. A failed pull raises
``ImagePullError`` (an ``OSError``) with the registry's reason: the supervisor marks the copy
with it, the model reports unavailable, other models keep serving, and the pull is retried
with the copy's restart back-off.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from shm.segment import pid_alive
from supervisor.runtime import CopySpec, worker_args

log = logging.getLogger("inferoxy.docker")

LABEL_GATEWAY = "inferoxy.gateway"
LABEL_MODEL = "inferoxy.model"
LABEL_COPY = "inferoxy.copy"
SHM_DIR = "/dev/shm"
DOCKER_HUB = "docker.io"
LOG_EVERY_S = 3.0  # pull progress lines, per image
BAR_EVERY_S = 0.1  # terminal progress bar redraws
DEFAULT_ENGINE = "unix:///var/run/docker.sock"  # the SDK's, without DOCKER_HOST
ENGINE_RETRY_S = 10.0  # a container's wait survives engine hiccups this long


class DockerError(OSError):
    """The engine refused a request or cannot be reached; the message says why."""


class ImagePullError(DockerError):
    """An image could not be pulled (authentication, not found, network): the registry's
    reason, fit to show users as the model's last error."""


# -- configuration (I/O-free) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Volume:
    """An extra bind mount for every model container (weights, caches, a dev checkout)."""

    source: str
    target: str
    read_only: bool = False


def parse_volumes(text: str) -> tuple[Volume, ...]:
    """``"SRC:DST[:ro|rw],..."`` as volumes; ``ValueError`` naming the bad entry."""
    volumes: list[Volume] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) == 2:
            parts.append("rw")
        if len(parts) != 3 or parts[2] not in ("ro", "rw"):
            raise ValueError(f"docker volume {entry!r}: expected SRC:DST or SRC:DST:ro|rw")
        source, target, mode = parts
        if not (source.startswith("/") and target.startswith("/")):
            raise ValueError(f"docker volume {entry!r}: both paths must be absolute")
        volumes.append(Volume(source, target, mode == "ro"))
    return tuple(volumes)


@dataclass(frozen=True, slots=True)
class DockerOptions:
    host: str = ""  # engine URL; "" = $DOCKER_HOST, else the local socket
    registry: str = ""  # the registry the credentials are for; "" = Docker Hub
    username: str = ""
    password: str = field(default="", repr=False)
    network: str = ""  # attach containers to this network; "" = the engine's default
    volumes: tuple[Volume, ...] = ()


def normalize_registry(address: str) -> str:
    """A registry address as the host part of image references spells it."""
    host = address.strip().removeprefix("https://").removeprefix("http://").split("/")[0]
    if host in ("", "docker.io", "index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB
    return host


def registry_of(image: str) -> str:
    """The registry an image reference names (``docker.io`` when it names none)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return normalize_registry(first)
    return DOCKER_HUB


def auth_for(image: str, options: DockerOptions) -> dict[str, str] | None:
    """Credentials to pull ``image`` with: the configured ones, only for their registry."""
    if not options.username or registry_of(image) != normalize_registry(options.registry):
        return None
    server = options.registry or "https://index.docker.io/v1/"
    return {"username": options.username, "password": options.password, "serveraddress": server}


def container_config(spec: CopySpec, options: DockerOptions, *, gateway_pid: int, user: str,
                     name: str, log_level: str = "INFO") -> dict[str, Any]:
    """Keyword arguments of ``client.containers.create`` for one copy. I/O-free."""
    from docker.types import DeviceRequest, Mount

    gpu = spec.placement.gpu if spec.placement.device.startswith("cuda") else None
    environment = {
        "CUDA_VISIBLE_DEVICES": "" if gpu is None else "0",
        "NVIDIA_VISIBLE_DEVICES": "void" if gpu is None else str(gpu),
        "INFEROXY_LOG_LEVEL": log_level,
        "PYTHONUNBUFFERED": "1",
    }
    mounts = [
        Mount(SHM_DIR, SHM_DIR, type="bind"),
        Mount(spec.run_dir, spec.run_dir, type="bind"),
        *(Mount(v.target, v.source, type="bind", read_only=v.read_only)
          for v in options.volumes),
    ]
    config: dict[str, Any] = {
        "image": spec.image,
        "command": ["python", "-m", "worker", *worker_args(spec),
                    "--gateway-pid", str(gateway_pid)],
        "entrypoint": [""],  # the worker runs, whatever the image's entrypoint
        "name": name,
        "labels": {LABEL_GATEWAY: str(gateway_pid), LABEL_MODEL: spec.model,
                   LABEL_COPY: str(spec.copy_id)},
        "environment": environment,
        "mounts": mounts,
        "pid_mode": "host",
        "user": user,
        "detach": True,
        "device_requests": [] if gpu is None else [
            DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])
        ],
    }
    if options.network:
        config["network"] = options.network
    return config


# -- pull progress (I/O-free) ----------------------------------------------------------------

LAYER_DONE = ("Pull complete", "Already exists")


@dataclass(slots=True)
class LayerProgress:
    status: str = ""
    current: int = 0  # bytes downloaded
    total: int = 0  # bytes to download (0: not known yet)


@dataclass(slots=True)
class PullProgress:
    """One image pull, fed with the engine's progress events."""

    image: str
    started: float = field(default_factory=time.monotonic)
    layers: dict[str, LayerProgress] = field(default_factory=dict)
    finished: float | None = None
    error: str = ""

    def update(self, event: dict[str, Any]) -> None:
        layer_id = event.get("id")
        status = str(event.get("status", ""))
        if not layer_id or status.startswith("Pulling from"):
            return
        layer = self.layers.setdefault(str(layer_id), LayerProgress())
        layer.status = status
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            layer.current, layer.total = int(detail.get("current", 0)), int(detail["total"])
        elif status in ("Download complete", *LAYER_DONE) and layer.total:
            layer.current = layer.total

    @property
    def done_layers(self) -> int:
        return sum(layer.status in LAYER_DONE for layer in self.layers.values())

    @property
    def fraction(self) -> float:
        """Bytes downloaded over bytes known, 0..1 (layers already present count as done)."""
        if self.layers and self.done_layers == len(self.layers):
            return 1.0
        total = sum(layer.total for layer in self.layers.values())
        return sum(layer.current for layer in self.layers.values()) / total if total else 0.0

    def summary(self) -> str:
        mb = sum(layer.current for layer in self.layers.values()) / 1e6
        total_mb = sum(layer.total for layer in self.layers.values()) / 1e6
        return (f"pulling image {self.image}: {self.done_layers}/{len(self.layers)} layers, "
                f"{mb:.1f}/{total_mb:.1f} MB ({self.fraction:.0%})")

    def layer_lines(self) -> str:
        parts = []
        for layer_id, layer in self.layers.items():
            size = (f" {layer.current / 1e6:.1f}/{layer.total / 1e6:.1f} MB"
                    if layer.total and layer.status not in LAYER_DONE else "")
            parts.append(f"{layer_id[:12]} {layer.status.lower()}{size}")
        return "; ".join(parts)

    def to_status(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "state": "failed" if self.error else "done" if self.finished else "pulling",
            "error": self.error,
            "seconds": round((self.finished or time.monotonic()) - self.started, 1),
            "fraction": round(self.fraction, 3),
            "layers": {k: {"status": v.status, "current": v.current, "total": v.total}
                       for k, v in self.layers.items()},
        }


def progress_bar(progress: PullProgress, width: int = 30) -> str:
    filled = int(progress.fraction * width)
    return f"\r\x1b[K{progress.image} [{'#' * filled}{'.' * (width - filled)}] " + (
        f"{progress.fraction:4.0%} {progress.done_layers}/{len(progress.layers)} layers"
    )


# -- the runtime ----------------------------------------------------------------------------


def _engine_errors() -> tuple[type[Exception], ...]:
    """What an SDK call raises when the engine refuses or cannot be reached."""
    import docker.errors
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def _reason(exc: BaseException) -> str:
    """The engine's own words for an SDK error, without the SDK's wrapping."""
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc).strip()


def _unreachable_reason(exc: BaseException) -> str:
    """One line for a failed connection: the operating system's words where the SDK's
    wrappers (requests, urllib3) hold them, with what to do about it."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return (f"{item.strerror} (start the engine, or point --docker-host or "
                    "DOCKER_HOST at it)")
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return " ".join(_reason(exc).split())


class DockerCopy:
    """A running copy's container, as the supervisor sees it (``RunningCopy``)."""

    def __init__(self, runtime: DockerRuntime, container_id: str, name: str,
                 pid: int | None) -> None:
        self._runtime = runtime
        self.container_id = container_id
        self.name = name
        self.pid = pid
        self._exited = False
        self._logs_done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def logs_done(_outcome: object) -> None:
            try:
                token.run_sync_soon(self._logs_done.set)
            except trio.RunFinishedError:
                pass

        trio.lowlevel.start_thread_soon(self._forward_logs, logs_done)

    async def wait(self) -> int:
        status = await trio.to_thread.run_sync(
            self._wait_blocking, abandon_on_cancel=True, limiter=self._runtime.wait_limiter
        )
        self._exited = True
        with trio.move_on_after(2.0):
            await self._logs_done.wait()  # the last lines (a traceback) reach the log first
        await trio.to_thread.run_sync(self._remove_blocking, abandon_on_cancel=True)
        return status

    def terminate(self) -> None:
        self._signal("SIGTERM")

    def kill(self) -> None:
        self._signal("SIGKILL")

    def _signal(self, signal: str) -> None:
        # terminate/kill are synchronous in the RunningCopy interface: the engine call runs in
        # a thread of its own and nobody waits for it (wait() sees the exit).
        if not self._exited:
            trio.lowlevel.start_thread_soon(
                lambda: self._signal_blocking(signal), lambda _outcome: None
            )

    # -- in threads -------------------------------------------------------------------------

    def _signal_blocking(self, signal: str) -> None:
        try:
            self._runtime.client.api.kill(self.container_id, signal=signal)
        except Exception as exc:  # already gone or not running: wait() reports the exit
            log.debug("signal %s to container %s: %s", signal, self.name, _reason(exc))

    def _wait_blocking(self) -> int:
        import docker.errors

        failing_since: float | None = None
        while True:
            try:
                result = self._runtime.client.api.wait(self.container_id, timeout=None)
                return int(result.get("StatusCode", -1))
            except docker.errors.NotFound:
                return -1  # removed behind our back
            except Exception as exc:  # the engine restarts or hiccups: retry, bounded
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > ENGINE_RETRY_S:
                    log.error("lost track of container %s: %s", self.name, _reason(exc))
                    return -1
                time.sleep(0.5)

    def _forward_logs(self) -> None:
        """The container's output to the gateway's stderr, as a local worker's would go."""
        try:
            for chunk in self._runtime.client.api.logs(
                self.container_id, stream=True, follow=True
            ):
                os.write(2, chunk)
        except Exception as exc:
            log.debug("log stream of container %s ended: %s", self.name, _reason(exc))

    def _remove_blocking(self) -> None:
        try:
            self._runtime.client.api.remove_container(self.container_id, force=True)
        except Exception as exc:
            log.debug("removing container %s: %s", self.name, _reason(exc))


class DockerRuntime:
    name = "docker"

    def __init__(self, options: DockerOptions | None = None) -> None:
        self.options = options or DockerOptions()
        self.gateway_pid = os.getpid()
        self.user = f"{os.getuid()}:{os.getgid()}"
        self.pulls: dict[str, PullProgress] = {}  # the last pull of each image
        self.wait_limiter = trio.CapacityLimiter(10_000)  # one parked thread per container
        self._client: Any = None
        self._client_lock = trio.Lock()
        self._pull_locks: dict[str, trio.Lock] = {}
        self._starts = 0
        self._tty = sys.stderr.isatty()

    @property
    def engine(self) -> str:
        return self.options.host or os.environ.get("DOCKER_HOST", "") or DEFAULT_ENGINE

    @property
    def client(self) -> Any:
        if self._client is None:
            raise DockerError("not connected to the Docker engine")
        return self._client

    # -- Runtime ----------------------------------------------------------------------------

    async def start(self, spec: CopySpec) -> DockerCopy:
        if not spec.image:
            raise DockerError(f"model {spec.model!r} has no address (image) for the docker runtime")
        await self._connect()
        await self._ensure_image(spec.image)
        self._starts += 1
        name = f"inferoxy-{self.gateway_pid}-{spec.model}-{spec.copy_id}-{self._starts}"
        config = container_config(
            spec, self.options, gateway_pid=self.gateway_pid, user=self.user, name=name,
            log_level=os.environ.get("INFEROXY_LOG_LEVEL", "INFO"),
        )
        container_id, pid = await trio.to_thread.run_sync(self._create_and_start, config)
        return DockerCopy(self, container_id, name, pid)

    async def sweep_orphans(self) -> int:
        """Remove the containers of gateways that are gone (killed: no clean shutdown)."""
        try:
            await self._connect()
        except DockerError as exc:
            log.error("%s; model copies will not start until it is reachable", exc)
            return 0
        removed = await trio.to_thread.run_sync(self._sweep_blocking)
        if removed:
            log.info("removed %d container(s) left by dead gateways: %s",
                     len(removed), ", ".join(removed))
        return len(removed)

    def progress(self, image: str) -> str:
        pull = self.pulls.get(image)
        return pull.summary() if pull is not None and pull.finished is None else ""

    def status(self) -> dict[str, Any]:
        """The engine and the image pulls, for a status page."""
        return {"engine": self.engine,
                "pulls": {image: p.to_status() for image, p in self.pulls.items()}}

    # -- engine -----------------------------------------------------------------------------

    async def _connect(self) -> None:
        async with self._client_lock:
            if self._client is None:
                self._client = await trio.to_thread.run_sync(self._connect_blocking)
                log.info("Docker engine at %s", self.engine)

    def _connect_blocking(self) -> Any:
        import docker

        env = dict(os.environ)
        if self.options.host:
            env["DOCKER_HOST"] = self.options.host
        try:
            # The engine's API version first, on a client that does no I/O when made (an
            # auto-versioned one that fails in its constructor leaks its socket).
            probe = docker.from_env(environment=env,
                                    version=docker.constants.MINIMUM_DOCKER_API_VERSION)
            try:
                version = probe.version(api_version=False)["ApiVersion"]
            finally:
                probe.close()
            return docker.from_env(environment=env, version=version, max_pool_size=64,
                                   timeout=60)
        except Exception as exc:
            if not isinstance(exc, (*_engine_errors(), ValueError)):  # ValueError: a bad URL
                raise
            raise DockerError(f"cannot reach the Docker engine at {self.engine}: "
                              f"{_unreachable_reason(exc)}") from None

    def check_engine(self) -> None:
        """Connect now, blocking, and hang up: ``DockerError`` (one line) if the engine does
        not answer. ``inferoxy serve`` calls it before it starts, so a missing engine or a
        wrong ``--docker-host`` stops it at once instead of failing at the first copy."""
        client = self._connect_blocking()
        client.close()

    def _create_and_start(self, config: dict[str, Any]) -> tuple[str, int | None]:
        errors = _engine_errors()
        image = config["image"]
        try:
            container = self.client.containers.create(**config)
        except errors as exc:
            raise DockerError(f"cannot create a container of {image}: {_reason(exc)}") from None
        try:
            container.start()
            container.reload()
        except errors as exc:
            try:
                container.remove(force=True)
            except errors:
                pass
            raise DockerError(f"cannot start a container of {image}: {_reason(exc)}") from None
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        return container.id, pid or None  # 0: it has exited already

    def _sweep_blocking(self) -> list[str]:
        removed: list[str] = []
        try:
            containers = self.client.containers.list(all=True, ignore_removed=True,
                                                     filters={"label": LABEL_GATEWAY})
        except _engine_errors() as exc:
            log.error("cannot list containers to sweep orphans: %s", _reason(exc))
            return removed
        for container in containers:
            owner = container.labels.get(LABEL_GATEWAY, "")
            if not owner.isdecimal():
                continue
            # Our own pid on a container at our start: a dead gateway's, whose pid we reuse.
            if int(owner) != self.gateway_pid and pid_alive(int(owner)):
                continue
            try:
                container.remove(force=True)
                removed.append(container.name)
            except _engine_errors() as exc:
                log.warning("cannot remove orphan container %s: %s", container.name,
                            _reason(exc))
        return removed

    # -- images -----------------------------------------------------------------------------

    async def _ensure_image(self, image: str) -> None:
        lock = self._pull_locks.setdefault(image, trio.Lock())
        async with lock:  # copies of one model wait for one pull
            if await trio.to_thread.run_sync(self._image_present, image):
                return
            progress = PullProgress(image)
            self.pulls[image] = progress
            log.info("pulling image %s from %s", image, registry_of(image))
            try:
                await trio.to_thread.run_sync(self._pull_blocking, progress,
                                              abandon_on_cancel=True)
            except DockerError as exc:
                progress.error = str(exc)
                raise
            finally:
                progress.finished = time.monotonic()
            mb = sum(layer.total for layer in progress.layers.values()) / 1e6
            log.info("pulled image %s in %.1fs (%d layers, %.1f MB downloaded)", image,
                     progress.finished - progress.started, len(progress.layers), mb)

    def _image_present(self, image: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        except _engine_errors() as exc:
            raise DockerError(f"cannot inspect image {image}: {_reason(exc)}") from None
        return True

    def _pull_blocking(self, progress: PullProgress) -> None:
        image = progress.image
        logged = drawn = 0.0
        try:
            stream = self.client.api.pull(image, stream=True, decode=True,
                                          auth_config=auth_for(image, self.options))
            for event in stream:
                if "error" in event:
                    raise ImagePullError(f"pulling image {image} failed: "
                                         f"{str(event['error']).strip()}")
                progress.update(event)
                now = time.monotonic()
                if now - logged >= LOG_EVERY_S and progress.layers:
                    logged = now
                    log.info("%s — %s", progress.summary(), progress.layer_lines())
                if self._tty and now - drawn >= BAR_EVERY_S:
                    drawn = now
                    sys.stderr.write(progress_bar(progress))
                    sys.stderr.flush()
        except _engine_errors() as exc:
            raise ImagePullError(f"pulling image {image} failed: {_reason(exc)}") from None
        finally:
            if self._tty and drawn:
                sys.stderr.write(progress_bar(progress) + "\n")
                sys.stderr.flush()
        # The engine ends some failed pulls without an error event: check.
        if not self._image_present(image):
            raise ImagePullError(f"pulling image {image} failed: the engine does not have it")
