"""The local-process runtime: each copy is ``python -m worker`` started by the gateway."""

from __future__ import annotations

import subprocess
import sys

import trio

from supervisor.placement import env_for
from supervisor.runtime import CopySpec, worker_args


class LocalProcess:
    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self.pid: int | None = process.pid

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        if self._process.returncode is None:
            self._process.terminate()

    def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()


class LocalRuntime:
    name = "local"

    async def start(self, spec: CopySpec) -> LocalProcess:
        argv = [sys.executable, "-m", "worker", *worker_args(spec)]
        process = await trio.lowlevel.open_process(
            argv, env=env_for(spec.placement), stdin=subprocess.DEVNULL,
            # Own session: a terminal's Ctrl-C reaches the gateway only, which stops copies
            # in order (a copy that dies on its own would be restarted mid-shutdown).
            start_new_session=True,
        )
        return LocalProcess(process)

    async def sweep_orphans(self) -> int:
        # A local worker exits by itself when its gateway dies (it watches its parent).
        return 0

    def progress(self, image: str) -> str:
        return ""
