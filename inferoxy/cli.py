"""The ``inferoxy`` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import fields
from typing import Any

import trio

from gateway.config import ConfigError
from gateway.declaration import load_declarations
from gateway.logs import setup_logging
from gateway.registry import RegistryUnreachable
from gateway.runtimes import runtime_for
from gateway.settings import Settings
from supervisor.cpus import parse_workers
from supervisor.docker import DockerError, DockerRuntime
from supervisor.gpus import parse_gpu_list

EXIT_CONFIG = 2
EXIT_REGISTRY = 3  # --redis given and Redis unreachable at start
EXIT_ENGINE = 4  # --runtime docker and the Docker engine unreachable at start


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(f"INFEROXY_{name.upper()}")
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


HELP = {
    "models": "models.yaml to serve",
    "host": "address the HTTP, gRPC, ZeroMQ and metrics servers listen on",
    "http_port": "Open Inference Protocol v2 over HTTP",
    "grpc_port": "Open Inference Protocol v2 over gRPC",
    "metrics_port": "Prometheus /metrics",
    "zmq_port": "ZeroMQ bridge (Arrow batches over a ROUTER socket)",
    "ws_port": "WebSocket streams (one connection = one sequence)",
    "ws_max_inflight": "frames in flight per WebSocket stream before reading pauses",
    "runtime": "what runs model copies: local (processes), docker (containers) or attach "
               "(the platform starts them: inferoxy worker --model NAME --run-dir DIR)",
    "run_dir": "directory of the worker sockets (needed by --runtime attach: the directory "
               "the copies share with the gateway); default: a private temporary one",
    "gpus": "GPU indices to use, e.g. 0,1,3 ('' for none); default: discover",
    "shm_prefix": "name prefix of this gateway's /dev/shm segments",
    "shm_limit_bytes": "bytes of shared memory for request inputs",
    "max_body_bytes": "largest request body accepted (413 beyond)",
    "allow_client_shm": "allow clients to register system shared-memory regions",
    "max_client_regions": "most client regions registered at once",
    "max_tensor_elements": "most elements of one input tensor, batch dimension included (400)",
    "max_inputs": "most inputs in one request (400)",
    "max_outputs": "most outputs one request names (400)",
    "max_bytes_elements": "most elements of one BYTES input tensor (400)",
    "max_bytes_element_bytes": "largest element of a BYTES input tensor, in bytes (400)",
    "max_frame_header_bytes": "largest JSON header of a WebSocket or ZeroMQ frame (400)",
    "max_grpc_metadata_bytes": "largest gRPC request metadata (RESOURCE_EXHAUSTED beyond)",
    "max_live_sequences": "most sequences open or waiting at once, all models (503 beyond)",
    "request_timeout_s": "deadline of a request that names no timeout",
    "drain_timeout_s": "how long shutdown waits for in-flight requests",
    "drain_grace_s": "on SIGTERM, readiness goes false and requests are still served this "
                     "long before new ones are refused (behind a balancer: longer than its "
                     "health check takes to notice)",
    "startup_timeout_s": "how long a copy may take to load its model",
    "heartbeat_s": "worker heartbeat interval",
    "heartbeat_timeout_s": "a copy silent this long is killed and restarted",
    "hang_timeout_s": "a copy whose batch (or health check) runs longer is killed and restarted",
    "health_interval_s": "how often copies call their model's health(), if it has one",
    "crash_loop_exits": "this many exits of a copy within --crash-loop-window-s is a crash loop",
    "crash_loop_window_s": "the crash-loop window (the model is unavailable while it loops)",
    "simulate_gpus": "pretend to have N GPUs (placement, autoscaling); copies run on the CPU",
    "alert_webhook": "URL alerts are POSTed to as JSON (Slack-compatible); none: log only",
    "alert_recover_hold_s": "a 'recovered' alert is sent once recovery held this long",
    "docker_host": "Docker engine URL, e.g. unix:///run/docker.sock (default: $DOCKER_HOST)",
    "docker_registry": "registry the docker credentials are for, e.g. registry.example.com:5000 "
                       "('' = Docker Hub)",
    "docker_username": "registry login used to pull model images",
    "docker_password": "registry password used to pull model images",
    "docker_network": "Docker network model containers are attached to",
    "docker_volumes": "extra bind mounts for model containers: SRC:DST[:ro],...",
    "redis": "Redis URL of a shared model registry, e.g. redis://host:6379/0; models.yaml is "
             "imported into it at start (default: an in-process registry)",
    "redis_prefix": "prefix of every registry key and channel in Redis",
    "admin_host": "address the management API listens on (loopback unless told otherwise)",
    "admin_port": "management API: /v2/admin/models (add, replace, patch, delete)",
    "admin_token": "bearer token the management API and the v2 repository endpoints require",
    "max_header_bytes": "largest HTTP request head (request line and headers; 431 beyond)",
    "header_timeout_s": "an HTTP request head that takes longer is answered 408 (slow clients)",
    "keepalive_timeout_s": "an idle HTTP keep-alive connection is closed after this",
    "max_connections": "open HTTP connections (per process); one more is answered 503 and "
                       "closed",
    "workers": "data-plane processes serving HTTP on the shared port, each batching "
               "stateless models itself: 'auto' (one per usable core: affinity and cgroup "
               "quota; one below 4 cores) or N (0: everything in one process)",
    "log_level": "DEBUG, INFO, WARNING, ERROR",
    "log_format": "text or json",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferoxy", description="Inferoxy model gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve the models of a models.yaml",
        description="Every flag can also be set with INFEROXY_<FLAG> (e.g. INFEROXY_HTTP_PORT).",
    )
    sub.add_parser("worker", add_help=False,
                   help="one model copy that attaches to a gateway started with --runtime "
                        "attach (inferoxy worker --help)")
    sub.add_parser("bench", add_help=False,
                   help="benchmark Inferoxy beside Triton, PyTriton, MLServer and Ray Serve "
                        "(inferoxy bench --help)")
    for f in fields(Settings):
        default = _env(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            serve.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{HELP.get(f.name, '')} (default: {default!r})")
            continue
        kind = type(f.default) if f.default is not None else str
        secret = "password" in f.name or "token" in f.name
        shown = "***" if secret and default else repr(default)  # never echo it
        serve.add_argument(flag, type=kind, default=default,
                           help=f"{HELP.get(f.name, '')} (default: {shown})")
    return parser


# What ``inferoxy bench`` imports beyond the server's own dependencies (the bench extra).
BENCH_MODULES = ("matplotlib", "tritonclient.http", "tritonclient.grpc")


def missing_modules(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser: bench/suite/runner.py
        missing = missing_modules(BENCH_MODULES)
        if missing:
            print(f"inferoxy bench needs the bench extra (missing: {', '.join(missing)}): "
                  f"pip install -e '.[bench]', or run `make bench`", file=sys.stderr)
            return 2
        from bench.suite.runner import main as bench

        return bench(argv[1:])
    if argv[:1] == ["worker"]:  # its own parser: worker/attach.py (slim: no gateway imports)
        from worker.attach import main as worker

        return worker(argv[1:])
    args = build_parser().parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    setup_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("inferoxy")
    try:
        runtime = runtime_for(settings)  # no I/O: checks the runtime's name and options
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    if isinstance(runtime, DockerRuntime):
        try:
            runtime.check_engine()
        except DockerError as exc:
            log.error("%s", exc)
            return EXIT_ENGINE
    try:
        models = load_declarations(settings.models) if settings.models else {}
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        parse_workers(settings.workers)
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        parse_gpu_list(settings.gpus or "")
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    from inferoxy.serve import serve

    try:
        trio.run(serve, settings, models)
    except RegistryUnreachable as exc:
        log.error("%s", exc)
        return EXIT_REGISTRY
    return 0


if __name__ == "__main__":
    sys.exit(main())
