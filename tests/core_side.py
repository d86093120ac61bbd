"""The control process's end of a data-plane process's link, for tests that drive a real
``CoreLink`` (``bridges.dataplane.facade``) over real sockets."""

from __future__ import annotations

from typing import Any

import trio
import zmq

from gateway import bridge_wire as bw


async def receive_at_core(sock: zmq.Socket[bytes]) -> tuple[bytes, dict[str, Any], list[Any]]:
    """The next message a data-plane process sent the core, decoded (5 s at most)."""
    with trio.fail_after(5):
        while True:
            try:
                return bw.decode(sock.recv_multipart(zmq.NOBLOCK), bw.TO_CORE)
            except zmq.Again:
                await trio.sleep(0.002)
