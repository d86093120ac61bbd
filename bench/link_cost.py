"""What one gateway <-> worker message costs: ZeroMQ PUSH/PULL over ipc:// (what
``gateway.link`` uses) against a Unix ``SOCK_SEQPACKET`` pair, ping-pong with one message in
flight, both processes on the core this runs on (``taskset -c 0 python -m bench.link_cost``).

It answers the profile's question: py-spy puts a large share of the gateway's busy samples in
``zmq.Socket.send``, but on one core the I/O thread libzmq wakes runs *inside* that sample.
CPU time per round trip (``getrusage``), not samples, says what a transport change would save.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import tempfile
import time
from collections.abc import Callable

import zmq

MESSAGE = b'{"items":[{"rid":"ifx-1","inputs":[["ifx-1-0",0,64,"FP32",[1,16]]]}]}' * 3


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def zmq_round_trips(n: int, directory: str) -> None:
    to_worker, to_gateway = f"ipc://{directory}/w", f"ipc://{directory}/g"
    pid = os.fork()
    if pid == 0:
        ctx = zmq.Context()
        inbox, outbox = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        inbox.bind(to_worker)
        outbox.connect(to_gateway)
        for _ in range(n):
            outbox.send_multipart(inbox.recv_multipart())
        time.sleep(0.2)  # let the last answer leave before the context goes
        os._exit(0)
    ctx = zmq.Context()
    outbox, inbox = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    outbox.connect(to_worker)
    inbox.bind(to_gateway)
    for _ in range(n):
        outbox.send_multipart([b"batch", MESSAGE])
        inbox.recv_multipart()
    os.waitpid(pid, 0)
    outbox.close(linger=0)
    inbox.close(linger=0)
    ctx.term()


def unix_round_trips(n: int, directory: str) -> None:
    gateway, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        gateway.close()
        for _ in range(n):
            worker.send(worker.recv(1 << 16))
        os._exit(0)
    worker.close()
    for _ in range(n):
        gateway.send(b"batch" + MESSAGE)
        gateway.recv(1 << 16)
    os.waitpid(pid, 0)
    gateway.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: list[tuple[str, Callable[[int, str], None]]] = [
        ("zmq ipc", zmq_round_trips), ("unix seqpacket", unix_round_trips)]
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.rounds):
            for name, run in runs:
                wall, own, child = (time.perf_counter(), _cpu(resource.RUSAGE_SELF),
                                    _cpu(resource.RUSAGE_CHILDREN))
                run(args.messages, directory)
                n = args.messages
                print(f"{name:15s} round trip {(time.perf_counter() - wall) / n * 1e6:6.1f} µs "
                      f"wall; CPU per round trip: sender "
                      f"{(_cpu(resource.RUSAGE_SELF) - own) / n * 1e6:5.1f} µs, receiver "
                      f"{(_cpu(resource.RUSAGE_CHILDREN) - child) / n * 1e6:5.1f} µs")


if __name__ == "__main__":
    main()
