"""Wake-ups on time, for deadlines under a few milliseconds.

Trio sleeps in ``epoll_wait``, whose timeout is whole milliseconds, rounded up: a batch due
in 500 µs (``max_queue_delay_us: 500``) closed after 1-2 ms, and at concurrency 1 that was
most of a request's latency. A ``timerfd`` (nanosecond resolution) armed for the due time and
watched by one task makes ``epoll_wait`` return then; Trio's own deadline machinery does the
rest. Where ``timerfd`` is missing (not Linux), nothing changes but the precision.

Only the earliest pending wake-up is armed; a later one armed over it falls back to Trio's
millisecond precision (late by under a millisecond, never lost).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os

import trio

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
PRECISE_BELOW_S = 0.02  # longer waits lose nothing that matters to millisecond rounding


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.timerfd_create  # noqa: B018 (present?)
    except (OSError, AttributeError):
        return None
    return libc


class Wakeups:
    """One per Trio run (``current()``); ``run`` is its task."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._fd = -1
        if self._libc is not None:
            self._fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        self._armed = math.inf

    def at(self, deadline: float) -> None:
        """Make sure the event loop wakes at ``deadline`` (``trio.current_time()`` clock)."""
        if self._fd < 0 or deadline >= self._armed:
            return
        delay = deadline - trio.current_time()
        if not 0 < delay < PRECISE_BELOW_S:
            return
        ns = max(1, int(delay * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        assert self._libc is not None
        if self._libc.timerfd_settime(self._fd, 0, ctypes.byref(spec), None) == 0:
            self._armed = deadline

    async def run(self) -> None:
        if self._fd < 0:
            return
        try:
            while True:
                await trio.lowlevel.wait_readable(self._fd)
                try:
                    os.read(self._fd, 8)
                except BlockingIOError:
                    pass
                self._armed = math.inf
        finally:
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


_CURRENT: trio.lowlevel.RunVar[Wakeups | None] = trio.lowlevel.RunVar("wakeups", default=None)


def install() -> Wakeups:
    """The run's ``Wakeups`` (its ``run`` must be started by the caller's nursery)."""
    wakeups = Wakeups()
    _CURRENT.set(wakeups)
    return wakeups


def wake_at(deadline: float) -> None:
    """``Wakeups.at`` on this run's instance, if one is installed."""
    wakeups = _CURRENT.get()
    if wakeups is not None:
        wakeups.at(deadline)
