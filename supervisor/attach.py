"""The attach runtime: copies the platform starts, the gateway admits.

With ``--runtime attach`` the gateway starts no process. Kubernetes (a copy container beside
the gateway's in one Pod), systemd or a test runs ``inferoxy worker --model NAME --run-dir
DIR``; the worker announces itself (ATTACH, see ``shm.wire``) and waits. This runtime keeps
the supervisor's loop unchanged: ``start(spec)`` waits until a checked announcement for the
copy's model and version is on offer, welcomes that worker into the copy, and returns a
``RunningCopy`` whose ``wait()`` ends when the worker's process is gone — known at once from
its lock file coming free (the kernel drops a dead process's ``flock``; the run directory is
shared, so this works across containers) — and whose ``kill()`` asks the worker's control
thread to exit the process. The platform restarts a dead copy; the gateway's copy slot, after
its back-off, waits for that new process to announce itself.

What the gateway checks before an announcement is offered (model, version, GPU) lives in
``gateway.attach``; this module only parses, matches and talks to workers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import zmq

from shm import wire
from shm.messages import Kill, Refused, Stop, Welcome, encode
from supervisor.placement import Placement
from supervisor.runtime import CopySpec

log = logging.getLogger("inferoxy.attach")

TOKEN = re.compile(r"[0-9a-f]{8,32}")
OFFER_TTL_S = 3.5  # a worker repeats ATTACH every second; silence this long: it is gone
MAX_OFFERS = 256  # announcements waiting for a copy slot, all models (bounded, like all queues)
KILL_GRACE_S = 3.0  # a worker told to die that still holds its lock is given up after this
EXIT_UNKNOWN = -1  # the gateway cannot see the exit status of a process it did not start
EXIT_KILLED = -9


class BadAnnouncement(ValueError):
    """An ATTACH the gateway cannot use; ``control`` is where to say so ("" if nowhere)."""

    def __init__(self, reason: str, control: str = "") -> None:
        super().__init__(reason)
        self.control = control


@dataclass(frozen=True, slots=True)
class Announcement:
    token: str
    protocol: int
    model: str
    version: str  # "" = the model's default version
    gpus: tuple[str, ...]  # what the process sees (ids or UUIDs)
    pid: int  # in the worker's own pid namespace: for logs only
    host: str
    address: str  # its batch socket
    control: str  # its control socket
    lock: str  # the file it holds an exclusive flock on while it lives


def parse_announcement(body: dict[str, Any], run_dir: str) -> Announcement:
    """An ATTACH body as an ``Announcement``; ``BadAnnouncement`` with the reason. I/O-free."""
    token = body.get("token")
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise BadAnnouncement("ATTACH without a valid token (8-32 lowercase hex digits)")
    address, control, lock = wire.attach_paths(run_dir, token)
    if body.get("address") != address or body.get("control") != control:
        raise BadAnnouncement("ATTACH whose sockets are not in this gateway's run directory "
                              f"{run_dir} (mount it at the same path in every container)")
    protocol, model, version = body.get("protocol"), body.get("model"), body.get("version", "")
    gpus, pid, host = body.get("gpus", []), body.get("pid", 0), body.get("host", "")
    if not isinstance(protocol, int):
        raise BadAnnouncement("ATTACH without its wire protocol version (an integer)", control)
    if not isinstance(model, str) or not model or len(model) > 256:
        raise BadAnnouncement("ATTACH without a model name", control)
    if not isinstance(version, str) or len(version) > 32:
        raise BadAnnouncement("ATTACH with a version that is not a string", control)
    if (not isinstance(gpus, list) or len(gpus) > 64
            or not all(isinstance(g, str) and 0 < len(g) <= 128 for g in gpus)):
        raise BadAnnouncement("ATTACH whose gpus are not a list of GPU ids", control)
    if not isinstance(pid, int) or not isinstance(host, str):
        raise BadAnnouncement("ATTACH with a malformed pid or host", control)
    return Announcement(token, protocol, model, version, tuple(gpus), pid, host[:253],
                        address, control, lock)


@dataclass(slots=True)
class _Offer:
    announcement: Announcement
    placement: Placement
    seen: float  # its latest ATTACH
    asked: float  # its first


@dataclass(eq=False, slots=True)
class AttachedCopy:
    """One admitted worker, as the supervisor sees a process (``RunningCopy``)."""

    runtime: AttachRuntime
    announcement: Announcement
    shm_prefix: str
    control: zmq.Socket[bytes]
    pid: int | None = None  # as announced (its own pid namespace): for logs; never signalled
    _killed: trio.Event = field(default_factory=trio.Event)

    async def wait(self) -> int:
        try:
            try:
                fd = os.open(self.announcement.lock, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return EXIT_UNKNOWN  # its lock file is gone: so is the process
            async with trio.open_nursery() as nursery:
                async def lock_freed() -> None:
                    # abandon_on_cancel: a thread still blocked after a kill that did not take
                    # finishes (and closes its fd) when the process finally dies.
                    await trio.to_thread.run_sync(_wait_unlocked, fd, abandon_on_cancel=True)
                    nursery.cancel_scope.cancel()

                async def given_up() -> None:
                    await self._killed.wait()
                    await trio.sleep(KILL_GRACE_S)
                    log.error("attached worker %s (pid %s on %s) still holds its lock %gs "
                              "after it was told to exit; giving its copy slot up",
                              self.announcement.token, self.announcement.pid,
                              self.announcement.host, KILL_GRACE_S)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(lock_freed)
                nursery.start_soon(given_up)
            return EXIT_KILLED if self._killed.is_set() else EXIT_UNKNOWN
        finally:
            self.runtime._gone(self)

    def terminate(self) -> None:
        self._send(Stop())

    def kill(self) -> None:
        self._send(Kill())
        self._killed.set()

    def _send(self, order: Stop | Kill) -> None:
        try:
            self.control.send_multipart(encode(order), zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass  # gone or not reading: wait() notices either way


def _wait_unlocked(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_is_free(path: str) -> bool:
    """True when no live process holds ``path``'s flock (its worker is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


