"""Ray Serve (``.venv-bench-ray``) with ``@serve.batch``, v2 JSON only (its deployment parses
the v2 body itself: Ray Serve has no v2 protocol), started by ``bench/peers/ray_app.py``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

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


class RayServe:
    name: str = "ray"
    offers: tuple[str, ...] = ("http-json",)

    def available(self) -> str | None:
        return missing_venv("ray")

    def start(self, ctx: StartContext, stack: contextlib.ExitStack) -> Running:
        ctx.work.mkdir(parents=True, exist_ok=True)
        python = venv_python("ray")
        http = procs.free_port()
        spec = {"http_port": http, "num_cpus": os.cpu_count() or 1, "models": [
            {"name": m.name, "entrypoint": m.entrypoint, "parameters": m.parameters,
             "batch_size": m.batch_size, "max_queue_delay_us": m.max_queue_delay_us,
             "copies": m.copies, "inputs": [[t.name, t.dtype, list(t.shape)] for t in m.inputs]}
            for m in ctx.models]}
        spec_file = ctx.work / "spec.json"
        spec_file.write_text(json.dumps(spec))
        command = procs.pinned([str(python), "-m", "bench.peers.ray_app", str(spec_file)],
                               ctx.pinning.server)
        log = ctx.work / "server.log"
        # Ray's socket paths must stay under 107 bytes: a short temp dir of its own
        tmp = tempfile.mkdtemp(prefix="ifxray")
        stack.callback(shutil.rmtree, tmp, True)
        env = base_env() | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": tmp}
        proc = stack.enter_context(procs.owned(command, log=log, env=env, cwd=ROOT,
                                               stop_timeout_s=20))
        procs.wait_until(lambda: "RAY READY" in log.read_text(errors="replace"),
                         "ray serve", ctx.startup_timeout_s, proc, log)
        return Running(self.name, proc.pid, http=f"127.0.0.1:{http}",
                       version=f"ray[serve] {peer_version(python, 'ray')}", command=command)
