"""The status page at ``/`` of the control-plane port, in a real headless browser.

Debian's chromium loads the page of a real gateway (two copies of the stub on two simulated
GPUs, a stateful model); the test reads the DOM chromium built (``--dump-dom``: after the
page's own script rendered it) and saves a screenshot into the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import urllib3

from tests.conftest import ROOT, RunningGateway, shm_names, start_gateway
from tests.test_lifecycle_e2e import _worker_pids

MODELS = ROOT / "tests" / "models_status.yaml"
TOKEN = "status-test-token"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def sgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("status"), MODELS, "--simulate-gpus", "2",
                       "--admin-token", TOKEN)
    try:
        yield gw
        assert gw.stop() == 0, gw.log()
        assert shm_names(gw.shm_prefix) == []
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.cleanup()


def chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium")
    assert binary, "the status page test needs Debian's chromium (make test installs it)"
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class Models(HTMLParser):
    """Text of each ``<div data-model=...>`` and the copy states inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.states: dict[str, list[str]] = {}
        self._model: str | None = None
        self._depth = 0
        self._in_state = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and a.get("data-model"):
            self._model = a["data-model"]
            self._depth = 0
            self.text[self._model] = ""
            self.states[self._model] = []
        elif self._model is not None:
            if tag == "div":
                self._depth += 1
            self._in_state = "copy-state" in (a.get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_state = False
        if self._model is not None and tag == "div":
            if self._depth == 0:
                self._model = None
            else:
                self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._model is not None:
            self.text[self._model] += data + " "
            if self._in_state:
                self.states[self._model].append(data)


def status_json(gw: RunningGateway) -> dict[str, Any]:
    r = urllib3.request("GET", f"{gw.admin_url}/status.json", timeout=10)  # no token: open
    assert r.status == 200, r.data
    doc: dict[str, Any] = json.loads(r.data)
    return doc


def infer_stub(gw: RunningGateway, n: int) -> None:
    client = httpclient.InferenceServerClient(gw.url)
    try:
        for i in range(n):
            image = np.full((1, 8, 8, 3), i, np.uint8)
            inp = httpclient.InferInput("IMAGE", list(image.shape), "UINT8")
            inp.set_data_from_numpy(image)
            np.testing.assert_array_equal(client.infer("stub", [inp]).as_numpy("IMAGE"), image)
    finally:
        client.close()


def test_status_page_in_a_browser(sgw: RunningGateway, tmp_path: Path) -> None:
    infer_stub(sgw, 30)
    # One copy is killed and comes back: the page counts its restart.
    victim = _worker_pids(sgw.process.pid, "stub")[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        stub = next(m for m in status_json(sgw)["models"] if m["name"] == "stub")
        if any(c["restarts"] for c in stub["copies"]) and \
                all(c["state"] == "ready" for c in stub["copies"]):
            break
        assert time.monotonic() < deadline, stub
        time.sleep(0.1)

    dom = chromium(tmp_path, "--dump-dom", f"{sgw.admin_url}/")
    page = Models()
    page.feed(dom)
    assert set(page.text) == {"stub", "running_sum"}, dom[-2000:]
    stub_text = page.text["stub"]
    assert page.states["stub"] == ["ready", "ready"], stub_text
    assert page.states["running_sum"] == ["ready"]
    assert "READY" in stub_text and "stateless" in page.text["stub"]
    assert "stateful" in page.text["running_sum"]
    assert "30 ok" in stub_text, stub_text
    # Copies per GPU: one on each simulated GPU; the restarted one says so.
    rows = [r for r in stub_text.split("copy GPU state")[1:]]
    assert rows and " 0 " in rows[0] and " 1 " in rows[0], stub_text
    # ... and which process serves each (the restarted one under its new pid).
    pids = {c["pid"] for c in stub["copies"]}
    assert victim not in pids and all(f"pid {p}" in stub_text for p in pids), stub_text
    latency = stub_text.split("p99", 1)[1]
    figures = [float(w) for w, unit in zip(latency.split(), latency.split()[1:], strict=False)
               if unit == "ms" and w.replace(".", "", 1).isdigit()]
    assert len(figures) == 4 and all(f > 0 for f in figures), stub_text  # mean, p50, p90, p99
    assert " 30 " in latency  # requests counted in the latency window

    shot = tmp_path / "status-page.png"
    chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", f"{sgw.admin_url}/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"status page screenshot: {shot}")


def test_status_page_needs_no_token_but_management_does(sgw: RunningGateway) -> None:
    r = urllib3.request("GET", f"{sgw.admin_url}/", timeout=10)
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    assert TOKEN not in r.data.decode()  # the page shows no secret
    assert urllib3.request("GET", f"{sgw.admin_url}/v2/admin/models", timeout=10).status == 401
    ok = urllib3.request("GET", f"{sgw.admin_url}/v2/admin/models", timeout=10,
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    doc = status_json(sgw)
    assert doc["server"]["ready"] is True and doc["server"]["gpus"] == [0, 1]
    assert {m["name"] for m in doc["models"]} == {"stub", "running_sum"}


def test_latency_figures_from_buckets() -> None:
    """The page's percentiles: interpolated in their bucket, over the recent window only."""
    from bridges.status.data import LatencyWindow, quantile

    bounds = (10, 20, 40)
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None
    assert quantile(0.5, [0, 4, 0, 0], bounds) == 15  # half-way through (10, 20]
    assert quantile(0.99, [0, 0, 0, 3], bounds) == 40  # beyond the last bound: the bound
    window = LatencyWindow(span_s=60)
    assert window.recent(("m", "1"), 0.0, [5, 0, 0, 0], 50)[2] == -1.0  # since the start
    counts, total, span = window.recent(("m", "1"), 70.0, [5, 2, 0, 0], 80)
    assert (counts, total, span) == ([0, 2, 0, 0], 30, 70.0)  # only what came since


def test_status_page_refreshes_itself(sgw: RunningGateway, tmp_path: Path) -> None:
    """Its script fetches status.json every 2 s and re-renders from it (still right)."""
    before = next(m for m in status_json(sgw)["models"] if m["name"] == "stub")["success"]
    infer_stub(sgw, 3)
    # Virtual time: chromium runs the page's timers for 5 s (fetches included) before the dump.
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"{sgw.admin_url}/")
    assert re.search(r'<body[^>]* data-refreshes="[1-9]', dom), dom[:300]
    page = Models()
    page.feed(dom)
    assert f"{before + 3} ok" in page.text["stub"], page.text["stub"]