Admitted = Callable[[int, Announcement, Placement], None]


class AttachRuntime:
    """``--runtime attach``. ``gateway.attach.AttachDesk`` feeds it checked announcements
    (``offer``) and learns of admissions (``admitted``) and departures (``gone``)."""

    name = "attach"

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._offers: dict[tuple[str, str], dict[str, _Offer]] = {}
        self._waiting: Counter[tuple[str, str]] = Counter()  # start() calls waiting, per key
        self._waiting_images: Counter[str] = Counter()
        self._changed = trio.Event()
        self.attached: dict[int, AttachedCopy] = {}  # copy id -> its worker
        self._tokens: set[str] = set()  # admitted and not yet gone: a late ATTACH is ignored
        self.admitted: Admitted = lambda copy_id, announcement, placement: None
        self.gone: Callable[[str], None] = lambda prefix: None  # the worker's segment prefix

    @property
    def ctx(self) -> zmq.Context[zmq.Socket[bytes]]:
        if self._ctx is None:
            self._ctx = zmq.Context()
        return self._ctx

    # -- what the desk calls (from the inbox task; never blocks) ---------------------------

    def known(self, token: str) -> bool:
        return token in self._tokens

    def offers(self, key: tuple[str, str]) -> list[tuple[Announcement, Placement]]:
        self._expire()
        return [(o.announcement, o.placement) for o in self._offers.get(key, {}).values()]

    def waiting(self, key: tuple[str, str]) -> int:
        return self._waiting[key]

    def offer(self, key: tuple[str, str], announcement: Announcement,
              placement: Placement) -> bool:
        """Put a checked announcement on offer to ``key``'s copy slots; False when full."""
        if announcement.token in self._tokens:
            return True
        self._expire()
        slot = self._offers.setdefault(key, {})
        if announcement.token not in slot and sum(map(len, self._offers.values())) >= MAX_OFFERS:
            return False
        now = trio.current_time()
        old = slot.get(announcement.token)
        slot[announcement.token] = _Offer(announcement, placement, now,
                                          old.asked if old is not None else now)
        self._changed.set()
        return True

    def refuse(self, control: str, reason: str) -> None:
        """Tell a worker why it is not admitted (it exits with the reason)."""
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.SNDHWM, 4)
        try:
            sock.connect(control)
            sock.send_multipart(encode(Refused(reason)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        finally:
            sock.close()

    def _expire(self) -> None:
        now = trio.current_time()
        for key, slot in list(self._offers.items()):
            for token in [t for t, o in slot.items() if now - o.seen > OFFER_TTL_S]:
                del slot[token]
            if not slot:
                del self._offers[key]

    # -- Runtime ---------------------------------------------------------------------------

    async def start(self, spec: CopySpec) -> AttachedCopy:
        key = (spec.model, spec.version)
        self._waiting[key] += 1
        self._waiting_images[spec.image] += 1
        try:
            while True:
                offer = self._take(key)
                if offer is not None:
                    break
                changed = self._changed
                with trio.move_on_after(1.0):  # offers also expire
                    await changed.wait()
                if self._changed is changed and changed.is_set():
                    self._changed = trio.Event()
        finally:
            self._waiting[key] -= 1
            self._waiting_images[spec.image] -= 1
        a = offer.announcement
        control = self.ctx.socket(zmq.PUSH)
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.SNDHWM, 16)
        control.connect(a.control)
        self._tokens.add(a.token)
        running = AttachedCopy(self, a, spec.shm_prefix, control, pid=a.pid)
        self.attached[spec.copy_id] = running
        self.admitted(spec.copy_id, a, offer.placement)
        welcome = Welcome(spec.copy_id, spec.entrypoint, spec.parameters,
                          offer.placement.device, spec.shm_prefix, spec.heartbeat_s,
                          spec.health_interval_s)
        try:
            control.send_multipart(encode(welcome), zmq.NOBLOCK)
        except zmq.Again:
            pass  # it cannot have gone away with a queue this short; wait() would notice
        log.info("copy %d of model %s: admitted worker %s (pid %s on %s, %s)", spec.copy_id,
                 spec.model, a.token, a.pid, a.host or "?", offer.placement.device)
        return running

    def _take(self, key: tuple[str, str]) -> _Offer | None:
        """The oldest ask of a worker still alive (its lock held), first come first served."""
        self._expire()
        slot = self._offers.get(key, {})
        offer = None
        for token in sorted(slot, key=lambda t: slot[t].asked):
            candidate = slot.pop(token)
            if not lock_is_free(candidate.announcement.lock):
                offer = candidate
                break
        if not slot:
            self._offers.pop(key, None)
        return offer

    def _gone(self, copy: AttachedCopy) -> None:
        copy.control.close(linger=0)
        for copy_id in [i for i, c in self.attached.items() if c is copy]:
            del self.attached[copy_id]
        self._tokens.discard(copy.announcement.token)
        _remove_files(self.run_dir, copy.announcement.token)
        self.gone(f"{copy.shm_prefix}-w{copy.announcement.token}-")

    async def sweep_orphans(self) -> int:
        """Files of attached workers that died (their lock is free); how many workers."""
        swept = 0
        for lock in Path(self.run_dir).glob("attach-*.lock"):
            token = lock.name[len("attach-"):-len(".lock")]
            if TOKEN.fullmatch(token) and lock_is_free(str(lock)):
                _remove_files(self.run_dir, token)
                swept += 1
        return swept

    def progress(self, image: str) -> str:
        if self._waiting_images[image] > 0:
            return ("waiting for a copy to attach (inferoxy worker --model NAME --run-dir "
                    f"{self.run_dir})")
        return ""

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None


def _remove_files(run_dir: str, token: str) -> None:
    for path in Path(run_dir).glob(f"attach-{token}*"):
        try:
            path.unlink()
        except OSError:
            pass
