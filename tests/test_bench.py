"""The benchmark suite (``inferoxy bench``): its pure parts, and the real harness on a tiny
subset — a real gateway driven by real wrk, the ideal measured in-process — checked through
the files a user reads. No peer is installed here: CI runs Inferoxy and the ideal only (the
peers' adapters run under ``make bench``)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.suite import ideal, loadgen, observe, profile, report
from bench.suite.procs import Pinning
from bench.suite.report import Row
from bench.suite.scenario import (
    SCENARIO_DIR,
    ScenarioError,
    load_models,
    load_scenarios,
    parse_scenario,
    select,
)

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- scenarios --------------------------------------------------------------------------------

def test_shipped_scenarios_load_and_cover_the_issue() -> None:
    scenarios = load_scenarios()
    paths = {s.path for s in scenarios}
    assert {"http-json", "http-binary", "http-shm", "grpc", "grpc-shm", "zmq",
            "sequence-http"} <= paths
    models = {s.model for s in scenarios}
    assert {"tiny", "image", "frame", "synthetic1", "synthetic4", "running_sum"} <= models
    for s in scenarios:
        assert s.headline in s.concurrency["quick"], s.name
        assert s.duration_s["quick"] <= s.duration_s["full"], s.name


def _doc(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {"name": "x", "model": "tiny", "path": "http-json",
                              "concurrency": {"quick": [1, 4], "full": [1, 4, 16]},
                              "systems": ["inferoxy"]}
    doc.update(over)
    return doc


@pytest.mark.parametrize(("over", "message"), [
    ({"model": "nope"}, "model 'nope' is not in"),
    ({"path": "carrier-pigeon"}, "path 'carrier-pigeon' is not one of"),
    ({"fallback": "smoke"}, "fallback 'smoke' is not one of"),
    ({"concurrency": {"quick": [0]}}, "concurrency.quick"),
    ({"concurrency": {"quick": [1]}}, "no 'full' list"),
    ({"headline": 64}, "headline 64 is not among the quick concurrency points"),
    ({"systems": ["inferoxy", "tensorflow"]}, "'systems' must be a non-empty list"),
    ({"colour": "blue"}, "unknown field(s) ['colour']"),
    ({"duration_s": {"quick": 0}}, "duration_s.quick"),
    ({"path": "sequence-http", "sequence_length": 5}, "needs a stateful model"),
    ({"name": 3}, "'name' must be a string"),
])
def test_a_bad_scenario_is_refused_naming_the_field(over: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_doc(**over), "bad.yaml", load_models())
    assert message in str(err.value)
    assert "bad.yaml" in str(err.value)


def test_a_fallback_path_serves_a_system_without_the_scenario_path() -> None:
    s = parse_scenario(_doc(path="http-binary", fallback="http-json"), "f.yaml", load_models())
    assert s.path_for(("http-json", "http-binary")) == "http-binary"
    assert s.path_for(("http-json", "grpc")) == "http-json"
    assert s.path_for(("grpc",)) is None


def test_scenario_names_are_unique_and_selection_names_unknown_ones(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"{i}.yaml").write_text(yaml.safe_dump(_doc()))
    with pytest.raises(ScenarioError, match="used twice"):
        load_scenarios(tmp_path)
    with pytest.raises(ScenarioError, match=r"unknown scenario\(s\) \['nope'\]"):
        select(load_scenarios(SCENARIO_DIR), "tiny-json,nope", "quick")
    assert [s.name for s in select(load_scenarios(), "tiny-json", "quick")] == ["tiny-json"]


# -- the ideal --------------------------------------------------------------------------------

def test_the_ideal_is_copies_times_batch_over_cost() -> None:
    assert ideal.formula_rows_per_s(1, 16, 28.0) == pytest.approx(16 / 0.028)
    assert ideal.formula_rows_per_s(4, 16, 28.0) == pytest.approx(4 * 16 / 0.028)
    models = load_models()
    # synthetic4: a = 20 ms, b = 0.5 ms, batch 16, 4 copies -> 4 * 16 / 28 ms
    assert ideal.formula_for(models["synthetic4"]) == pytest.approx(4 * 16 / 0.028)
    assert ideal.formula_for(models["tiny"]) is None  # the stub declares no cost
    with pytest.raises(ValueError):
        ideal.formula_rows_per_s(0, 16, 28.0)


def test_the_ideal_measured_in_process_comes_close_to_the_formula() -> None:
    model = load_models()["synthetic1"]
    got = ideal.measure(model, 0.5)
    rate = got["items"] / got["seconds"]
    formula = ideal.formula_for(model)
    assert formula is not None
    assert 0.5 * formula < rate <= 1.05 * formula, (got, formula)


# -- rows, ratios, tables ---------------------------------------------------------------------

def _rows() -> list[Row]:
    return [
        Row("s", "ideal", "in-process", "in-process", 1, 1000.0, 10000.0),
        Row("s", "inferoxy", "http-json", "wrk", 16, 2000.0, 2000.0, 1.0, 2.0, 3.0),
        Row("s", "triton", "http-json", "wrk", 16, 4000.0, 4000.0, 0.5, 1.0, 2.0),
        Row("s", "mlserver", "http-json", "wrk", 16, 500.0, 500.0, 9.0, 20.0, 40.0),
        Row("s", "ray", "—", "—", 16, note="skipped: not installed"),
        Row("s", "inferoxy", "http-json", "wrk", 1, 700.0, 700.0, 1.0, 1.2, 1.5),
    ]


def test_ratios_are_inferoxy_over_each_peer_and_each_over_the_ideal() -> None:
    rows = _rows()
    report.add_ratios(rows)
    by = {(r.system, r.concurrency): r for r in rows}
    assert by[("triton", 16)].inferoxy_x == pytest.approx(0.5)
    assert by[("mlserver", 16)].inferoxy_x == pytest.approx(4.0)
    assert by[("inferoxy", 16)].inferoxy_x == pytest.approx(1.0)
    assert by[("inferoxy", 16)].vs_ideal == pytest.approx(0.2)
    assert by[("ray", 16)].inferoxy_x is None
    summary = report.summarize(rows, {"s": 16})[0]
    assert summary.ratios == pytest.approx(
        {"triton": 0.5, "pytriton": None, "mlserver": 4.0, "ray": None, "ideal": 0.2})
    md = report.summary_markdown([summary])
    assert "| s | 16 | 2000 | 3.00 | 0.50 | — | 4.00 | — | 0.20 |" in md


def test_a_model_with_a_declared_cost_is_compared_with_its_formula() -> None:
    rows = [Row("syn", "ideal", "in-process", "in-process", 1, 10.0, 160.0,
                formula_items_per_s=571.0),
            Row("syn", "inferoxy", "http-json", "wrk", 32, 500.0, 500.0)]
    report.add_ratios(rows)
    assert rows[1].vs_ideal == pytest.approx(500 / 571)
    assert rows[0].vs_ideal == pytest.approx(160 / 571)  # the in-process run, stretched


def test_grpc_takes_perf_analyzer_where_it_works_and_one_client_for_the_rest() -> None:
    both = ("inferoxy", "triton", "mlserver")
    assert loadgen.loadgens_for("grpc", "triton", both) == ("perf_analyzer",)
    assert loadgen.loadgens_for("grpc", "mlserver", both) == ("grpc_load",)
    assert loadgen.loadgens_for("grpc", "inferoxy", both) == ("perf_analyzer", "grpc_load")
    assert loadgen.loadgens_for("grpc", "inferoxy", ("inferoxy", "triton")) == (
        "perf_analyzer",)
    assert loadgen.loadgens_for("http-json", "mlserver", both) == ("wrk",)
    assert loadgen.loadgens_for("grpc", "ceiling", both) == ("perf_analyzer", "grpc_load")
    rows = [Row("g", "inferoxy", "grpc", "perf_analyzer", 16, 3000.0, 3000.0),
            Row("g", "inferoxy", "grpc", "grpc_load", 16, 1000.0, 1000.0),
            Row("g", "triton", "grpc", "perf_analyzer", 16, 6000.0, 6000.0),
            Row("g", "mlserver", "grpc", "grpc_load", 16, 500.0, 500.0)]
    report.add_ratios(rows)
    assert [r.inferoxy_x for r in rows] == [1.0, 1.0, 0.5, 2.0]  # same load generator


def test_a_profile_names_the_top_costs_and_leaves_idle_and_scaffolding_out() -> None:
    top = "<module> (runpy.py:1);run (trio/_core/_run.py:2);"
    collapsed = "\n".join([
        top + "send (zmq/sugar/socket.py:3) 60",
        top + "parse (bridges/rest/codec.py:4) 30",
        top + "get_events (trio/_core/_io_epoll.py:5) 100",
        "<module> (runpy.py:1);handle (bridges/rest/infer.py:6) 10",
    ])
    text = profile.summarize(collapsed)
    assert "200 samples, 100 idle (50 %)" in text
    assert text.index("`send (zmq/sugar/") < text.index("`parse (bridges/rest/codec.py)`")
    assert "| 60.0 % | `send (zmq/sugar/socket.py)` |" in text
    assert "runpy.py` |" not in text  # on every busy stack: scaffolding


def test_rows_survive_a_csv_round_trip_and_the_markdown_has_every_row() -> None:
    rows = _rows()
    report.add_ratios(rows)
    again = report.from_csv(report.to_csv(rows))
    assert again == rows
    md = report.scenario_markdown("s: title", rows)
    assert md.count("\n| ") == len(rows) + 1  # the header, then one line per row
    assert "skipped: not installed" in md


WRK_OUT = """Running 2s test @ http://127.0.0.1:1/v2/models/tiny/infer
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.21ms    1.10ms  20.00ms   90.00%
  Latency Distribution
     50%  610.00us
     75%    7.00ms
     90%    8.50ms
     99%    1.20s
  4242 requests in 2.00s, 1.00MB read
