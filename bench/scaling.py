"""Throughput against the number of data-plane processes (``inferoxy serve --workers N``).

    python -m bench.scaling [--processes 1,2,4,8] [--copies 4] [--connections-per 32]
                            [--wrk-threads T] [--duration 5]

For each N it starts ``inferoxy serve --workers N`` with the tiny stub model of
``bench/models.yaml`` (identity on 16 FP32, batches of 16, ``--copies`` copies so that the
model is not the bottleneck), drives it with ``wrk`` (tiny v2 JSON, ``N x connections-per``
connections, ``--wrk-threads`` threads) and prints a Markdown table: req/s, the ratio to one
process, the target ``0.75 * N``, latency, and CPU per request (``/proc/<pid>/stat``) of the
control process, of the data-plane processes together and of the copies. The copies' share
of their cores tells whether the model became the bottleneck (near 100 % each: add copies).

A machine with fewer cores than ``N + copies + wrk threads`` measures contention, not
scaling: the table says so in its notes. Numbers compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.dataplanes import child_pids, cpu_s
from bench.http import ROOT, TINY, free_port, lua_json, wait_http

TARGET_EFFICIENCY = 0.75  # of N x one process, up to 8 processes


def models_yaml(copies: int, directory: Path) -> Path:
    path = directory / "models.yaml"
    path.write_text(
        "models:\n"
        "  tiny:\n"
        "    entrypoint: examples.models.stub:Identity\n"
        "    batch_size: 16\n"
        "    max_queue_delay_us: 0\n"
        f"    copies: {copies}\n"
        "    inputs: [{name: INPUT, datatype: FP32, shape: [16]}]\n"
        "    outputs: [{name: INPUT, datatype: FP32, shape: [16]}]\n")
    return path


def wrk(url: str, lua: Path, connections: int, threads: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s",
         "--latency", "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors during the run:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            raise RuntimeError(f"wrk printed no {label}:\n{out}")
        return float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]]

    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no throughput:\n{out}")
    return {"rps": float(m[1]), "p50": ms("50%"), "p99": ms("99%")}


def measure(processes: int, models: Path, lua: Path, args: argparse.Namespace
            ) -> dict[str, float]:
    port = free_port()
    others = [arg for flag in ("--grpc-port", "--ws-port", "--zmq-port", "--admin-port",
                               "--metrics-port")
              for arg in (flag, str(free_port()))]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "inferoxy", "serve", "--models", str(models),
         "--http-port", str(port), *others, "--workers", str(processes),
         "--log-level", "WARNING"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        planes = child_pids(gateway.pid, b"bridges.dataplane")
        copies = child_pids(gateway.pid, b"worker")
        url = f"http://127.0.0.1:{port}/v2/models/tiny/infer"
        connections = processes * args.connections_per
        wrk(url, lua, connections, args.wrk_threads, 1)  # warm-up
        stats = f"http://127.0.0.1:{port}/v2/models/tiny/stats"
        before = json.load(urllib.request.urlopen(stats))["model_stats"][0]
        c0, p0 = cpu_s(gateway.pid), sum(cpu_s(p) for p in planes)
        k0, t0 = sum(cpu_s(p) for p in copies), time.monotonic()
        result = wrk(url, lua, connections, args.wrk_threads, args.duration)
        c1, p1 = cpu_s(gateway.pid), sum(cpu_s(p) for p in planes)
        k1, t1 = sum(cpu_s(p) for p in copies), time.monotonic()
        after = json.load(urllib.request.urlopen(stats))["model_stats"][0]
        n = max(after["inference_stats"]["success"]["count"]
                - before["inference_stats"]["success"]["count"], 1)
        execs = max(after["execution_count"] - before["execution_count"], 1)
        return {**result, "connections": connections,
                "control_us": (c1 - c0) / n * 1e6, "planes_us": (p1 - p0) / n * 1e6,
                "copies_us": (k1 - k0) / n * 1e6, "batch": n / execs,
                "copies_busy": (k1 - k0) / (t1 - t0) / max(len(copies), 1)}
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--connections-per", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=max(1, (os.cpu_count() or 2) // 4))
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    settings = [int(p) for p in re.split(r"[, ]+", args.processes) if p]
    if not settings or min(settings) < 1:
        sys.exit("--processes: counts >= 1")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        models = models_yaml(args.copies, Path(tmp))
        lua = Path(tmp) / "tiny.lua"
        lua.write_text(lua_json(TINY))
        rows = {n: measure(n, models, lua, args) for n in settings}
    base = rows[settings[0]]["rps"] / settings[0]  # per process, at the smallest setting
    print(f"{cores} cores; {args.copies} copies of the stub; wrk with {args.wrk_threads} "
          f"threads, {args.connections_per} connections per process; {args.duration} s each.\n")
    print("| processes | connections | req/s | x one process | target | p50 ms | p99 ms "
          "| avg batch | control µs/req | data planes µs/req | copies µs/req | copies busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['connections']:.0f} | {r['rps']:.0f} | {r['rps'] / base:.2f} "
              f"| {TARGET_EFFICIENCY * n:.2f} | {r['p50']:.2f} | {r['p99']:.2f} "
              f"| {r['batch']:.1f} | {r['control_us']:.1f} | {r['planes_us']:.0f} "
              f"| {r['copies_us']:.0f} | {r['copies_busy']:.0%} |")
    need = max(settings) + args.copies + args.wrk_threads
    if need > cores:
        print(f"\nNote: {need} busy processes/threads on {cores} cores: this run measures "
              "contention for cores, not scaling.")


if __name__ == "__main__":
    main()
