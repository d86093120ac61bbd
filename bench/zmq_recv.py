"""How the ZeroMQ bridge should land a request's tensor in shared memory: two ways, measured.

    python -m bench.zmq_recv [--images 64] [--messages 40]

A DEALER thread sends ``[header, arrow]`` requests of ``images`` x 224x224x3 uint8 over TCP
loopback to a ROUTER in this thread, which lands each one in a slot of a real
``SlabAllocator`` (warm slots, as in the gateway):

- ``copy=False``: receive the frames zero-copy, read the Arrow stream in place
  (``bridges.zmq.arrow_ipc.read_batch``), copy the tensor's values buffer into the slot (the
  bridge's way);
- ``recv_into``: receive the header, take a slot as large as the arrow frame (the header has
  to say how large), ``recv_into`` the slot, read the Arrow stream in place there; the values
  stay where they landed (a descriptor at an offset inside the slot).

Both make one copy after libzmq's own (its message buffer -> the slot). It prints the time the
receiving thread spends per message from "a message is ready" to "its values are in the slot",
and the throughput with the sender running. Numbers are comparable only within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from typing import Any

import numpy as np
import orjson
import zmq

from inferoxy.protocol import arrow_ipc, zmq_message
from shm.slab import SlabAllocator


def sender(ctx: zmq.Context[zmq.Socket[bytes]], url: str, frames: list[Any], count: int,
           window: int) -> None:
    sock = ctx.socket(zmq.DEALER)
    sock.connect(url)
    sent = acked = 0
    while acked < count:
        while sent < count and sent - acked < window:
            sock.send_multipart(frames, copy=False)
            sent += 1
        sock.recv()
        acked += 1
    sock.close(linger=0)


def run(mode: str, images: int, count: int) -> tuple[list[float], float]:
    batch = np.random.default_rng(0).integers(0, 256, (images, 224, 224, 3), dtype=np.uint8)
    header, arrow = zmq_message.encode_request({"model": "stub", "id": 1}, {"IMAGE": batch})
    size = arrow.size
    header = orjson.dumps({"model": "stub", "id": 1, "arrow_bytes": size})
    slab = SlabAllocator(f"ifxbench{os.getpid()}", limit_bytes=1 << 30, segment_bytes=64 << 20)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    thread = threading.Thread(target=sender, args=(ctx, f"tcp://127.0.0.1:{port}",
                                                   [header, arrow], count, 2))
    times: list[float] = []
    checksum = 0
    try:
        slab.free(slab.allocate(batch.nbytes))  # warm the slot both modes use
        slab.free(slab.allocate(size))
        thread.start()
        start = time.perf_counter()
        for _ in range(count):
            sock.poll()
            t0 = time.perf_counter()
            if mode == "copy=False":
                peer, _head, frame = sock.recv_multipart(copy=False)
                values = arrow_ipc.tensor_column("IMAGE", arrow_ipc.read_batch(frame.buffer)
                                            .column(0)).values
                slot = slab.allocate(values.nbytes)
                np.copyto(slot.view(np.dtype(np.uint8), values.shape), values)
                del values, frame
            else:
                peer = sock.recv(copy=False)
                need = orjson.loads(sock.recv())["arrow_bytes"]
                slot = slab.allocate(need)
                got = sock.recv_into(slot.memory(need))
                assert got == need
                column = arrow_ipc.read_batch(slot.memory(need)).column(0)
                values = arrow_ipc.tensor_column("IMAGE", column).values
                offset = values.ctypes.data - slot.view(np.dtype(np.uint8), (1,)).ctypes.data
                assert 0 < offset < need
                del values, column
            times.append(time.perf_counter() - t0)
            checksum += int(slot.view(np.dtype(np.uint8), (16,))[7])
            slab.free(slot)
            sock.send_multipart([peer.bytes if hasattr(peer, "bytes") else peer, b"ok"])
        elapsed = time.perf_counter() - start
        thread.join()
    finally:
        sock.close(linger=0)
        ctx.term()
        slab.close()
    return times, count * images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    mb = args.images * 224 * 224 * 3 / 1e6
    print(f"{args.images} x 224x224x3 uint8 = {mb:.1f} MB per message, {args.messages} "
          f"messages, best of {args.rounds} rounds per mode (interleaved)\n")
    results: dict[str, list[tuple[float, float]]] = {"copy=False": [], "recv_into": []}
    for _ in range(args.rounds):
        for mode in results:
            times, rate = run(mode, args.images, args.messages)
            results[mode].append((statistics.median(times) * 1e3, rate))
    print("| mode | receive + land, median ms | GB/s | images/s (with sender) |")
    print("|---|---|---|---|")
    for mode, rows in results.items():
        ms = min(r[0] for r in rows)
        rate = max(r[1] for r in rows)
        print(f"| {mode} | {ms:.2f} | {mb / ms:.1f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