Requests/sec:   2121.00
Transfer/sec:    500.00KB
"""


def test_wrk_output_is_parsed_and_failed_requests_are_refused() -> None:
    m = loadgen.parse_wrk(WRK_OUT, 0, ["wrk"])
    assert (m.requests_per_s, m.p50_ms, m.p90_ms, m.p99_ms) == (2121.0, 0.61, 8.5, 1200.0)
    assert m.seconds == 2.0
    with pytest.raises(loadgen.LoadError, match="3 requests failed"):
        loadgen.parse_wrk(WRK_OUT + "  Non-2xx or 3xx responses: 3\n", 0, ["wrk"])
    with pytest.raises(loadgen.LoadError, match="socket errors"):
        loadgen.parse_wrk(WRK_OUT + "  Socket errors: connect 0, read 1, write 0, timeout 0\n",
                          0, ["wrk"])


def test_perf_analyzer_csv_is_read_in_milliseconds() -> None:
    text = ("Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,"
            "p99 latency,Avg latency\n16,1500.5,10,2000,3000,3500,9000,2100\n")
    m = loadgen.parse_perf_analyzer_csv(text, ["pa"], 3.0)
    assert (m.items_per_s, m.p50_ms, m.p90_ms, m.p99_ms) == (1500.5, 2.0, 3.0, 9.0)
    with pytest.raises(loadgen.LoadError):
        loadgen.parse_perf_analyzer_csv("Concurrency,Inferences/Second\n", ["pa"], 3.0)


def test_batch_histogram_and_breakdown_deltas() -> None:
    text = ('inferoxy_batch_size_bucket{model="m",version="1",le="1.0"} 2\n'
            'inferoxy_batch_size_bucket{model="m",version="1",le="2.0"} 5\n'
            'inferoxy_batch_size_bucket{model="m",version="1",le="+Inf"} 9\n'
            'inferoxy_batch_size_bucket{model="other",version="1",le="1.0"} 100\n')
    after = observe.batch_histogram(text, "m")
    assert after == {1.0: 2.0, 2.0: 5.0, float("inf"): 9.0}
    assert observe.histogram_delta({1.0: 1.0, 2.0: 1.0, float("inf"): 1.0}, after) == [
        ("≤1", 1.0), ("≤2", 3.0), (">2", 4.0)]

    def stats(n: int, scale: int) -> dict[str, object]:
        return {"inference_count": 4 * n, "execution_count": n, "inference_stats": {
            "success": {"count": 4 * n, "ns": 4 * n * 1000 * scale},
            "queue": {"count": 4 * n, "ns": 4 * n * 200 * scale},
            "compute_infer": {"count": n, "ns": 4 * n * 300 * scale}}}

    batch, queue, compute, overhead = observe.breakdown(stats(0, 1), stats(10, 1))
    assert (batch, queue, compute, overhead) == (4.0, 0.2, 0.3, pytest.approx(0.5))


def test_pinning_splits_the_cores_between_server_and_client() -> None:
    assert Pinning.split(1, True) == Pinning(None, None)
    assert Pinning.split(8, False) == Pinning(None, None)
    if os.path.exists("/usr/bin/taskset"):
        assert Pinning.split(2, True) == Pinning("0", "1")
        assert Pinning.split(8, True) == Pinning("0-3", "4-7")


# -- the real harness on a tiny subset --------------------------------------------------------

def test_inferoxy_bench_writes_tables_plots_and_the_setup(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "inferoxy", "bench", "--quick", "--systems",
               "inferoxy,ideal", "--scenarios", "tiny-json", "--duration", "1",
               "--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "page" / "results.md")]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stdout + run.stderr
    (out,) = (tmp_path / "runs").iterdir()

    rows = list(csv.DictReader((out / "tiny-json.csv").read_text().splitlines()))
    ours = [r for r in rows if r["system"] == "inferoxy"]
    assert sorted(int(r["concurrency"]) for r in ours) == [1, 16]
    for r in ours:
        assert float(r["items_per_s"]) > 0, r
        assert float(r["p50_ms"]) <= float(r["p99_ms"]), r
        assert 0 < float(r["vs_ideal"]) < 1, r  # a server never beats the model in-process
        assert float(r["inferoxy_x"]) == 1.0, r
        assert float(r["server_cpu_us"]) >= float(r["gateway_cpu_us"]) > 0, r
        assert float(r["avg_batch"]) >= 1, r
        assert r["loadgen"] == "wrk" and r["path"] == "http-json", r
    (ideal_row,) = [r for r in rows if r["system"] == "ideal"]
    assert float(ideal_row["items_per_s"]) > max(float(r["items_per_s"]) for r in ours)

    md = (out / "tiny-json.md").read_text()
    assert md.count("| inferoxy | http-json | wrk |") == 2
    summary = (out / "summary.md").read_text()
    assert "| tiny-json | 16 |" in summary and "÷ Triton" in summary
    summary_rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert float(summary_rows[0]["inferoxy_over_ideal"]) > 0

    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["batch-sizes.png", "latency-breakdown.png", "tiny-json-throughput-p99.png"]
    for name in pngs:
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name

    doc = json.loads((out / "run.json").read_text())
    assert doc["mode"] == "quick"
    assert doc["versions"]["inferoxy"] and doc["versions"]["wrk"].startswith("wrk")
    assert doc["machine"]["cores"] == os.cpu_count() and doc["machine"]["kernel"]
    commands = [c["command"] for c in doc["commands"]]
    assert any("serve" in c and "--models" in c for c in commands), commands
    assert sum(1 for c in commands if "wrk" in " ".join(c)) == 2, commands
    assert doc["histograms"]["tiny-json"], doc["histograms"]
    readme = (out / "README.md").read_text()
    assert "Pinning:" in readme and "Exact command lines" in readme
    # the results page (--doc) has the summary and links to the method page, wherever it lies
    page = (tmp_path / "page" / "results.md").read_text()
    assert "| tiny-json | 16 |" in page, page
    (method,) = re.findall(r"\[docs/benchmarking\.md\]\(([^)]+)\)", page)
    assert (tmp_path / "page" / method).resolve() == ROOT / "docs" / "benchmarking.md"
    assert (ROOT / "docs" / "benchmarking.md").is_file()
    # what the command lines read stays beside them: the gateway's models, wrk's script and body
    assert (out / "work" / "inferoxy" / "models.yaml").exists()
    assert (out / "work" / "wrk-body-tiny.lua").exists()
    assert (out / "work" / "body-tiny.json").exists()


def test_bench_without_its_extra_says_what_to_install() -> None:
    """No traceback: one line naming the extra and what is missing, exit status 2."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # as if not installed
            "from inferoxy.cli import main\n"
            "sys.exit(main(['bench', '--list']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "pip install -e '.[bench]'" in run.stderr and "matplotlib" in run.stderr
    assert "Traceback" not in run.stderr
