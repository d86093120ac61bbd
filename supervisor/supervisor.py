"""The supervisor nursery: one task per copy that starts it, watches it and restarts it.

Each copy task loops: start the worker through the runtime, wait for it to exit, report the
loss, back off, start again. A watchdog kills a copy that never says HELLO in time, stops
heartbeating, or hangs (its heartbeat says one batch or health check has run longer than
``hang_timeout_s``); a copy whose model's ``health()`` failed is killed too. Every exit counts
towards a crash loop (``supervisor.crashloop``): entering one and recovering from it are
reported to ``on_crash_loop``. ``shutdown`` asks every worker to stop, waits (bounded), then
kills.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

from supervisor.backoff import Backoff
from supervisor.copy import Copy
from supervisor.crashloop import CrashLoop, CrashLoopPolicy
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


ObserverT = TypeVar("ObserverT", bound=CopyObserver)


class Supervisor(Generic[ObserverT]):
    """Generic over the observer type: ``observer`` gives each copy's back as it was given."""

    def __init__(
        self,
        runtime: Runtime,
        channel: CopyChannel,
        *,
        on_worker_gone: Callable[[int], None],
        startup_timeout_s: float = 120.0,
        heartbeat_timeout_s: float = 10.0,
        hang_timeout_s: float = 60.0,
        crash_loop: CrashLoopPolicy | None = None,
        on_crash_loop: Callable[[Copy, bool], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.channel = channel
        self.on_worker_gone = on_worker_gone  # cleans up a dead worker's segments, by pid
        self.startup_timeout_s = startup_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.hang_timeout_s = hang_timeout_s
        self.crash_loop_policy = crash_loop or CrashLoopPolicy()
        # Called with (copy, True) when a copy enters a crash loop, (copy, False) when it
        # comes out of one.
        self.on_crash_loop = on_crash_loop or (lambda copy, entered: None)
        self.copies: dict[int, Copy] = {}
        self._crash_loops: dict[int, CrashLoop] = {}
        self._observers: dict[int, ObserverT] = {}  # the one map of copies to their servers
        self._processes: dict[int, RunningCopy] = {}
        self._stopping = False
        self._stopping_ids: set[int] = set()

    # -- messages from workers (called by the inbox task) ------------------------------------

    def on_hello(self, copy_id: int, pid: int) -> Copy | None:
        copy = self.copies.get(copy_id)
        if copy is None:
            return None
        copy.last_seen = trio.current_time()
        was = copy.state
        if copy.apply(CopyEvent.HELLO) is CopyState.READY and was is CopyState.STARTING:
            copy.last_error = ""
            copy.busy_s = 0.0
            log.info("copy %d of model %s ready on %s (pid %s)",
                     copy.id, copy.model, copy.placement.device, pid)
            loop = self._crash_loops.get(copy_id)
            if loop is not None and loop.on_ready():
                copy.crash_loop = ""
                log.warning("copy %d of model %s is out of its crash loop", copy.id, copy.model)
                self.on_crash_loop(copy, False)
            self._observers[copy_id].on_copy_ready(copy)
        return copy

    def on_heartbeat(self, copy_id: int, busy_s: float) -> None:
        copy = self.copies.get(copy_id)
        if copy is not None:
            copy.busy_s = busy_s

    def on_unhealthy(self, copy_id: int, message: str) -> None:
        """The worker's ``model.health()`` failed: replace the copy."""
        copy = self.copies.get(copy_id)
        process = self._processes.get(copy_id)
        if copy is None or process is None or self._stops(copy):
            return
        copy.last_error = f"health check failed: {message}"
        log.error("copy %d of model %s: %s; killing it", copy.id, copy.model, copy.last_error)
        process.kill()

    def on_message(self, copy_id: int) -> Copy | None:
        copy = self.copies.get(copy_id)
        if copy is not None:
            copy.last_seen = trio.current_time()
        return copy

    def observer(self, copy_id: int) -> ObserverT | None:
        """The observer (the gateway's server) of a copy whose task runs; None otherwise."""
        return self._observers.get(copy_id)

    def on_fatal(self, copy_id: int, message: str) -> None:
        copy = self.copies.get(copy_id)
        if copy is not None:
            copy.last_error = message
            log.error("copy %d of model %s failed to load: %s", copy.id, copy.model, message)

    # -- copy tasks ----------------------------------------------------------------------------

    async def run_copy(self, copy: Copy, spec: CopySpec, observer: ObserverT) -> None:
        self.copies[copy.id] = copy
        self._observers[copy.id] = observer
        backoff = Backoff()
        loop = self._crash_loops[copy.id] = CrashLoop(self.crash_loop_policy)
        try:
            while not self._stops(copy):
                ran_for, status = await self._run_once(copy, spec, observer)
                if self._stops(copy):
                    break
                copy.restarts += 1
                entered = loop.on_exit(trio.current_time())
                if not loop.looping:
                    # Outside a crash loop only the exits the detector still counts (those
                    # within its window) lengthen the back-off: a copy killed every 15 s must
                    # not wait 30 s with no verdict (the window keeps it at 1.6 s at most).
                    backoff.forget(loop.recent(trio.current_time()) - 1)
                delay = backoff.on_exit(ran_for)
                if entered:
                    last = copy.last_error or f"exit status {status}"
                    copy.crash_loop = (
                        f"crash loop: {loop.recent(trio.current_time())} exits within "
                        f"{loop.policy.window_s:g}s (last: {last})"
                    )
                    log.error("copy %d of model %s is in a %s; restarts go on with back-off",
                              copy.id, copy.model, copy.crash_loop)
                    self.on_crash_loop(copy, True)
                log.warning("copy %d of model %s exited; restarting in %.1fs",
                            copy.id, copy.model, delay)
                await trio.sleep(delay)
                copy.apply(CopyEvent.RESTART)
        finally:
            copy.apply(CopyEvent.STOP)
            self.channel.close_copy(copy.id)
            self.copies.pop(copy.id, None)
            self._observers.pop(copy.id, None)
            self._crash_loops.pop(copy.id, None)
            self._stopping_ids.discard(copy.id)

    def _stops(self, copy: Copy) -> bool:
        return self._stopping or copy.id in self._stopping_ids

    async def _run_once(self, copy: Copy, spec: CopySpec,
                        observer: CopyObserver) -> tuple[float, int | None]:
        """Run the copy's process once; how long it lived and its exit status."""
        self.channel.open_copy(copy.id)
        copy.inbox = ""  # the new process binds its own batch socket and says where (HELLO)
        copy.last_seen = trio.current_time()
        try:
            # May pull an image first (minutes, with its own progress and errors): the
            # startup timeout counts from when the copy's process exists, not from here.
            process = await self.runtime.start(spec)
        except OSError as exc:
            copy.last_error = f"could not start: {exc}"
            log.error("copy %d of model %s could not start: %s", copy.id, copy.model, exc)
            copy.apply(CopyEvent.EXITED)
            return 0.0, None
        started = copy.last_seen = trio.current_time()
        copy.pid = process.pid
        copy.busy_s = 0.0
        self._processes[copy.id] = process
        log.info("copy %d of model %s started on %s (pid %s, runtime %s)",
                 copy.id, copy.model, spec.placement.device, process.pid, self.runtime.name)
        async with trio.open_nursery() as nursery:
            hang_timeout_s = spec.hang_timeout_s or self.hang_timeout_s
            nursery.start_soon(self._watchdog, copy, process, started, hang_timeout_s)
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
        return trio.current_time() - started, status

    async def _watchdog(self, copy: Copy, process: RunningCopy, started: float,
                        hang_timeout_s: float) -> None:
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
            if copy.state is CopyState.READY and copy.busy_s > hang_timeout_s:
                copy.last_error = (
                    f"hung: one batch ran for more than {hang_timeout_s:g}s"
                )
                log.error("copy %d of model %s %s; killing it", copy.id, copy.model,
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
