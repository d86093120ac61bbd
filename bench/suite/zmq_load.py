"""Load on Inferoxy's ZeroMQ/Arrow bridge (closed loop, ``window`` messages in flight):

    python -m bench.suite.zmq_load --url tcp://HOST:PORT --model NAME --rows 64 --window 4

Each message is one Arrow record batch of ``rows`` items (``inferoxy.protocol``, the format the
bridge documents); a DEALER keeps ``window`` requests unanswered and matches replies by id.
Prints one JSON line like ``grpc_load``; ``items`` counts rows.
"""

from __future__ import annotations

import argparse
import json
import time

import orjson
import zmq

from bench.suite.grpc_load import summarize
from bench.suite.loadgen import sample_inputs
from bench.suite.scenario import load_models
from inferoxy.protocol import zmq_header, zmq_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    model = load_models()[args.model]
    inputs = sample_inputs(model, args.rows)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.url)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    errors, first_error, next_id = 0, "", 0

    _, arrow = zmq_message.encode_request({"model": args.model, "id": 0}, inputs)  # encoded once

    def send() -> None:
        nonlocal next_id
        header = zmq_header.encode_header({"model": args.model, "id": next_id})
        sent_at[next_id] = time.perf_counter()
        sock.send_multipart([header, arrow], copy=False)
        next_id += 1

    def receive() -> None:
        nonlocal errors, first_error
        if not sock.poll(30_000):
            raise TimeoutError("no reply within 30 s")
        frames = sock.recv_multipart(copy=False)
        head = orjson.loads(frames[0].bytes)
        t0 = sent_at.pop(head["id"])
        if head.get("status") != "ok" or len(frames) < 2:
            errors += 1
            first_error = first_error or str(head)[:300]
        else:
            latencies.append(time.perf_counter() - t0)

    try:
        for _ in range(2):  # warm up: slots, segments, the connection
            send()
            receive()
        latencies.clear()
        start = time.perf_counter()
        end = start + args.duration
        while time.perf_counter() < end or sent_at:
            while time.perf_counter() < end and len(sent_at) < args.window:
                send()
            receive()
        seconds = time.perf_counter() - start
    finally:
        sock.close()
        ctx.term()
    print(json.dumps(summarize(latencies, len(latencies), len(latencies) * args.rows, seconds,
                               errors, first_error)), flush=True)


if __name__ == "__main__":
    main()
