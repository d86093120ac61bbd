"""ZeroMQ between the gateway and its workers, driven from Trio.

Every socket is one-way and has one owner, which sidesteps the edge-triggered ``zmq.FD``
trap (docs/facts.md): the inbox (PULL) is read by exactly one task, which drains it until
``Again`` before it waits on the fd; the per-copy PUSH sockets are only ever sent to, with
``NOBLOCK``, from the Trio thread. A send that would block means the worker is not reading;
it is reported to the caller (who fails or retries the batch) instead of waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
import zmq

from shm import messages, wire
from shm.messages import FromWorker, Reply, ToWorker

log = logging.getLogger("inferoxy.link")

Handler = Callable[[FromWorker], None]


async def read_forever(sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None]) -> None:
    """Be ``sock``'s one reader: hand each message to ``handle`` (synchronous, never blocks).

    Drains until ``Again`` before waiting on the edge-triggered ``zmq.FD``, re-checking
    ``EVENTS`` first (docs/facts.md); a flood must not starve the other tasks, hence the
    checkpoint every 64 messages.
    """
    fd = int(sock.getsockopt(zmq.FD))
    handled = 0
    while True:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                continue
            await trio.lowlevel.wait_readable(fd)
            continue
        handle(frames)
        handled += 1
        if handled % 64 == 0:
            await trio.lowlevel.checkpoint()


class WorkerLink:
    """A producer's sockets to copies: one PUSH per copy, connected to the batch socket the
    copy's process bound (its address comes with HELLO, or in the copy table), and one PULL
    for answers — the control process's inbox, or a data-plane process's own (``reply``,
    which its model servers name in every BATCH so the worker answers there)."""

    def __init__(self, run_dir: str, reply: Reply | None = None) -> None:
        self.run_dir = run_dir
        self.ctx = zmq.Context()
        self.reply = reply
        self._inbox = self.ctx.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.setsockopt(zmq.RCVHWM, 100_000)
        self._inbox.bind(reply.address if reply else wire.inbox_address(run_dir))
        self._outs: dict[int, zmq.Socket[bytes]] = {}

    def open_copy(self, copy_id: int) -> None:
        """A copy's new process is starting: nothing reaches it until it says where."""
        self.close_copy(copy_id)

    def connect_copy(self, copy_id: int, address: str) -> None:
        """A fresh PUSH socket to a copy process's batch socket (its pid is in the address,
        so nothing queued for a process before it reaches it)."""
        self.close_copy(copy_id)
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(address)
        self._outs[copy_id] = sock

    def close_copy(self, copy_id: int) -> None:
        sock = self._outs.pop(copy_id, None)
        if sock is not None:
            sock.close(linger=0)

    def send(self, copy_id: int, message: ToWorker) -> bool:
        """Queue a message to a copy; False when it cannot take it now."""
        sock = self._outs.get(copy_id)
        if sock is None:
            return False
        try:
            sock.send_multipart(messages.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    async def run_inbox(self, handle: Handler) -> None:
        """The inbox's one reader: each message decoded (checked) here, once. ``handle`` is
        synchronous: it must not block."""

        def on_frames(frames: list[bytes]) -> None:
            try:
                message = messages.decode_from_worker(frames)
            except wire.WireError as exc:
                log.warning("dropped a malformed worker message: %s", exc)
                return
            handle(message)

        await read_forever(self._inbox, on_frames)

    def close(self) -> None:
        for copy_id in list(self._outs):
            self.close_copy(copy_id)
        self._inbox.close(linger=0)
        self.ctx.term()
