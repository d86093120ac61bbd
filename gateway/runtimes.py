"""Which runtime starts model copies: ``--runtime local`` (processes), ``docker`` or
``attach`` (the platform starts them; they announce themselves)."""

from __future__ import annotations

from gateway.settings import Settings
from supervisor.attach import AttachRuntime
from supervisor.docker import DockerOptions, DockerRuntime, parse_volumes
from supervisor.local import LocalRuntime
from supervisor.runtime import Runtime

RUNTIMES = ("local", "docker", "attach")


def runtime_for(settings: Settings) -> Runtime:
    """The runtime ``settings`` name; ``ValueError`` for an unknown one or bad docker options.

    Creating one does no I/O (the Docker runtime connects to its engine when first used).
    """
    if settings.runtime == "local":
        return LocalRuntime()
    if settings.runtime == "docker":
        return DockerRuntime(DockerOptions(
            host=settings.docker_host,
            registry=settings.docker_registry,
            username=settings.docker_username,
            password=settings.docker_password,
            network=settings.docker_network,
            volumes=parse_volumes(settings.docker_volumes),
        ))
    if settings.runtime == "attach":
        if not settings.run_dir:
            raise ValueError("--runtime attach needs --run-dir: the directory the copies "
                             "share with the gateway (inferoxy worker --run-dir DIR)")
        return AttachRuntime(settings.run_dir)
    raise ValueError(f"runtime {settings.runtime!r} is not available; use one of "
                     f"{', '.join(RUNTIMES)}")
