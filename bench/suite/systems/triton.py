"""Plain NVIDIA Triton: the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel bundles,
on a generated model repository (``config.pbtxt`` + the Python-backend ``model.py`` of
``bench/peers/triton_model.py``), its dynamic batcher set to the model's batch size and delay,
one CPU instance per copy. Triton's C++ front end, the model in a stub process fed through
shared memory: the peer closest to Inferoxy's architecture.

Pitfalls handled here (docs/facts.md): the stub links the interpreter's ``libpython3.11`` (its
lib dir goes first on ``LD_LIBRARY_PATH``), and it must import numpy 1.x (the peer venv's
site-packages go first on ``PYTHONPATH``; with numpy 2 every output comes back empty).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

from bench.suite import procs
from bench.suite.scenario import Model, Tensor
from bench.suite.systems.base import (
    ROOT,
    Running,
    StartContext,
    base_env,
    missing_venv,
    venv_python,
)

PEER_MODEL = ROOT / "bench" / "peers" / "triton_model.py"


def pytriton_dir(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import pytriton, os; "
                          "print(os.path.dirname(pytriton.__file__))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return Path(out.stdout.strip())


def site_packages(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import sysconfig; "
                          "print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def peer_version(python: Path, dist: str) -> str:
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m, sys; "
                          f"print(m.version({dist!r}))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "?"


def config_pbtxt(model: Model) -> str:
    def tensors(kind: str, ts: tuple[Tensor, ...]) -> str:
        rows = [f'  {{ name: "{t.name}" data_type: TYPE_{t.datatype} '
                f'dims: [ {", ".join(map(str, t.shape))} ] }}' for t in ts]
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    params = {"entrypoint": model.entrypoint, "root": str(ROOT),
              "model_parameters": json.dumps(model.parameters)}
    param_text = "".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}\n'
        for k, v in params.items())
    if model.stateless:
        scheduling = f"dynamic_batching {{ max_queue_delay_microseconds: " \
                     f"{model.max_queue_delay_us} }}\n"
    else:  # the sequence batcher hands the model START / END / CORRID with every request
        idle = int(model.raw.get("max_sequence_idle_us", 5_000_000))
        scheduling = (
            f"sequence_batching {{\n  max_sequence_idle_microseconds: {idle}\n"
            "  control_input [\n"
            '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START '
            "fp32_false_true: [ 0, 1 ] } ] },\n"
            '    { name: "END" control [ { kind: CONTROL_SEQUENCE_END '
            "fp32_false_true: [ 0, 1 ] } ] },\n"
            '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID '
            "data_type: TYPE_UINT64 } ] }\n  ]\n}\n")
    return (f'name: "{model.name}"\nbackend: "python"\nmax_batch_size: {model.batch_size}\n'
            + tensors("input", model.inputs) + tensors("output", model.outputs)
            + scheduling
            + f"instance_group [ {{ count: {model.copies} kind: KIND_CPU }} ]\n" + param_text)


def write_repository(models: tuple[Model, ...], where: Path) -> Path:
    repo = where / "model_repository"
    shutil.rmtree(repo, ignore_errors=True)
    for model in models:
        (repo / model.name / "1").mkdir(parents=True)
        (repo / model.name / "config.pbtxt").write_text(config_pbtxt(model))
        shutil.copy(PEER_MODEL, repo / model.name / "1" / "model.py")
    return repo


def backend_dir(dist: Path, where: Path) -> Path:
    """A backend directory with the python backend and the stub for this Python."""
    backends = where / "backends"
    python = backends / "python"
    shutil.rmtree(backends, ignore_errors=True)
    python.mkdir(parents=True)
    for item in (dist / "tritonserver" / "backends" / "python").iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    stub = dist / "tritonserver" / "python_backend_stubs" / sysconfig.get_python_version() \
        / "triton_python_backend_stub"
    (python / "triton_python_backend_stub").symlink_to(stub)
    return backends


def triton_env(python: Path, dist: Path) -> dict[str, str]:
    env = base_env([site_packages(python)])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = [libdir, str(dist.parent / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    return env


class Triton:
    name: str = "triton"
    offers: tuple[str, ...] = ("http-json", "http-binary", "http-shm", "grpc", "grpc-shm",
                               "sequence-http")

    def available(self) -> str | None:
        return missing_venv("triton")

    def start(self, ctx: StartContext, stack: contextlib.ExitStack) -> Running:
        ctx.work.mkdir(parents=True, exist_ok=True)
        python = venv_python("triton")
        dist = pytriton_dir(python)
        repo = write_repository(ctx.models, ctx.work)
        http, grpc, metrics = procs.free_port(), procs.free_port(), procs.free_port()
        command = procs.pinned(
            [str(dist / "tritonserver" / "bin" / "tritonserver"),
             f"--model-repository={repo}", f"--backend-directory={backend_dir(dist, ctx.work)}",
             f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
             "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
             "--metrics-address=127.0.0.1", "--log-verbose=0", "--exit-on-error=true",
             "--strict-readiness=true"],
            ctx.pinning.server)
        log = ctx.work / "server.log"
        proc = stack.enter_context(procs.owned(command, log=log, env=triton_env(python, dist)))
        procs.wait_until(lambda: procs.http_ok(f"http://127.0.0.1:{http}/v2/health/ready"),
                         "tritonserver", ctx.startup_timeout_s, proc, log)
        return Running(self.name, proc.pid, http=f"127.0.0.1:{http}", grpc=f"127.0.0.1:{grpc}",
                       metrics=f"http://127.0.0.1:{metrics}", v2_stats=True,
                       version="tritonserver 2.51 (nvidia-pytriton "
                               f"{peer_version(python, 'nvidia-pytriton')})",
                       command=command)
