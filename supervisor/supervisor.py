"""The supervisor nursery: one task per copy that starts it, watches it and restarts it.

Each copy task loops: start the worker through the runtime, wait for it to exit (a watchdog
kills it if it never says HELLO in time or stops heartbeating), report the loss, back off,
start again. ``shutdown`` asks every worker to stop, waits (bounded), then kills.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from supervisor.backoff import Backoff
from supervisor.copy import Copy
from supervisor.lifecycle import CopyEvent, CopyState
from supervisor.runtime import CopySpec, RunningCopy, Runtime

log = logging.getLogger("inferoxy.supervisor")


class CopyObserver(Protocol):
    def on_copy_ready(self, copy: Copy) -> None: ...

    def on_copy_lost(self, copy: Copy) -> None: ...


class CopyChannel(Protocol):
    """The gateway's sockets to a copy's worker (``gateway.link.WorkerLink``)."""

    def open_copy(self, copy_id: int) -> None: ...

    def close_copy(self, copy_id: int) -> None: ...


class Supervisor:
    def __init__(
        self,
        runtime: Runtime,
        channel: CopyChannel,
        *,
        on_worker_gone: Callable[[int], None],
        startup_timeout_s: float = 120.0,
        heartbeat_timeout_s: float = 10.0,
    ) -> None:
        self.runtime = runtime
        self.channel = channel
        self.on_worker_gone = on_worker_gone  # cleans up a dead worker's segments, by pid
        self.startup_timeout_s = startup_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.copies: dict[int, Copy] = {}
        self._observers: dict[int, CopyObserver] = {}
        self._processes: dict[int, RunningCopy] = {}
        self._stopping = False
        self._stopping_ids: set[int] = set()

    # -- messages from workers (called by the inbox task) ------------------------------------

    def on_hello(self, copy_id: int, pid: object) -> Copy | None:
        copy = self.copies.get(copy_id)
        if copy is None:
            return None
        copy.last_seen = trio.current_time()
        was = copy.state
        if copy.apply(CopyEvent.HELLO) is CopyState.READY and was is CopyState.STARTING:
            copy.last_error = ""
            log.info("copy %d of model %s ready on %s (pid %s)",
                     copy.id, copy.model, copy.placement.device, pid)
            self._observers[copy_id].on_copy_ready(copy)
        return copy

    def on_message(self, copy_id: int) -> Copy | None:
        copy = self.copies.get(copy_id)
        if copy is not None:
            copy.last_seen = trio.current_time()
        return copy

    def on_fatal(self, copy_id: int, message: str) -> None:
        copy = self.copies.get(copy_id)
        if copy is not None:
            copy.last_error = message
            log.error("copy %d of model %s failed to load: %s", copy.id, copy.model, message)

    # -- copy tasks ----------------------------------------------------------------------------

    async def run_copy(self, copy: Copy, spec: CopySpec, observer: CopyObserver) -> None:
        self.copies[copy.id] = copy
        self._observers[copy.id] = observer
        backoff = Backoff()
        try:
            while not self._stops(copy):
                ran_for = await self._run_once(copy, spec, observer)
                if self._stops(copy):
                    break
                delay = backoff.on_exit(ran_for)
                copy.restarts += 1
                log.warning("copy %d of model %s exited; restarting in %.1fs",
                            copy.id, copy.model, delay)
                await trio.sleep(delay)
                copy.apply(CopyEvent.RESTART)
        finally:
            copy.apply(CopyEvent.STOP)
            self.channel.close_copy(copy.id)
            self.copies.pop(copy.id, None)
            self._observers.pop(copy.id, None)
            self._stopping_ids.discard(copy.id)

    def _stops(self, copy: Copy) -> bool:
        return self._stopping or copy.id in self._stopping_ids

    async def _run_once(self, copy: Copy, spec: CopySpec, observer: CopyObserver) -> float:
        self.channel.open_copy(copy.id)
        started = trio.current_time()
        copy.last_seen = started
        try:
            process = await self.runtime.start(spec)
        except OSError as exc:
            copy.last_error = f"could not start: {exc}"
            log.error("copy %d of model %s could not start: %s", copy.id, copy.model, exc)
            copy.apply(CopyEvent.EXITED)
            return 0.0
        copy.pid = process.pid
        self._processes[copy.id] = process
        log.info("copy %d of model %s started on %s (pid %s, runtime %s)",
                 copy.id, copy.model, spec.placement.device, process.pid, self.runtime.name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog, copy, process, started)
            status = await process.wait()
            nursery.cancel_scope.cancel()
        self._processes.pop(copy.id, None)
        self.channel.close_copy(copy.id)
        copy.apply(CopyEvent.EXITED)
        if not self._stops(copy):
            log.warning("copy %d of model %s (pid %s) exited with status %s",
                        copy.id, copy.model, process.pid, status)
        observer.on_copy_lost(copy)
        if process.pid is not None:
            self.on_worker_gone(process.pid)
        return trio.current_time() - started

    async def _watchdog(self, copy: Copy, process: RunningCopy, started: float) -> None:
        while True:
            await trio.sleep(0.25)
            now = trio.current_time()
            if copy.state is CopyState.STARTING and now - started > self.startup_timeout_s:
                copy.last_error = f"did not start within {self.startup_timeout_s:.0f}s"
                log.error("copy %d of model %s %s; killing it", copy.id, copy.model,
                          copy.last_error)
                process.kill()
                return
            if copy.state is CopyState.READY and now - copy.last_seen > self.heartbeat_timeout_s:
                copy.last_error = f"no heartbeat for {self.heartbeat_timeout_s:.0f}s"
                log.error("copy %d of model %s sent %s; killing it", copy.id, copy.model,
                          copy.last_error)
                process.kill()
                return

    # -- shutdown ------------------------------------------------------------------------------

    async def stop_copies(self, copies: list[Copy], timeout_s: float) -> None:
        """Stop some copies for good (a model being unloaded): SIGTERM, then SIGKILL."""
        ids = {c.id for c in copies}
        self._stopping_ids |= ids
        for copy in copies:
            copy.apply(CopyEvent.STOP)
        for copy_id in ids:
            process = self._processes.get(copy_id)
            if process is not None:
                process.terminate()
        with trio.move_on_after(timeout_s):
            while ids & set(self._processes):
                await trio.sleep(0.02)
        for copy_id in ids & set(self._processes):
            self._processes[copy_id].kill()
        while ids & set(self._processes):
            await trio.sleep(0.02)

    async def shutdown(self, timeout_s: float) -> None:
        """Stop every copy: SIGTERM, then SIGKILL after ``timeout_s``."""
        self._stopping = True
        for copy in self.copies.values():
            copy.apply(CopyEvent.STOP)
        for process in list(self._processes.values()):
            process.terminate()
        with trio.move_on_after(timeout_s):
            while self._processes:
                await trio.sleep(0.02)
        for process in list(self._processes.values()):
            process.kill()
