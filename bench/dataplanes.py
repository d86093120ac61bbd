"""One process vs N data-plane processes (``inferoxy serve --workers N``), one run.

    python -m bench.dataplanes [--duration 5] [--workers 0,1,2] [--connections 16,1]
                               [--queue-delay-us N]

For each setting it starts ``inferoxy serve --models bench/models.yaml``, drives it with
``wrk`` (the scenarios of ``bench.http``: tiny v2 JSON and a 224x224x3 binary image) and
prints a Markdown table: throughput, latency percentiles, the average batch the copies ran,
and CPU time per request (``/proc/<pid>/stat`` utime+stime over the run, divided by the
requests answered) of the control process, of the data-plane processes together, and of
the model's copies. The control process is what every request would cross if it did any
per-request work: its CPU per request is the serial cost that bounds scaling (with
``--workers 0`` it is the whole data path). Numbers are only comparable within one run: the
machines are shared and noisy.
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


def child_pids(core: int, marker: bytes) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
            status = (proc / "status").read_text()
        except OSError:
            continue
        if f"\nPPid:\t{core}\n" in status and marker in argv:
            pids.append(int(proc.name))
    return pids


def run(workers: int, duration: int, models: str, connections: list[int]) -> list[str]:
    gw_port, metrics_port = free_port(), free_port()
    others = [arg for flag in ("--grpc-port", "--ws-port", "--zmq-port", "--admin-port")
              for arg in (flag, str(free_port()))]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "inferoxy", "serve", "--models", models,
         "--http-port", str(gw_port), "--metrics-port", str(metrics_port), *others,
         "--workers", str(workers), "--log-level", "WARNING"], cwd=ROOT, env=env)
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/v2/health/ready")
        bridges = child_pids(gateway.pid, b"bridges.dataplane")
        copies = child_pids(gateway.pid, b"worker")
        assert len(bridges) == workers, bridges
        for sc in SCENARIOS:
            if sc.connections not in connections:
                continue
            stats_url = f"http://127.0.0.1:{gw_port}/v2/models/{sc.model}/stats"
            before = json.load(urllib.request.urlopen(stats_url))["model_stats"][0]
            core0, bridges0 = cpu_s(gateway.pid), sum(cpu_s(p) for p in bridges)
            copies0 = sum(cpu_s(p) for p in copies)
            ours = wrk(f"http://127.0.0.1:{gw_port}/v2/models/{sc.model}/infer", sc.lua,
                       sc.connections, duration)
            core1, bridges1 = cpu_s(gateway.pid), sum(cpu_s(p) for p in bridges)
            copies1 = sum(cpu_s(p) for p in copies)
            after = json.load(urllib.request.urlopen(stats_url))["model_stats"][0]
            n = after["inference_stats"]["success"]["count"] - \
                before["inference_stats"]["success"]["count"]
            execs = after["execution_count"] - before["execution_count"]
            rows_in = after["inference_count"] - before["inference_count"]
            core_us = (core1 - core0) / max(n, 1) * 1e6
            bridge_us = (bridges1 - bridges0) / max(n, 1) * 1e6
            copies_us = (copies1 - copies0) / max(n, 1) * 1e6
            label = "one process" if workers == 0 else f"{workers} data-plane"
            rows.append(
                f"| {sc.name} | {label} | {ours['rps']:.0f} "
                f"| {ours['p50']:.2f} | {ours['p99']:.2f} | {rows_in / max(execs, 1):.1f} "
                f"| {core_us:.1f} | {bridge_us:.0f} | {copies_us:.0f} |")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", default="0,1,2", help="settings to compare, e.g. 0,2")
    parser.add_argument("--connections", default="16,1", help="scenarios' connections to run")
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
    conns = [int(c) for c in args.connections.split(",") if c]
    print("| scenario | data path | req/s | p50 ms | p99 ms | avg batch | control CPU µs/req "
          "| data planes CPU µs/req | copies CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tmp:
        results = {w: run(w, args.duration, str(models), conns) for w in settings}
    for i in range(len(next(iter(results.values())))):  # grouped by scenario
        for w in settings:
            print(results[w][i], flush=True)


if __name__ == "__main__":
    main()
