"""``inferoxy bench``: run the scenarios against the systems and write the report.

Order: the ideal (each scenario's model in-process), then the load generators' ceilings
(trivial responders), then each system in turn — started once on every model its scenarios
need (startup outside every measurement window), each scenario's answers verified, then one
window per concurrency point — and stopped before the next starts, so systems never share the
machine. Everything lands in ``bench/results/<stamp>/``: ``summary.md``/``.csv``, one
``<scenario>.md``/``.csv`` each, ``plots/*.png``, ``run.json`` and ``README.md`` (versions,
machine, pinning, exact command lines), ``logs/`` (every server's output) and ``work/`` (what
those command lines read: request bodies, Lua scripts, each system's generated configuration,
perf_analyzer's CSV files).

A system that is not installed, fails to start or answers wrongly gets a row saying so; the
rest of the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.suite import loadgen, observe, plots, procs, profile, report
from bench.suite.ideal import formula_for
from bench.suite.loadgen import LoadError, Measurement
from bench.suite.procs import Pinning
from bench.suite.report import Row
from bench.suite.scenario import (
    SCENARIO_DIR,
    SYSTEMS,
    Model,
    Scenario,
    ScenarioError,
    load_models,
    load_scenarios,
    select,
)
from bench.suite.systems import ALL, Running, StartContext
from bench.suite.systems.base import ROOT, base_env
from bench.suite.verify import verify

# A server's front: the processes that take requests, not its model processes. Inferoxy's is
# its control process and its data-plane processes (``--workers``).
FRONT: dict[str, bytes] = {"inferoxy": b"bridges.dataplane"}
RESULTS = ROOT / "bench" / "results"
METHOD_DOC = ROOT / "docs" / "benchmarking.md"  # what the results page links to
EXTRA = ("ideal", "ceiling")
ALONE = ("ray",)  # systems that busy the machine while idle: started on their own


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferoxy bench",
        description="Inferoxy beside Triton, PyTriton, MLServer and Ray Serve on this machine: "
                    "tables, plots and the exact setup in bench/results/<stamp>/.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="short windows, few concurrency points (default; < 5 min on 2 cores)")
    mode.add_argument("--full", action="store_true",
                      help="long windows, more concurrency points, for real hardware")
    parser.add_argument("--systems", default=None,
                        help=f"comma list among {', '.join((*SYSTEMS, *EXTRA))} (default: all)")
    parser.add_argument("--scenarios", default=None,
                        help="comma list of scenario names (default: every one of the mode)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per measurement window (default: the scenario's)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the server's process tree to the first core and the load "
                             "generator to the others (per-core efficiency); default: the "
                             "whole machine, as users run servers")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="directory the stamped result directory is made in")
    parser.add_argument("--profile", metavar="SCENARIOS", default=None,
                        help="py-spy the gateway during these scenarios' headline windows "
                             "(profile-SCENARIO.md: the top costs)")
    parser.add_argument("--inferoxy-args", default="",
                        help="extra flags for inferoxy serve, e.g. '--workers 2'")
    parser.add_argument("--doc", type=Path, default=None,
                        help="also write the results page the repository keeps "
                             "(docs/benchmarks.md)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def parse_systems(raw: str | None) -> list[str]:
    known = (*SYSTEMS, *EXTRA)
    if not raw:
        return list(known)
    wanted = [s.strip() for s in raw.split(",") if s.strip()]
    bad = [s for s in wanted if s not in known]
    if bad:
        raise ScenarioError(f"unknown system(s) {bad}; known: {list(known)}")
    return wanted


def machine_facts() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {"cpu_model": cpu, "cores": os.cpu_count(), "memory": mem,
            "kernel": platform.release(), "os": platform.platform(),
            "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def tool_version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.mode = "full" if args.full else "quick"
        self.models = load_models()
        self.scenarios = select(load_scenarios(SCENARIO_DIR, self.models), args.scenarios,
                                self.mode)
        self.systems = parse_systems(args.systems)
        self.duration = args.duration
        self.inferoxy_args = tuple(shlex.split(args.inferoxy_args))
        self.doc: Path | None = args.doc
        self.profile = {p.strip() for p in (args.profile or "").split(",") if p.strip()}
        unknown = self.profile - {s.name for s in self.scenarios}
        if unknown:
            raise ScenarioError(f"--profile {sorted(unknown)}: not among the scenarios run")
        self.pinning = Pinning.split(os.cpu_count() or 1, args.pin)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.out = args.out / stamp
        self.logs = self.out / "logs"
        self.plots_dir = self.out / "plots"
        self.work = self.out / "work"
        for d in (self.logs, self.plots_dir, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []
        self.histograms: dict[str, list[tuple[str, float]]] = {}
        self.commands: list[dict[str, Any]] = []
        self.versions: dict[str, str] = {}
        self.started = time.monotonic()
        self.argv = list(sys.argv)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def window(self, scenario: Scenario) -> float:
        return self.duration or scenario.duration_s[self.mode]

    def points(self, scenario: Scenario) -> tuple[int, ...]:
        return scenario.concurrency[self.mode]

    # -- the ideal and the ceilings ---------------------------------------------------------
    def run_ideal(self) -> None:
        by_model: dict[str, Measurement] = {}  # one in-process run per model
        for s in self.scenarios:
            model = self.models[s.model]
            if model.name not in by_model:
                try:
                    by_model[model.name] = loadgen.client_json(
                        "bench.suite.ideal", ["--model", model.name, "--duration",
                                              str(min(self.window(s), 1.0))],
                        self.window(s), self.pinning.server, "in-process")
                except (LoadError, RuntimeError) as exc:
                    self.rows.append(Row(s.name, "ideal", "in-process", "in-process",
                                         model.copies, note=f"failed: {_short(exc)}"))
                    continue
            m = by_model[model.name]
            formula = formula_for(model)
            note = f"full batches of {model.batch_size}, {model.copies} thread(s)"
            if formula is not None:
                note += (f"; ÷ ideal is taken against the formula copies·batch/cost(batch) = "
                         f"{formula:.0f} items/s")
            self.rows.append(Row(s.name, "ideal", "in-process", "in-process", model.copies,
                                 m.requests_per_s, m.items_per_s, m.p50_ms, m.p90_ms, m.p99_ms,
                                 note=note, formula_items_per_s=formula))
            self.commands.append({"system": "ideal", "scenario": s.name, "command": m.command})
            self.say(f"ideal {s.name}: {m.items_per_s:.0f} items/s")

    def run_ceilings(self) -> None:
        kinds = {"wrk": "http", "grpc_load": "grpc", "zmq_load": "zmq"}
        wanted: dict[str, list[Scenario]] = {}
        for s in self.scenarios:
            gen = loadgen.loadgen_for(s.path)
            if gen in kinds:
                wanted.setdefault(kinds[gen], []).append(s)
            elif s.path == "http-binary":  # perf_analyzer against a v2 responder
                wanted.setdefault("v2http", []).append(s)
        for kind, scenarios in wanted.items():
            port = procs.free_port()
            log = self.logs / f"ceiling-{kind}.log"
            command = procs.pinned([sys.executable, "-m", "bench.suite.ceiling", kind,
                                    str(port)], self.pinning.server)
            with procs.owned(command, log=log, env=base_env(), cwd=ROOT) as proc:
                try:
                    procs.wait_until(functools.partial(_port_open, port), f"ceiling {kind}",
                                     30, proc, log)
                except RuntimeError as exc:
                    self.say(f"ceiling {kind}: not measured: {_short(exc)}")
                    continue
                fake = Running("ceiling", proc.pid, http=f"127.0.0.1:{port}",
                               grpc=f"127.0.0.1:{port}", zmq=f"tcp://127.0.0.1:{port}")
                for s in scenarios:
                    self.measure_all(fake, s, s.path, self.models[s.model],
                                     points=(s.headline,))

    # -- the systems ------------------------------------------------------------------------
    def start(self, name: str, stack: contextlib.ExitStack) -> Running | None:
        """Start one system on every model its scenarios need (None: it cannot run here,
        and its rows say why)."""
        system = ALL[name]
        scenarios = [s for s in self.scenarios if name in s.systems]
        if not scenarios:
            return None
        why = system.available()
        if why:
            for s in scenarios:
                self.rows.append(Row(s.name, name, "—", "—", s.headline, note=f"skipped: {why}"))
            self.say(f"{name}: skipped ({why})")
            return None
        needed = tuple({s.model: self.models[s.model] for s in scenarios}.values())
        ctx = StartContext(needed, self.work / name, self.pinning,
                           extra_args=self.inferoxy_args if name == "inferoxy" else ())
        stack.callback(self.keep_log, ctx.work / "server.log", name)
        t0 = time.monotonic()
        try:
            running = system.start(ctx, stack)
        except Exception as exc:  # one system down must not sink the run
            for s in scenarios:
                self.rows.append(Row(s.name, name, "—", "—", s.headline,
                                     note=f"failed to start: {_short(exc)}"))
            self.say(f"{name}: failed to start: {_short(exc)}")
            return None
        self.say(f"{name}: up in {time.monotonic() - t0:.1f} s ({running.version})")
        self.versions[name] = running.version
        self.commands.append({"system": name, "scenario": "(server)",
                              "command": running.command})
        return running

    def keep_log(self, log: Path, name: str) -> None:
        if log.exists():
            shutil.copy(log, self.logs / f"{name}.log")

    def run_systems(self, names: list[str]) -> None:
        """Start ``names`` together, then go scenario by scenario, measuring each system in
        turn: on a shared machine the rows one ratio compares are taken seconds apart, not
        minutes. Idle servers cost next to nothing (< 0.5 % of a core here)."""
        with contextlib.ExitStack() as stack:
            running = {n: r for n in names if (r := self.start(n, stack)) is not None}
            for s in self.scenarios:
                for name, r in running.items():
                    if name in s.systems:
                        self.run_scenario(r, ALL[name].offers, s)

    def run_scenario(self, running: Running, offers: tuple[str, ...], s: Scenario) -> None:
        name = running.name
        path = s.path_for(offers)
        model = self.models[s.model]
        if path is None:
            self.rows.append(Row(s.name, name, "—", "—", s.headline, note=f"offers no {s.path}"))
            return
        try:
            verify(running, model, path)
        except Exception as exc:
            with (self.logs / "failures.log").open("a") as log:
                log.write(f"== {name} {s.name} {path}: verification\n{exc}\n\n")
            self.rows.append(Row(s.name, name, path, loadgen.loadgen_for(path), s.headline,
                                 note=f"wrong answers: {_short(exc)}"))
            self.say(f"{name} {s.name}: not measured, wrong answers: {_short(exc)}")
            return
        note = "" if path == s.path else f"best it offers (no {s.path})"
        self.measure_all(running, s, path, model, note=note)

    def measure_all(self, running: Running, s: Scenario, path: str, model: Model,
                    points: tuple[int, ...] | None = None, note: str = "") -> None:
        gens = loadgen.loadgens_for(path, running.name, s.systems)
        for conc, gen in ((c, g) for c in points or self.points(s) for g in gens):
            row = Row(s.name, running.name, path, gen, conc, note=note)
            try:
                self.measure(running, s, path, model, conc, row)
                self.say(f"{running.name} {s.name} {path} ({gen}) c={conc}: "
                         f"{row.items_per_s:.0f} items/s, p99 {row.p99_ms:.2f} ms")
            except (LoadError, RuntimeError, OSError) as exc:
                row.note = f"failed: {_short(exc)}"
                with (self.logs / "failures.log").open("a") as log:
                    log.write(f"== {running.name} {s.name} {path} c={conc}\n{exc}\n\n")
                self.say(f"{running.name} {s.name} c={conc}: {row.note}")
            self.rows.append(row)

    def measure(self, running: Running, s: Scenario, path: str, model: Model, conc: int,
                row: Row) -> None:
        duration = self.window(s)
        cores = self.pinning.client
        stats0 = observe.v2_stats(running.http or "", model.name) if running.v2_stats else None
        hist0 = observe.batch_histogram(observe.metrics_text(running.metrics), model.name) \
            if running.name == "inferoxy" else {}
        spy = None
        if (s.name in self.profile and running.name == "inferoxy" and conc == s.headline
                and not (self.out / f"profile-{s.name}.txt").exists()):
            raw = self.out / f"profile-{s.name}.txt"
            spy = profile.record(running.pid, duration, raw, self.logs / "py-spy.log")
            self.commands.append({"system": "py-spy", "scenario": s.name,
                                  "command": profile.command(running.pid, duration, raw)})
        cpu0 = procs.tree_cpu(running.pid, FRONT.get(running.name, b""))
        m: Measurement
        if path == "http-json":
            body = self.work / f"body-{model.name}.json"
            if not body.exists():
                body.write_bytes(loadgen.v2_json_body(model))
            url = f"http://{running.http}/v2/models/{model.name}/infer"
            if running.name == "ceiling":
                url = f"http://{running.http}/"
            m = loadgen.wrk(url, body, conc, duration, cores, self.work)
        elif row.loadgen == "perf_analyzer":
            protocol = "grpc" if path.startswith("grpc") else "http"
            target = running.grpc if protocol == "grpc" else running.http
            m = loadgen.perf_analyzer(target or "", protocol, s, model, conc, duration, cores,
                                      self.work, shm=path.endswith("shm"))
        elif row.loadgen == "grpc_load":
            m = loadgen.grpc_load(running.grpc or "", model, conc, duration, cores)
        elif path == "zmq":
            m = loadgen.zmq_load(running.zmq or "", model, s.items_per_request, conc,
                                 duration, cores)
        else:
            raise LoadError(f"no load generator for {path}")
        cpu1 = procs.tree_cpu(running.pid, FRONT.get(running.name, b""))
        if spy is not None:
            self.finish_profile(spy, s, m)
        stats1 = observe.v2_stats(running.http or "", model.name) if stats0 else None
        row.requests_per_s, row.items_per_s = m.requests_per_s, m.items_per_s
        row.p50_ms, row.p90_ms, row.p99_ms = m.p50_ms, m.p90_ms, m.p99_ms
        items = m.items_per_s * m.seconds
        if stats0 and stats1:
            row.avg_batch, row.queue_us, row.compute_us, row.overhead_us = \
                observe.breakdown(stats0, stats1)
            served = observe.successes(stats0, stats1)
            if served > 0:
                items = served * (s.items_per_request if path == "zmq" else 1)
        if items > 0 and running.name != "ceiling":
            row.gateway_cpu_us = (cpu1[0] - cpu0[0]) / items * 1e6
            row.server_cpu_us = (cpu1[1] - cpu0[1]) / items * 1e6
        if running.name == "inferoxy" and conc == s.headline:
            hist1 = observe.batch_histogram(observe.metrics_text(running.metrics), model.name)
            if hist1:
                self.histograms[s.name] = observe.histogram_delta(hist0, hist1)
        self.commands.append({"system": running.name, "scenario": s.name, "concurrency": conc,
                              "command": m.command})

    def finish_profile(self, spy: subprocess.Popen[bytes], s: Scenario, m: Measurement) -> None:
        try:
            spy.wait(timeout=self.window(s) + 30)
        except subprocess.TimeoutExpired:
            procs.stop_group(spy, 5)
        raw = self.out / f"profile-{s.name}.txt"
        if not raw.exists():
            self.say(f"py-spy wrote no profile (see {self.logs / 'py-spy.log'})")
            return
        text = (f"# py-spy profile of the Inferoxy gateway: {s.name}\n\n{s.title}; "
                f"{m.loadgen} at concurrency {s.headline}, {m.items_per_s:.0f} items/s while "
                f"sampled.\n\n" + profile.summarize(raw.read_text()))
        (self.out / f"profile-{s.name}.md").write_text(text)
        self.say(f"profile: {self.out / f'profile-{s.name}.md'}")

    # -- the report -------------------------------------------------------------------------
    def write(self) -> None:
        report.add_ratios(self.rows)
        order = {name: i for i, name in enumerate(("ideal", "ceiling", *SYSTEMS))}
        self.rows.sort(key=lambda r: ([s.name for s in self.scenarios].index(r.scenario),
                                      order.get(r.system, 99), r.concurrency))
        plot_files: list[str] = []
        sections = []
        for s in self.scenarios:
            rows = [r for r in self.rows if r.scenario == s.name]
            md = report.scenario_markdown(f"{s.name}: {s.title}", rows)
            (self.out / f"{s.name}.md").write_text(md)
            (self.out / f"{s.name}.csv").write_text(report.to_csv(rows))
            sections.append(md)
            png = plots.throughput_p99(s.name, s.title, rows, self.plots_dir)
            if png:
                plot_files.append(str(png.relative_to(self.out)))
        for png in (plots.batch_sizes(self.histograms, self.plots_dir),
                    plots.latency_breakdown([r for r in self.rows
                                             if r.concurrency == next(
                                                 s.headline for s in self.scenarios
                                                 if s.name == r.scenario)], self.plots_dir)):
            if png:
                plot_files.append(str(png.relative_to(self.out)))
        summaries = report.summarize(self.rows, {s.name: s.headline for s in self.scenarios})
        summary_md = report.summary_markdown(summaries)
        (self.out / "summary.md").write_text(summary_md)
        (self.out / "summary.csv").write_text(report.summary_csv(summaries))
        (self.out / "all.csv").write_text(report.to_csv(self.rows))
        elapsed = time.monotonic() - self.started
        run = {
            "mode": self.mode,
            "argv": self.argv,
            "elapsed_s": round(elapsed, 1),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                time.time() - elapsed)),
            "machine": machine_facts(),
            "pinning": {"server": self.pinning.server, "client": self.pinning.client,
                        "description": self.pinning.describe()},
            "versions": self.version_table(),
            "scenarios": [asdict(s) for s in self.scenarios],
            "systems": self.systems,
            "commands": self.commands,
            "histograms": self.histograms,
            "plots": plot_files,
        }
        (self.out / "run.json").write_text(json.dumps(run, indent=2, default=str))
        self.write_readme(run, summary_md, sections)
        self.say(f"wrote {self.out}")
        if self.doc is not None:
            self.write_doc(run, summary_md, sections)
            self.say(f"wrote {self.doc}")

    def write_doc(self, run: dict[str, Any], summary_md: str, sections: list[str]) -> None:
        """The results page the repository keeps (``--doc``): the latest run and how to
        reproduce it, written whole each time — never edited by hand."""
        assert self.doc is not None
        m = run["machine"]
        args = self.argv[self.argv.index("bench") + 1:] if "bench" in self.argv \
            else self.argv[1:]
        argv = " ".join(["bench", *args])
        method = Path(os.path.relpath(METHOD_DOC, self.doc.resolve().parent)).as_posix()
        lines = [
            "# Benchmark results", "",
            "Written by `inferoxy bench --doc docs/benchmarks.md`; a run replaces this page "
            "whole. The method, the peers and what every column means: "
            f"[docs/benchmarking.md]({method}).", "",
            f"Latest run: {run['started_utc']}, {self.mode} mode, `inferoxy {argv}` "
            f"({run['elapsed_s']} s).", "",
            f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory']}; load average at "
            f"start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}. "
            f"Pinning: {self.pinning.describe()}.", "",
            "## Summary (each scenario at its headline concurrency)", "",
            "Inferoxy's throughput divided by each peer's in the same run (> 1: Inferoxy is "
            "faster). Numbers are comparable within one run only.", "",
            summary_md, "## Per scenario", "", *sections,
        ]
        self.doc.parent.mkdir(parents=True, exist_ok=True)
        self.doc.write_text("\n".join(lines))

    def version_table(self) -> dict[str, str]:
        out = {"inferoxy": metadata.version("inferoxy")}
        out |= self.versions
        out["wrk"] = tool_version(["wrk", "-v"])
        out["perf_analyzer"] = "tritonclient 2.48.0 wheel (bench/perf_analyzer.sh)" if \
            (ROOT / ".venv-perf" / "bin" / "perf_analyzer").exists() else "not installed"
        for dist in ("numpy", "grpcio", "pyzmq", "pyarrow", "tritonclient", "matplotlib"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                out[dist] = metadata.version(dist)
        return out

    def write_readme(self, run: dict[str, Any], summary_md: str, sections: list[str]) -> None:
        m = run["machine"]
        lines = [
            f"# Inferoxy benchmark, {self.mode} mode, {run['started_utc']}", "",
            f"Command: `{' '.join(self.argv)}` ({run['elapsed_s']} s).", "",
            f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory']}, kernel "
            f"{m['kernel']}, Python {m['python']}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}.", "",
            f"Pinning: {self.pinning.describe()}.", "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + ".", "",
            "## Summary (each scenario at its headline concurrency)", "",
            "Inferoxy's throughput divided by each peer's (> 1: Inferoxy is faster) and by "
            "the ideal's (the model in-process with full batches, no server).", "",
            summary_md, "## Per scenario", "",
            "items/s: images or rows per second (a ZeroMQ request carries many). CPU µs per "
            "item: utime+stime from /proc over the window, of the server's front process and "
            "of its whole process tree, divided by the items it served. queue / compute / "
            "overhead: v2 statistics, mean per request. 'ceiling': the same load generator "
            "against a server that does nothing.", "",
            *sections,
            "## Plots", "", *(f"- [{p}]({p})" for p in run["plots"]), "",
            "## Exact command lines", "",
            *(f"- {c['system']} / {c['scenario']}"
              + (f" / c={c['concurrency']}" if "concurrency" in c else "")
              + f": `{' '.join(map(str, c['command']))}`" for c in self.commands), "",
        ]
        (self.out / "README.md").write_text("\n".join(lines))

    def run(self) -> Path:
        self.say(f"{self.mode} mode: {len(self.scenarios)} scenario(s), systems "
                 f"{','.join(self.systems)}; {self.pinning.describe()}; results in {self.out}")
        if "ideal" in self.systems:
            self.run_ideal()
        if "ceiling" in self.systems:
            self.run_ceilings()
        # Ray Serve idles at ~9 % of a core (raylet, GCS, proxy): it runs alone, after the rest
        self.run_systems([n for n in SYSTEMS if n in self.systems and n not in ALONE])
        for name in ALONE:
            if name in self.systems:
                self.run_systems([name])
        self.write()
        return self.out


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            mode = "full" if args.full else "quick"
            for s in select(load_scenarios(), None, mode):
                print(f"{s.name:18s} {s.path:14s} {','.join(s.systems):40s} {s.title}")
            return 0
        bench = Bench(args)
    except ScenarioError as exc:
        print(f"inferoxy bench: {exc}", file=sys.stderr)
        return 2
    out = bench.run()
    print((out / "summary.md").read_text())
    return 0 if any(r.measured for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
