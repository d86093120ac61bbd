"""The control process's end of a data-plane process's link, for tests that drive a real
``CoreLink`` (``bridges.dataplane.facade``) over real sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio
import zmq

from bridges.dataplane.facade import CoreLink
from gateway import bridge_wire as bw
from shm.slab import SlabAllocator


async def receive_at_core(sock: zmq.Socket[bytes]) -> tuple[bytes, dict[str, Any], list[Any]]:
    """The next message a data-plane process sent the core, decoded (5 s at most)."""
    with trio.fail_after(5):
        while True:
            try:
                return bw.decode(sock.recv_multipart(zmq.NOBLOCK), bw.TO_CORE)
            except zmq.Again:
                await trio.sleep(0.002)


@dataclass
class CoreEnd:
    """A real ``CoreLink`` (data-plane process 0) and the core's two sockets to it."""

    link: CoreLink
    slab: SlabAllocator
    intake: zmq.Socket[bytes]  # what the data-plane process sends the core
    push: zmq.Socket[bytes]  # what the core sends it


@contextmanager
def core_end(run_dir: str, tag: str) -> Iterator[CoreEnd]:
    ctx = zmq.Context()
    intake = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    slab = SlabAllocator(f"ifx-{tag}-{os.getpid()}", limit_bytes=1 << 20,
                         segment_bytes=1 << 16)
    link = CoreLink(0, run_dir, slab)
    try:
        intake.bind(bw.intake_address(run_dir))
        push.bind(f"ipc://{run_dir}/bridge-0.sock")
        yield CoreEnd(link, slab, intake, push)
    finally:
        link.close()
        slab.close()
        intake.close(linger=0)
        push.close(linger=0)
        ctx.term()
