"""HTTP data-plane benchmark: Inferoxy against bare-HTTP floors, in one run.

    python -m bench.http [--duration 5] [--floors thin,hypercorn]

Starts the floors (``bench.floor``: servers that answer with a canned body, on Inferoxy's own
HTTP/1.1 server and on bare hypercorn) and ``inferoxy serve --models bench/models.yaml`` on
loopback, drives each with ``wrk`` (``apt-get install wrk``) and prints a Markdown table:
throughput, latency percentiles, Inferoxy's ratio to each floor, the gateway process's CPU
time per request (user + system from ``/proc/<pid>/stat`` over the run, workers not counted)
and the average batch size Inferoxy formed. Numbers are only comparable within one run: the
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ('{"inputs":[{"name":"INPUT","datatype":"FP32","shape":[1,16],'
        '"data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}')
IMAGE_HEADER = ('{"inputs":[{"name":"IMAGE","datatype":"UINT8","shape":[1,224,224,3],'
                '"parameters":{"binary_data_size":150528}}],'
                '"outputs":[{"name":"IMAGE","parameters":{"binary_data":true}}]}')


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    lua: str
    connections: int


def lua_json(body: str) -> str:
    return (f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
            "wrk.headers['Content-Type'] = 'application/json'\n")


def lua_binary(header: str, nbytes: int) -> str:
    return (f"local header = '{header}'\nwrk.method = 'POST'\n"
            f"wrk.body = header .. string.rep('\\7', {nbytes})\n"
            "wrk.headers['Content-Type'] = 'application/octet-stream'\n"
            "wrk.headers['Inference-Header-Content-Length'] = tostring(#header)\n")


SCENARIOS = [
    Scenario("tiny JSON, c=1", "tiny", lua_json(TINY), 1),
    Scenario("tiny JSON, c=16", "tiny", lua_json(TINY), 16),
    Scenario("224x224x3 binary, c=16", "image", lua_binary(IMAGE_HEADER, 150528), 16),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, lua: str, connections: int, duration: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua)
        script.flush()
        out = subprocess.run(
            ["wrk", "-t2" if connections > 1 else "-t1", f"-c{connections}", f"-d{duration}s",
             "--latency", "-s", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]]
        return float(m[1]) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    return {"rps": rps, "p50": ms("50%"), "p90": ms("90%"), "p99": ms("99%")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--floors", default="thin,hypercorn",
                        help="comma-separated floors to compare with: thin, hypercorn")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    kinds = [k for k in args.floors.split(",") if k]
    gw_port, metrics_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    floor_ports = {kind: free_port() for kind in kinds}
    floors = [subprocess.Popen([sys.executable, "-m", "bench.floor", str(port), kind],
                               cwd=ROOT, env=env) for kind, port in floor_ports.items()]
    others = [arg for flag in ("--grpc-port", "--ws-port", "--zmq-port", "--admin-port")
              for arg in (flag, str(free_port()))]  # listeners this benchmark does not use
    gateway = subprocess.Popen(
        [sys.executable, "-m", "inferoxy", "serve", "--models", "bench/models.yaml",
         "--http-port", str(gw_port), "--metrics-port", str(metrics_port), *others,
         "--log-level", "WARNING"], cwd=ROOT, env=env)
    try:
        wait_http(f"http://127.0.0.1:{gw_port}/v2/health/ready")
        for port in floor_ports.values():
            wait_http(f"http://127.0.0.1:{port}/")
        floor_cols = "".join(f" {k} floor req/s | ratio |" for k in kinds)
        print(f"| scenario |{floor_cols} inferoxy req/s | p50 ms | p90 ms | p99 ms "
              "| gateway CPU µs/req | avg batch |")
        print("|---|" + "---|---|" * len(kinds) + "---|---|---|---|---|---|")
        for sc in SCENARIOS:
            stats_url = f"http://127.0.0.1:{gw_port}/v2/models/{sc.model}/stats"
            base = {kind: wrk(f"http://127.0.0.1:{port}/", sc.lua, sc.connections,
                              args.duration)
                    for kind, port in floor_ports.items()}
            before = json.load(urllib.request.urlopen(stats_url))["model_stats"][0]
            cpu_before = cpu_seconds(gateway.pid)
            ours = wrk(f"http://127.0.0.1:{gw_port}/v2/models/{sc.model}/infer", sc.lua,
                       sc.connections, args.duration)
            cpu = cpu_seconds(gateway.pid) - cpu_before
            after = json.load(urllib.request.urlopen(stats_url))["model_stats"][0]
            rows = after["inference_count"] - before["inference_count"]
            execs = after["execution_count"] - before["execution_count"]
            requests = max(rows, 1)  # one row per request in every scenario
            cols = "".join(f" {base[k]['rps']:.0f} | {ours['rps'] / base[k]['rps']:.2f} |"
                           for k in kinds)
            print(f"| {sc.name} |{cols} {ours['rps']:.0f} | {ours['p50']:.2f} "
                  f"| {ours['p90']:.2f} | {ours['p99']:.2f} | {cpu / requests * 1e6:.0f} "
                  f"| {rows / max(execs, 1):.1f} |", flush=True)
    finally:
        for p in (gateway, *floors):
            p.send_signal(signal.SIGTERM)
        for p in (gateway, *floors):
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
