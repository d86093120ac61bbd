"""Inferoxy itself: ``inferoxy serve`` on the suite's models, every listener on a free port."""

from __future__ import annotations

import contextlib
import os
from importlib import metadata

import yaml

from bench.suite import procs
from bench.suite.systems.base import ROOT, Running, StartContext, base_env, main_python


class Inferoxy:
    name: str = "inferoxy"
    offers: tuple[str, ...] = ("http-json", "http-binary", "http-shm", "grpc", "grpc-shm", "zmq",
              "sequence-http")

    def available(self) -> str | None:
        return None

    def start(self, ctx: StartContext, stack: contextlib.ExitStack) -> Running:
        ctx.work.mkdir(parents=True, exist_ok=True)
        models_file = ctx.work / "models.yaml"
        models_file.write_text(yaml.safe_dump(
            {"models": {m.name: m.raw for m in ctx.models}}, sort_keys=False))
        ports = {name: procs.free_port() for name in ("http", "grpc", "metrics", "ws", "zmq",
                                                       "admin")}
        gpus = max((m.copies for m in ctx.models if m.raw.get("run_on_gpu")), default=0)
        command = [main_python(), "-m", "inferoxy", "serve", "--models", str(models_file),
                   "--host", "127.0.0.1", "--allow-client-shm",
                   "--shm-prefix", f"ifxb{os.getpid()}", "--log-level", "WARNING",
                   "--simulate-gpus", str(gpus)]
        for name, port in ports.items():
            command += [f"--{name}-port", str(port)]
        command += ctx.extra_args
        command = procs.pinned(command, ctx.pinning.server)
        log = ctx.work / "server.log"
        proc = stack.enter_context(procs.owned(command, log=log, env=base_env(), cwd=ROOT))
        http = f"127.0.0.1:{ports['http']}"
        procs.wait_until(lambda: all(procs.http_ok(f"http://{http}/v2/models/{m.name}/ready")
                                     for m in ctx.models),
                         "inferoxy", ctx.startup_timeout_s, proc, log)
        return Running(self.name, proc.pid, http=http, grpc=f"127.0.0.1:{ports['grpc']}",
                       zmq=f"tcp://127.0.0.1:{ports['zmq']}",
                       metrics=f"http://127.0.0.1:{ports['metrics']}", v2_stats=True,
                       version=metadata.version("inferoxy"), command=command)
