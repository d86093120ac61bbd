"""PyTriton: Triton with the model in the user's Python process (one more hop, over ZeroMQ),
run from ``.venv-bench-triton`` by ``bench/peers/pytriton_server.py``."""

from __future__ import annotations

import contextlib
import json
import os
import sysconfig

from bench.suite import procs
from bench.suite.systems.base import (
    ROOT,
    Running,
    StartContext,
    base_env,
    missing_venv,
    venv_python,
)
from bench.suite.systems.triton import peer_version


class PyTriton:
    name: str = "pytriton"
    offers: tuple[str, ...] = ("http-json", "http-binary", "http-shm", "grpc", "grpc-shm")

    def available(self) -> str | None:
        return missing_venv("triton")

    def start(self, ctx: StartContext, stack: contextlib.ExitStack) -> Running:
        ctx.work.mkdir(parents=True, exist_ok=True)
        python = venv_python("triton")
        http, grpc, metrics = procs.free_port(), procs.free_port(), procs.free_port()
        spec = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "models": [
            {"name": m.name, "entrypoint": m.entrypoint, "parameters": m.parameters,
             "batch_size": m.batch_size, "max_queue_delay_us": m.max_queue_delay_us,
             "copies": m.copies,
             "inputs": [[t.name, t.dtype, list(t.shape)] for t in m.inputs],
             "outputs": [[t.name, t.dtype, list(t.shape)] for t in m.outputs]}
            for m in ctx.models]}
        spec_file = ctx.work / "spec.json"
        spec_file.write_text(json.dumps(spec))
        command = procs.pinned([str(python), "-m", "bench.peers.pytriton_server",
                                str(spec_file)], ctx.pinning.server)
        log = ctx.work / "server.log"
        env = base_env()  # the stub links libpython3.11: the interpreter's own comes first
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH")) if p)
        proc = stack.enter_context(procs.owned(command, log=log, env=env, cwd=ROOT))
        procs.wait_until(lambda: all(procs.http_ok(
            f"http://127.0.0.1:{http}/v2/models/{m.name}/ready") for m in ctx.models),
            "pytriton", ctx.startup_timeout_s, proc, log)
        return Running(self.name, proc.pid, http=f"127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}",
                       metrics=f"http://127.0.0.1:{metrics}", v2_stats=True,
                       version=f"nvidia-pytriton {peer_version(python, 'nvidia-pytriton')}",
                       command=command)
