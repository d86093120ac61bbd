"""HTTP served in the core process vs by N bridge processes (``--bridge-workers``), one run.

    python -m bench.bridge_workers [--duration 5] [--workers 0,1,2] [--queue-delay-us N]

For each setting it starts ``inferoxy serve --models bench/models.yaml``, drives it with
``wrk`` (the scenarios of ``bench.http``: tiny v2 JSON and a 224x224x3 binary image, both at
16 connections) and prints a Markdown table: throughput, latency percentiles, the average
batch the core formed, and CPU time per request of the core process and of the bridge
processes (``/proc/<pid>/stat`` utime+stime over the run, divided by the requests answered).
The core's CPU per request bounds what any number of bridge processes can reach: the core
saturates at ``1 / core_cpu_per_request`` requests per second. Numbers are only comparable
within one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench.http import ROOT, SCENARIOS, free_port, wait_http, wrk

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def bridge_pids(core: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if f"\nPPid:\t{core}\n" in status and b"bridges.procs" in argv:
            pids.append(int(proc.name))
    return pids


def run(workers: int, duration: int, models: str) -> list[str]:
    gw_port, metrics_port = free_port(), free_port()
    others = [arg for flag in ("--grpc-port", "--ws-port", "--zmq-port", "--admin-port")
              for arg in (flag, str(free_port()))]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "inferoxy", "serve", "--models", models,
         "--http-port", str(gw_port), "--metrics-port", str(metrics_port), *others,
         "--bridge-workers", str(workers), "--log-level", "WARNING"], cwd=ROOT, env=env)
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/v2/health/ready")
        bridges = bridge_pids(gateway.pid)
        assert len(bridges) == workers, bridges
        for sc in SCENARIOS:
            if sc.connections == 1:
                continue
            stats_url = f"http://127.0.0.1:{gw_port}/v2/models/{sc.model}/stats"
            before = json.load(urllib.request.urlopen(stats_url))["model_stats"][0]
            core0, bridges0 = cpu_s(gateway.pid), sum(cpu_s(p) for p in bridges)
            ours = wrk(f"http://127.0.0.1:{gw_port}/v2/models/{sc.model}/infer", sc.lua,
                       sc.connections, duration)
            core1, bridges1 = cpu_s(gateway.pid), sum(cpu_s(p) for p in bridges)
            after = json.load(urllib.request.urlopen(stats_url))["model_stats"][0]
            n = after["inference_stats"]["success"]["count"] - \
                before["inference_stats"]["success"]["count"]
            execs = after["execution_count"] - before["execution_count"]
            rows_in = after["inference_count"] - before["inference_count"]
            core_us = (core1 - core0) / max(n, 1) * 1e6
            bridge_us = (bridges1 - bridges0) / max(n, 1) * 1e6
            label = "in the core" if workers == 0 else f"{workers} bridge process" + (
                "es" if workers > 1 else "")
            rows.append(
                f"| {sc.name} | {label} | {ours['rps']:.0f} | {ours['p50']:.2f} "
                f"| {ours['p99']:.2f} | {rows_in / max(execs, 1):.1f} | {core_us:.0f} "
                f"| {bridge_us:.0f} | {1e6 / max(core_us, 1):.0f} |")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", default="0,1,2", help="settings to compare, e.g. 0,2")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="override the models' max_queue_delay_us (fuller batches show "
                             "the core's cost per request when its queues are deep)")
    args = parser.parse_args()
    models = ROOT / "bench" / "models.yaml"
    tmp = tempfile.TemporaryDirectory()
    if args.queue_delay_us is not None:
        text = re.sub(r"max_queue_delay_us: \d+", f"max_queue_delay_us: {args.queue_delay_us}",
                      models.read_text())
        models = Path(tmp.name) / "models.yaml"
        models.write_text(text)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    settings = [int(w) for w in re.split(r"[, ]+", args.workers) if w]
    print("| scenario | HTTP served | req/s | p50 ms | p99 ms | avg batch | core CPU µs/req "
          "| bridges CPU µs/req | core ceiling req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tmp:
        results = {w: run(w, args.duration, str(models)) for w in settings}
    for i in range(len(next(iter(results.values())))):  # grouped by scenario
        for w in settings:
            print(results[w][i], flush=True)


if __name__ == "__main__":
    main()
