"""The ZeroMQ bridge (Arrow batches, ``inferoxy.protocol``): a blocking DEALER socket, and
one owned by a Trio task."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import trio
import zmq

from inferoxy.client._common import Arrays, concat, timeout_us, wait_s_for
from inferoxy.client.errors import InferenceError
from inferoxy.protocol.zmq_message import decode_reply, encode_request


def reply_outputs(header: dict[str, Any], outputs: Arrays | None) -> Arrays:
    if outputs is None:
        code = header.get("code")
        raise InferenceError(code if isinstance(code, int) else 500,
                             str(header.get("message", "request failed")))
    return outputs


def _dealer(url: str) -> tuple[zmq.Context[Any], zmq.Socket[Any]]:
    """A DEALER socket of its own context, connected to the bridge; closing drops its queue."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return ctx, sock


class ZmqTransport:
    """A DEALER socket; replies are matched to requests by id, stale ones skipped."""

    def __init__(self, url: str, wait_s: float) -> None:
        self._ctx, self._sock = _dealer(url)
        self._ids = itertools.count(1)
        self._wait_s = wait_s

    def _send(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> int:
        rid = next(self._ids)
        header: dict[str, Any] = {"model": model, "id": rid}
        if version is not None:
            header["version"] = str(version)
        if parameters:
            header["parameters"] = dict(parameters)
        us = timeout_us(timeout)
        if us is not None:
            header["timeout_us"] = us
        self._sock.send_multipart(encode_request(header, inputs), copy=False)
        return rid

    def _receive(self, deadline: float) -> tuple[dict[str, Any], Arrays | None]:
        left_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not self._sock.poll(left_ms, zmq.POLLIN):
            raise InferenceError(504, "no reply from the gateway in time")
        return decode_reply(self._sock.recv_multipart(copy=False))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        rid = self._send(model, inputs, version, timeout, parameters)
        deadline = time.monotonic() + wait_s_for(timeout, self._wait_s)
        while True:
            header, outputs = self._receive(deadline)
            if header.get("id") == rid:
                return reply_outputs(header, outputs)

    def infer_many(self, model: str, inputs: Mapping[str, np.ndarray], slices: list[slice],
                   window: int, version: str | None, timeout: float | None,
                   parameters: Mapping[str, Any] | None) -> Arrays:
        results: list[Arrays | None] = [None] * len(slices)
        pending: dict[int, int] = {}  # request id -> part
        queue = collections.deque(enumerate(slices))
        wait = wait_s_for(timeout, self._wait_s)
        while queue or pending:
            while queue and len(pending) < window:
                i, rows = queue.popleft()
                part = {name: a[rows] for name, a in inputs.items()}
                pending[self._send(model, part, version, timeout, parameters)] = i
            header, outputs = self._receive(time.monotonic() + wait)
            i_or_none = pending.pop(header.get("id"), None)  # type: ignore[arg-type]
            if i_or_none is not None:
                results[i_or_none] = reply_outputs(header, outputs)
        return concat([r for r in results if r is not None])

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


class Waiter:
    __slots__ = ("done", "frames")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.frames: list[zmq.Frame] = []


class TrioZmq:
    """A DEALER socket owned by one Trio task (``run``); callers meet it through the outbox."""

    def __init__(self, url: str, wait_s: float) -> None:
        self._ctx, self._sock = _dealer(url)
        self._ids = itertools.count(1)
        self._wait_s = wait_s
        self._outbox: collections.deque[list[Any]] = collections.deque()
        self._waiters: dict[int, Waiter] = {}
        self._idle: trio.CancelScope | None = None

    async def run(self) -> None:
        sock = self._sock
        fd = int(sock.getsockopt(zmq.FD))
        while True:
            busy = False
            while self._outbox:
                try:
                    sock.send_multipart(self._outbox[0], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._outbox.popleft()
                busy = True
            for _ in range(64):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._deliver(frames)
                busy = True
            if busy:
                await trio.lowlevel.checkpoint()
                continue
            events = int(sock.getsockopt(zmq.EVENTS))
            if events & zmq.POLLIN or (self._outbox and events & zmq.POLLOUT):
                continue
            with trio.CancelScope() as self._idle:
                await trio.lowlevel.wait_readable(fd)
            self._idle = None

    def _deliver(self, frames: list[zmq.Frame]) -> None:
        try:
            rid = orjson.loads(frames[0].bytes).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        waiter = self._waiters.pop(rid, None) if isinstance(rid, int) else None
        if waiter is not None:
            waiter.frames = frames
            waiter.done.set()

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
                    timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        rid = next(self._ids)
        header: dict[str, Any] = {"model": model, "id": rid}
        if version is not None:
            header["version"] = version
        if parameters:
            header["parameters"] = dict(parameters)
        us = timeout_us(timeout)
        if us is not None:
            header["timeout_us"] = us
        waiter = Waiter()
        self._waiters[rid] = waiter
        self._outbox.append(encode_request(header, inputs))
        if self._idle is not None:
            self._idle.cancel()
        try:
            with trio.move_on_after(wait_s_for(timeout, self._wait_s)):
                await waiter.done.wait()
        finally:
            self._waiters.pop(rid, None)
        if not waiter.done.is_set():
            raise InferenceError(504, "no reply from the gateway in time")
        return reply_outputs(*decode_reply(waiter.frames))

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()
