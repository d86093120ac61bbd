"""Tiny gRPC infer: requests per second and the gateway's CPU time per request, for A/B runs.

    python -m bench.grpc_cpu [--tree DIR] [--concurrency 16] [--duration 4] [--threads]

Starts ``inferoxy serve`` from the source tree ``DIR`` (default: this one; give a checkout
of another commit to compare, e.g. ``git archive main | tar -x -C /tmp/main``) with the
suite's ``tiny`` model, pinned to CPU 0 (the whole process tree: the worker too), drives it
with ``bench.suite.grpc_load`` pinned to CPU 1 (one warm-up second, then ``--duration``),
and prints one JSON line: req/s, p50/p99, and the gateway process's user+system CPU per
request from ``/proc`` (with ``--threads``, per thread too). Alternate the trees run by run
on a shared machine; keep each run short.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _threads(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[f"{name}-{'main' if int(tid) == pid else tid}"] = _cpu(f"/proc/{pid}/task/{tid}/stat")
    return out


def _load(target: str, concurrency: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-m", "bench.suite.grpc_load", "--target", target,
         "--model", "tiny", "--concurrency", str(concurrency), "--duration", str(duration)],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(tree: Path, concurrency: int, duration: float, threads: bool) -> dict[str, Any]:
    models = yaml.safe_load((ROOT / "bench" / "suite" / "models.yaml").read_text())["models"]
    with tempfile.TemporaryDirectory() as work:
        models_file = Path(work) / "models.yaml"
        models_file.write_text(yaml.safe_dump({"models": {"tiny": models["tiny"]}}))
        ports = {name: _free_port() for name in ("http", "grpc", "metrics", "ws", "zmq", "admin")}
        command = ["taskset", "-c", "0", sys.executable, "-m", "inferoxy", "serve", "--models",
                   str(models_file), "--host", "127.0.0.1", "--log-level", "WARNING",
                   "--shm-prefix", f"ifxcpu{os.getpid()}"]
        for name, port in ports.items():
            command += [f"--{name}-port", str(port)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        with open(Path(work) / "server.log", "w") as log:
            proc = subprocess.Popen(command, cwd=tree, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            ready = f"http://127.0.0.1:{ports['http']}/v2/models/tiny/ready"
            for _ in range(600):
                try:
                    with urllib.request.urlopen(ready, timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                log_text = (Path(work) / "server.log").read_text()
                raise SystemExit(f"the gateway did not get ready:\n{log_text}")
            target = f"127.0.0.1:{ports['grpc']}"
            _load(target, concurrency, 1.0)  # warm-up
            stat = f"/proc/{proc.pid}/stat"
            before, threads_before = _cpu(stat), _threads(proc.pid)
            result = _load(target, concurrency, duration)
            used, threads_after = _cpu(stat) - before, _threads(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    requests = max(1, result["requests"])
    summary: dict[str, Any] = {
        "tree": str(tree), "req_s": round(result["requests"] / result["seconds"]),
        "errors": result["errors"], "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "gateway_cpu_us_per_req": round(used / requests * 1e6, 1),
    }
    if threads:
        deltas = {name: t - threads_before.get(name, 0.0) for name, t in threads_after.items()}
        summary["threads_us_per_req"] = {
            name: round(d / requests * 1e6, 1)
            for name, d in sorted(deltas.items(), key=lambda kv: -kv[1]) if d > 0
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--threads", action="store_true", help="CPU per request per thread")
    args = parser.parse_args()
    print(json.dumps(run(args.tree.resolve(), args.concurrency, args.duration, args.threads)),
          flush=True)


if __name__ == "__main__":
    main()
