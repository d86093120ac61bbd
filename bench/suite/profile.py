"""A py-spy profile of Inferoxy's gateway process during one measurement window
(``inferoxy bench --profile SCENARIO``): py-spy samples the gateway (not its workers) while the
load generator runs; the collapsed stacks are reduced to the functions that cost the most.

Self time: samples whose innermost frame is the function. Inclusive time by file: samples with
the file anywhere on the stack (what a layer costs, its callees included), leaving out the
files on (nearly) every stack (runpy, the CLI, ``trio.run``). Idle samples (the
event loop waiting in epoll) are counted apart, so shares are of the busy time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.suite.systems.base import ROOT

IDLE = ("epoll", "select (selectors.py", "poll (selectors.py", "wait (threading.py",
        "_wait_for_tstate_lock", "get_events (trio", "recv_multipart")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def command(pid: int, seconds: float, out: Path) -> list[str]:
    return [py_spy() or "py-spy", "record", "--pid", str(pid), "--rate", "250", "--duration",
            str(max(1, round(seconds))), "--format", "raw", "--output", str(out),
            "--nonblocking"]


def record(pid: int, seconds: float, out: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid``; the caller waits on it after the window."""
    with log.open("ab") as sink:
        return subprocess.Popen(command(pid, seconds, out), stdout=sink,
                                stderr=subprocess.STDOUT)


def _frame(raw: str) -> tuple[str, str]:
    m = FRAME.match(raw.strip())
    if not m:
        return raw.strip(), ""
    return m["func"], m["file"]


def summarize(collapsed: str, top: int = 12) -> str:
    """Markdown: the top functions by self time and the top files by inclusive time."""
    own: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        if any(marker in frames[-1] for marker in IDLE):
            idle += n
            continue
        func, file = _frame(frames[-1])
        own[f"{func} ({_short_path(file)})"] += n
        for f in {_short_path(_frame(fr)[1]) for fr in frames}:
            files[f] += n
    busy = max(total - idle, 1)
    lines = [f"{total} samples, {idle} idle ({100 * idle / max(total, 1):.0f} %); shares below "
             "are of the busy samples.", "", "| self time | function (file) |", "|---|---|"]
    lines += [f"| {100 * n / busy:.1f} % | `{name}` |" for name, n in own.most_common(top)]
    # files on (nearly) every busy stack are the scaffolding (runpy, the CLI, trio.run): not a cost
    layers = [(name, n) for name, n in files.most_common() if name and n < 0.9 * busy][:top]
    lines += ["", "| inclusive | file (on < 90 % of busy stacks) |", "|---|---|"]
    lines += [f"| {100 * n / busy:.1f} % | `{name}` |" for name, n in layers]
    return "\n".join(lines) + "\n"


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", f"{ROOT}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
