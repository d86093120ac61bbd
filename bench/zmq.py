"""ZeroMQ/Arrow against HTTP binary, images per second on the stub, in one run.

    python -m bench.zmq [--duration 5] [--images 64] [--window 4]

Starts ``inferoxy serve --models bench/models.yaml`` (the ``image`` model: the identity on
224x224x3 uint8, ``batch_size`` 8) on loopback and measures, one after the other:

- HTTP, binary tensor extension, one image per request, ``wrk`` with 16 connections (the
  scenario of ``bench.http``);
- ZeroMQ, ``images`` images per request (one Arrow batch; the gateway splits it into
  batches of 8), ``window`` requests in flight on one DEALER socket, the request frames
  encoded once up front and the replies received but not decoded (as wrk does for HTTP);
- the same through ``inferoxy.client.Client.zmq(...).infer_many`` (client-side Arrow encoding
  and decoding included).

It prints images/s and each ZeroMQ row's ratio to HTTP. The machines are shared and noisy:
compare numbers of one run only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import zmq

from bench.http import (
    IMAGE_HEADER,
    ROOT,
    free_port,
    lua_binary,
    wait_http,
    wrk,
)
from inferoxy.client import Client
from inferoxy.protocol import zmq_message

SIDE = 224


def zmq_raw(url: str, images: int, window: int, duration: float) -> float:
    """Images/s with pre-encoded requests, ``window`` in flight, replies not decoded."""
    batch = np.random.default_rng(0).integers(0, 256, (images, SIDE, SIDE, 3), dtype=np.uint8)
    frames = zmq_message.encode_request({"model": "image", "id": 0}, {"IMAGE": batch})
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        for _ in range(3):  # warm up: slots, segments, connections
            sock.send_multipart(frames, copy=False)
            zmq_message.decode_reply(sock.recv_multipart())
        sent = done = 0
        start = time.perf_counter()
        end = start + duration
        while True:
            now = time.perf_counter()
            while now < end and sent - done < window:
                sock.send_multipart(frames, copy=False)
                sent += 1
            if done == sent:
                break
            header = sock.recv_multipart(copy=False)[0]
            if b'"ok"' not in header.bytes:
                raise RuntimeError(f"request failed: {header.bytes!r}")
            done += 1
        return done * images / (time.perf_counter() - start)
    finally:
        sock.close(linger=0)
        ctx.term()


def zmq_client(url: str, images: int, window: int, duration: float) -> float:
    """Images/s through ``Client.infer_many`` (encoding and decoding included)."""
    rows = images * window * 4
    batch = np.random.default_rng(1).integers(0, 256, (rows, SIDE, SIDE, 3), dtype=np.uint8)
    with Client.zmq(url) as client:
        client.infer_many("image", {"IMAGE": batch[: images * 2]}, rows_per_request=images)
        total = 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration:
            out = client.infer_many("image", {"IMAGE": batch}, rows_per_request=images,
                                    window=window)
            total += len(out["IMAGE"])
        return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    ports = {name: free_port() for name in
             ("http", "grpc", "metrics", "ws", "zmq", "admin")}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "inferoxy", "serve", "--models", "bench/models.yaml",
               "--log-level", "WARNING"]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    gateway = subprocess.Popen(command, cwd=ROOT, env=env)
    zmq_url = f"tcp://127.0.0.1:{ports['zmq']}"
    try:
        wait_http(f"http://127.0.0.1:{ports['http']}/v2/health/ready")
        http = wrk(f"http://127.0.0.1:{ports['http']}/v2/models/image/infer",
                   lua_binary(IMAGE_HEADER, SIDE * SIDE * 3), 16, args.duration)["rps"]
        raw = zmq_raw(zmq_url, args.images, args.window, args.duration)
        client = zmq_client(zmq_url, args.images, args.window, args.duration)
        print(f"stub (identity), {SIDE}x{SIDE}x3 uint8, batch_size 8, {args.duration} s each\n")
        print("| path | images/s | ratio to HTTP |")
        print("|---|---|---|")
        print(f"| HTTP binary, 1 image/request, wrk c=16 | {http:.0f} | 1.00 |")
        print(f"| ZeroMQ/Arrow, {args.images} images/request, window {args.window}, raw "
              f"pyzmq | {raw:.0f} | {raw / http:.2f} |")
        print(f"| ZeroMQ/Arrow, {args.images} images/request, window {args.window}, "
              f"Client.infer_many | {client:.0f} | {client / http:.2f} |")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)


if __name__ == "__main__":
    main()
