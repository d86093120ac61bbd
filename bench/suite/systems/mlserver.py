"""Seldon MLServer (the Python v2 server: uvicorn + FastAPI, gRPC) from
``.venv-bench-mlserver``, with ``parallel_workers: 0`` (1.7 crashes at start with its default
under uvloop 0.23: docs/facts.md) and adaptive batching set to the model's batch size and delay.
It has no binary tensor extension, no shared memory and no ``/config``: HTTP JSON and gRPC."""

from __future__ import annotations

import contextlib
import json
import shutil

from bench.suite import procs
from bench.suite.systems.base import (
    Running,
    StartContext,
    base_env,
    missing_venv,
    venv_python,
)
from bench.suite.systems.triton import peer_version


class MLServer:
    name: str = "mlserver"
    offers: tuple[str, ...] = ("http-json", "grpc")

    def available(self) -> str | None:
        return missing_venv("mlserver")

    def start(self, ctx: StartContext, stack: contextlib.ExitStack) -> Running:
        python = venv_python("mlserver")
        root = ctx.work / "models"
        shutil.rmtree(root, ignore_errors=True)
        http, grpc, metrics = procs.free_port(), procs.free_port(), procs.free_port()
        root.mkdir(parents=True)
        (root / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
            "parallel_workers": 0, "debug": False}))
        for m in ctx.models:
            (root / m.name).mkdir()
            (root / m.name / "model-settings.json").write_text(json.dumps({
                "name": m.name, "implementation": "bench.peers.mlserver_runtime.Served",
                "max_batch_size": m.batch_size,
                "max_batch_time": m.max_queue_delay_us / 1e6,
                "parameters": {"extra": {"entrypoint": m.entrypoint,
                                         "model_parameters": m.parameters}}}))
        command = procs.pinned([str(python.parent / "mlserver"), "start", str(root)],
                               ctx.pinning.server)
        log = ctx.work / "server.log"
        proc = stack.enter_context(procs.owned(command, log=log, env=base_env(), cwd=root))
        procs.wait_until(lambda: all(procs.http_ok(
            f"http://127.0.0.1:{http}/v2/models/{m.name}/ready") for m in ctx.models),
            "mlserver", ctx.startup_timeout_s, proc, log)
        return Running(self.name, proc.pid, http=f"127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}",
                       metrics=f"http://127.0.0.1:{metrics}",
                       version=f"mlserver {peer_version(python, 'mlserver')}",
                       command=command)
