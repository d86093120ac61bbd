"""perf_analyzer — Triton's own load generator, unmodified — against a real gateway.

Over HTTP and gRPC, with tensors in the request body and in system shared memory, on the stub
(UINT8 [-1, -1, 3] per item) and the synthetic model (FP32 [16]). Each run must exit 0, report a
non-zero throughput at both concurrencies, and report the server-side split (queue, compute
input/infer/output) that perf_analyzer reads from the statistics endpoint; the gateway's own
counters must show the requests succeeded and none failed.

Outputs are checked too: with tensors in the body perf_analyzer validates every response against
``validation_data``. It cannot validate outputs it asked for in shared memory (it reads them from
the response), so there the test reads perf_analyzer's output region while it runs.

perf_analyzer is installed by ``make perf-analyzer`` (``make test`` does it) into .venv-perf and
run through bench/perf_analyzer.sh. Its segments are named after the tensors (/IMAGE,
/IMAGE_0_0, ...), so two of these runs on one machine at once would share them.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.conftest import ROOT, TEST_MODELS, RunningGateway, start_gateway

WRAPPER = ROOT / "bench" / "perf_analyzer.sh"
RUN_TIMEOUT_S = 60

THROUGHPUT = re.compile(r"^\s*Throughput: ([0-9.]+) infer/sec", re.M)
SERVER_SPLIT = re.compile(
    r"^\s*Server: *\n"
    r"\s*Inference count: (\d+)\n"
    r"\s*Execution count: (\d+)\n"
    r"\s*Successful request count: (\d+)\n"
    r"\s*Avg request latency: \d+ usec \(overhead \d+ usec \+ queue \d+ usec"
    r" \+ compute input \d+ usec \+ compute infer \d+ usec \+ compute output \d+ usec\)",
    re.M,
)

STUB_IMAGE = [(i * 7 + 3) % 256 for i in range(32 * 32 * 3)]
SYNTHETIC_X = [i / 4 for i in range(16)]
SYNTHETIC_Y = [x * 2 + 1 for x in SYNTHETIC_X]
MODELS: dict[str, dict[str, Any]] = {
    "stub": {
        "args": ["--shape", "IMAGE:32,32,3"],
        "data": {"IMAGE": {"content": STUB_IMAGE, "shape": [32, 32, 3]}},
        "expected": {"IMAGE": {"content": STUB_IMAGE, "shape": [32, 32, 3]}},
        "output_bytes": bytes(STUB_IMAGE),
        # perf_analyzer's regions, and their /dev/shm keys: the output's, then the input's
        "regions": ["IMAGE", "IMAGE_0_0"],
    },
    "synthetic": {
        "args": [],
        "data": {"INPUT": SYNTHETIC_X},
        "expected": {"OUTPUT": SYNTHETIC_Y},
        "output_bytes": struct.pack("<16f", *SYNTHETIC_Y),
        "regions": ["OUTPUT", "INPUT_0_0"],
    },
}

@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    """The wrapper, once it has shown perf_analyzer starts (binary and shared libraries)."""
    try:
        run = subprocess.run([str(WRAPPER), "--version"], capture_output=True, text=True,
                             timeout=30)
    except OSError as exc:
        pytest.fail(f"cannot run {WRAPPER} ({exc}): run `make perf-analyzer`", pytrace=False)
    if run.returncode != 0:
        pytest.fail(f"perf_analyzer does not start: {(run.stderr or run.stdout).strip()}\n"
                    "Run `make perf-analyzer` (it installs perf_analyzer into .venv-perf, and "
                    "Debian's libb64-0d).", pytrace=False)
    return WRAPPER


@pytest.fixture(scope="module")
def pa_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway of this module's own that lets clients register shared memory."""
    gw = start_gateway(tmp_path_factory.mktemp("perf"), TEST_MODELS, "--allow-client-shm")
    try:
        yield gw
        assert gw.stop() == 0, gw.log()
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def _model_stats(gw: RunningGateway, model: str) -> dict[str, Any]:
    response = urllib3.request("GET", f"{gw.http}/v2/models/{model}/stats", timeout=10)
    assert response.status == 200, response.data
    stats: dict[str, Any] = json.loads(response.data)["model_stats"][0]
    return stats


def _run(args: list[str], tmp_path: Path, watch: Path | None,
         expected: bytes) -> tuple[int, str, bool]:
    """Run perf_analyzer; while it runs, look for ``expected`` at the start of ``watch``."""
    out = (tmp_path / "perf_analyzer.out").open("w+")
    seen = False
    with out, subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT) as proc:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if watch is not None and not seen:
                try:
                    seen = watch.read_bytes()[:len(expected)] == expected
                except OSError:
                    pass
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        status = proc.wait()
        out.seek(0)
        return status, out.read(), seen


