"""Processes the suite starts: each has one owner (a ``with`` block) that kills its whole
process group on the way out, whatever happened; CPU time of a process tree from /proc; core
pinning with taskset; free loopback ports; bounded waits.

CPU accounting: ``utime + stime`` (fields 14 and 15 of ``/proc/<pid>/stat``) summed over a
process and all its descendants, read before and after a measurement window. A process that
exits inside the window loses its share (none of the servers here do).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(command: Sequence[str], cores: str | None) -> list[str]:
    """``command`` under ``taskset -c cores`` when pinning is on and taskset exists."""
    if cores and shutil.which("taskset"):
        return ["taskset", "-c", cores, *command]
    return list(command)


@dataclass(frozen=True)
class Pinning:
    """Which cores the server and the load generator get (None: not pinned)."""

    server: str | None
    client: str | None

    @classmethod
    def split(cls, cores: int, enabled: bool) -> Pinning:
        if not enabled or cores < 2 or not shutil.which("taskset"):
            return cls(None, None)
        half = cores // 2
        server = "0" if half == 1 else f"0-{half - 1}"
        client = str(half) if cores - half == 1 else f"{half}-{cores - 1}"
        return cls(server, client)

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (server, load generator and the OS share every core)"
        return (f"server (its whole process tree) on CPU {self.server}, load generator on "
                f"CPU {self.client} (taskset -c)")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime ticks) of ``pid``, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_cpu(root: int, front: bytes = b"") -> tuple[float, float]:
    """(CPU seconds of the server's front: ``root`` and its children whose command line holds
    ``front``; CPU seconds of ``root`` and every descendant)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(entry))
        ticks[int(entry)] = st[1]
    front_ticks = ticks.get(root, 0)
    for child in children.get(root, ()) if front else ():
        try:
            if front in Path(f"/proc/{child}/cmdline").read_bytes():
                front_ticks += ticks.get(child, 0)
        except OSError:
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return front_ticks / CLOCK_TICKS, total / CLOCK_TICKS


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@contextlib.contextmanager
def owned(command: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, stop_timeout_s: float = 15.0
          ) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in a process group of its own; on exit SIGTERM the group, wait
    ``stop_timeout_s``, then SIGKILL it (the group: servers' children go with them)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc, stop_timeout_s)


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    pids = tree_pids(proc.pid)  # descendants that left the group (setsid) go too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_bounded(command: Sequence[str], timeout_s: float, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a load generator to completion, killed (its group) if it overruns ``timeout_s``."""
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=cwd, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RuntimeError(f"{command[0]} ran past {timeout_s:.0f} s and was killed:\n"
                           f"{out[-2000:]}") from None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(list(command), proc.returncode, out, "")


def wait_until(check: Callable[[], bool], what: str, timeout_s: float,
               alive: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{what}: the process exited ({alive.returncode}):\n{tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s\n{tail}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)
