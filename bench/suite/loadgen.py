"""The load generators, each run as a bounded subprocess pinned to the client's cores:

* ``wrk`` with a Lua script whose body is read from a file: v2 JSON over HTTP (every system);
* ``perf_analyzer`` (``bench/perf_analyzer.sh``): HTTP binary, system shared memory (HTTP and
  gRPC) and sequences, for the systems with Triton's full v2 surface (Inferoxy, Triton,
  PyTriton);
* ``bench.suite.grpc_load``: one gRPC client for every system that speaks v2 gRPC;
* ``bench.suite.zmq_load``: Inferoxy's ZeroMQ/Arrow bridge (no one else has it).

Each returns a ``Measurement``; a run with any failed request raises, so a number in a table
always means every request of its window succeeded.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.suite import procs
from bench.suite.scenario import Model, Scenario
from bench.suite.systems.base import ROOT, base_env

PERF_ANALYZER = ROOT / "bench" / "perf_analyzer.sh"
WRK_TIMEOUT = "10s"


class LoadError(RuntimeError):
    """The load generator failed or saw failed requests: no number for this point."""


@dataclass
class Measurement:
    loadgen: str
    requests_per_s: float
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    seconds: float
    command: list[str] = field(default_factory=list)


PA_SYSTEMS = ("inferoxy", "triton", "pytriton")  # Triton's full v2 surface: perf_analyzer works


def loadgens_for(path: str, system: str, scenario_systems: tuple[str, ...]) -> tuple[str, ...]:
    """The load generators a system is measured with on ``path``. gRPC: perf_analyzer where
    it works (the strongest client) and our gRPC client for the others — and for Inferoxy too
    when one of those is in the scenario, so every ratio compares one load generator."""
    if path != "grpc":
        return (loadgen_for(path),)
    if system == "ceiling":  # both clients' ceilings: each row compares within its client
        return ("perf_analyzer", "grpc_load")
    if system not in PA_SYSTEMS:
        return ("grpc_load",)
    if system == "inferoxy" and any(s not in PA_SYSTEMS for s in scenario_systems):
        return ("perf_analyzer", "grpc_load")
    return ("perf_analyzer",)


def loadgen_for(path: str) -> str:
    return {"http-json": "wrk", "http-binary": "perf_analyzer", "http-shm": "perf_analyzer",
            "grpc": "grpc_load", "grpc-shm": "perf_analyzer", "zmq": "zmq_load",
            "sequence-http": "perf_analyzer"}[path]


def sample_inputs(model: Model, rows: int = 1, seed: int = 7) -> dict[str, np.ndarray]:
    """Deterministic inputs: what verification sends and what the load generators send."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.inputs:
        shape = (rows, *t.shape)
        if t.dtype == "uint8":
            out[t.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[t.name] = rng.integers(0, 100, shape).astype(t.dtype)
    return out


def v2_json_body(model: Model, params: dict[str, object] | None = None) -> bytes:
    doc: dict[str, object] = {"inputs": [
        {"name": k, "datatype": t.datatype, "shape": list(v.shape), "data": v.ravel().tolist()}
        for (k, v), t in zip(sample_inputs(model).items(), model.inputs, strict=True)]}
    if params:
        doc["parameters"] = params
    return json.dumps(doc, separators=(",", ":")).encode()


def wrk(url: str, body_file: Path, concurrency: int, duration_s: float, cores: str | None,
        work: Path) -> Measurement:
    if shutil.which("wrk") is None:
        raise LoadError("wrk not found (Debian/Ubuntu: apt-get install wrk)")
    script = work / f"wrk-{body_file.stem}.lua"
    script.write_text(
        f"local f = assert(io.open({json.dumps(str(body_file))}, 'rb'))\n"
        "wrk.method = 'POST'\nwrk.body = f:read('*a')\nf:close()\n"
        "wrk.headers['Content-Type'] = 'application/json'\n")
    threads = 1 if concurrency == 1 or not cores or "-" not in cores else 2
    command = procs.pinned(["wrk", f"-t{threads}", f"-c{concurrency}",
                            f"-d{max(1, round(duration_s))}s", "--latency",
                            "--timeout", WRK_TIMEOUT, "-s", str(script), url], cores)
    run = procs.run_bounded(command, duration_s + 30)
    return parse_wrk(run.stdout, run.returncode, command)


def _wrk_ms(out: str, label: str) -> float:
    m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        raise LoadError(f"wrk printed no {label} latency:\n{out}")
    return float(m[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m[2]]


def parse_wrk(out: str, returncode: int, command: list[str]) -> Measurement:
    if returncode != 0:
        raise LoadError(f"wrk exited {returncode}:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if bad:
        raise LoadError(f"{bad[1]} requests failed (non-2xx):\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock and any(int(x) for x in sock.groups()):
        raise LoadError(f"socket errors:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if not rps or not total:
        raise LoadError(f"wrk printed no throughput:\n{out}")
    if int(total[1]) == 0:
        raise LoadError(f"no request completed within the {total[2]}{total[3]} window")
    seconds = float(total[2]) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[total[3]]
    value = float(rps[1])
    return Measurement("wrk", value, value, _wrk_ms(out, "50%"), _wrk_ms(out, "90%"),
                       _wrk_ms(out, "99%"), seconds, command)


def perf_analyzer(system_url: str, protocol: str, scenario: Scenario, model: Model,
                  concurrency: int, duration_s: float, cores: str | None, work: Path,
                  shm: bool) -> Measurement:
    if not PERF_ANALYZER.exists():
        raise LoadError("bench/perf_analyzer.sh is missing")
    report = work / f"pa-{scenario.name}-{concurrency}.csv"
    report.unlink(missing_ok=True)
    # 3 windows make one measurement; on a shared machine windows differ a lot, so any 3
    # consecutive ones count as stable (999 %): the window's length is what is controlled
    interval_ms = max(500, int(duration_s * 1000 / 3))
    command = [str(PERF_ANALYZER), "-m", model.name, "-u", system_url, "-i", protocol,
               "--concurrency-range", f"{concurrency}:{concurrency}",
               "--measurement-interval", str(interval_ms), "--max-trials", "6",
               "--stability-percentage", "999", "-f", str(report)]
    if shm:
        out_bytes = max(t.item_bytes for t in model.outputs)
        command += ["--shared-memory", "system", "--output-shared-memory-size", str(out_bytes)]
    if scenario.sequence_length:
        data = work / f"pa-{model.name}-data.json"
        data.write_text(json.dumps({"data": [{k: v.ravel().tolist() for k, v in
                                              sample_inputs(model).items()}]}))
        command += ["--sequence-length", str(scenario.sequence_length),
                    "--input-data", str(data)]
    command = procs.pinned(command, cores)
    run = procs.run_bounded(command, duration_s * 4 + 60, cwd=work)
    if run.returncode != 0 or not report.exists():
        raise LoadError(f"perf_analyzer exited {run.returncode}:\n{run.stdout[-3000:]}")
    return parse_perf_analyzer_csv(report.read_text(), command, interval_ms * 3 / 1000)


def parse_perf_analyzer_csv(text: str, command: list[str], seconds: float) -> Measurement:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise LoadError(f"perf_analyzer wrote no row:\n{text}")
    row = rows[-1]
    ips = float(row["Inferences/Second"])
    if ips <= 0:
        raise LoadError(f"perf_analyzer measured no throughput:\n{text}")
    return Measurement("perf_analyzer", ips, ips, float(row["p50 latency"]) / 1e3,
                       float(row["p90 latency"]) / 1e3, float(row["p99 latency"]) / 1e3,
                       seconds, command)


def client_json(module: str, args: list[str], duration_s: float, cores: str | None,
                name: str) -> Measurement:
    command = procs.pinned([sys.executable, "-m", module, *args], cores)
    run = procs.run_bounded(command, duration_s + 60, env=base_env(), cwd=ROOT)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    if run.returncode != 0 or not lines:
        raise LoadError(f"{name} exited {run.returncode}:\n{run.stdout[-3000:]}")
    doc = json.loads(lines[-1])
    if doc["errors"]:
        raise LoadError(f"{name}: {doc['errors']} requests failed, e.g. {doc['first_error']}")
    if doc["requests"] == 0:
        raise LoadError(f"{name} completed no request")
    return Measurement(name, doc["requests"] / doc["seconds"], doc["items"] / doc["seconds"],
                       doc["p50_ms"], doc["p90_ms"], doc["p99_ms"], doc["seconds"], command)


def grpc_load(target: str, model: Model, concurrency: int, duration_s: float,
              cores: str | None) -> Measurement:
    return client_json("bench.suite.grpc_load",
                       ["--target", target, "--model", model.name, "--concurrency",
                        str(concurrency), "--duration", str(duration_s)],
                       duration_s, cores, "grpc_load")


def zmq_load(url: str, model: Model, rows: int, window: int, duration_s: float,
             cores: str | None) -> Measurement:
    return client_json("bench.suite.zmq_load",
                       ["--url", url, "--model", model.name, "--rows", str(rows),
                        "--window", str(window), "--duration", str(duration_s)],
                       duration_s, cores, "zmq_load")