@pytest.mark.timeout(2 * RUN_TIMEOUT_S)
@pytest.mark.parametrize("model", ["stub", "synthetic"])
@pytest.mark.parametrize(("protocol", "shm"), [
    ("http", False),
    pytest.param("http", True),
    ("grpc", False),
    ("grpc", True),
], ids=["http-body", "http-shm", "grpc-body", "grpc-shm"])
def test_perf_analyzer(perf_analyzer: Path, pa_gateway: RunningGateway, tmp_path: Path,
                       protocol: str, shm: bool, model: str) -> None:
    spec = MODELS[model]
    url = pa_gateway.url if protocol == "http" else pa_gateway.grpc_url
    assert url, "the test gateway serves no gRPC (RunningGateway.grpc_url is empty)"
    doc: dict[str, Any] = {"data": [spec["data"]]}
    if not shm:
        doc["validation_data"] = [spec["expected"]]
    data_file = tmp_path / "input-data.json"
    data_file.write_text(json.dumps(doc))
    args = [
        str(perf_analyzer), "-m", model, "-u", url, "-i", protocol,
        "--input-data", str(data_file), *spec["args"],
        "--concurrency-range", "1:2", "--measurement-interval", "500", "--max-trials", "10",
        "--stability-percentage", "10000",  # a smoke test, not a measurement: any 3 windows do
    ]
    if shm:
        args += ["--shared-memory", "system"]
    segments = [Path(f"/dev/shm/{name}") for name in spec["regions"]]

    before = _model_stats(pa_gateway, model)
    try:
        status, output, seen = _run(args, tmp_path, segments[0] if shm else None,
                                    spec["output_bytes"])
    finally:
        left = [p for p in segments if p.exists()]  # whatever it did, leave none behind
        for path in left:
            path.unlink(missing_ok=True)
    after = _model_stats(pa_gateway, model)
    report = f"$ {' '.join(args)}\n{output}"
    assert status == 0, report

    throughputs = [float(t) for t in THROUGHPUT.findall(output)]
    assert len(throughputs) == 2 and all(t > 0 for t in throughputs), report
    server = SERVER_SPLIT.findall(output)
    assert len(server) == 2, report
    assert all(int(success) > 0 for _, _, success in server), report
    assert "error" not in output.lower(), report

    # The gateway counted every one of them a success, and none a failure.
    def count(stats: dict[str, Any], kind: str) -> int:
        return int(stats["inference_stats"][kind]["count"])

    assert count(after, "success") - count(before, "success") >= \
        sum(int(success) for _, _, success in server), (after, report)
    assert count(after, "fail") == count(before, "fail"), (after, report)
    if shm:
        assert seen, f"the model's output never appeared in perf_analyzer's region\n{report}"
    assert left == [], f"perf_analyzer left segments behind: {left}\n{report}"


@pytest.mark.timeout(2 * RUN_TIMEOUT_S)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_sequences(perf_analyzer: Path, pa_gateway: RunningGateway,
                                 tmp_path: Path, protocol: str) -> None:
    """perf_analyzer sees the stateful example's sequence_batching and drives sequences
    (sequence_id / start / end) through it; every request succeeds."""
    url = pa_gateway.url if protocol == "http" else pa_gateway.grpc_url
    data_file = tmp_path / "input-data.json"
    data_file.write_text(json.dumps({"data": [{"INPUT": [1.5, 2.0, 3.0, 4.0]}]}))
    args = [
        str(perf_analyzer), "-m", "running_sum", "-u", url, "-i", protocol,
        "--input-data", str(data_file), "--sequence-length", "5",
        "--concurrency-range", "2:2", "--measurement-interval", "500", "--max-trials", "10",
        "--stability-percentage", "10000",
    ]
    before = _model_stats(pa_gateway, "running_sum")
    status, output, _ = _run(args, tmp_path, None, b"")
    after = _model_stats(pa_gateway, "running_sum")
    report = f"$ {' '.join(args)}\n{output}"
    assert status == 0, report
    sequences = re.search(r"Sequence count: (\d+)", output)
    assert sequences and int(sequences[1]) > 0, report
    assert [float(t) > 0 for t in THROUGHPUT.findall(output)] == [True], report
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert after["inference_count"] > before["inference_count"], report
