"""One gRPC load client for every system that speaks v2 gRPC (closed loop):

    python -m bench.suite.grpc_load --target HOST:PORT --model NAME --concurrency N --duration S

``N`` callers on one ``grpc.aio`` channel, each sending the next ``ModelInfer`` as soon as its
last one is answered (tensors in ``raw_input_contents``), for ``S`` seconds after a warm-up.
Prints one JSON line: requests, items, seconds, errors, latency percentiles (ms). A load
generator, not a server: asyncio is grpc.aio's own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from bench.suite.scenario import load_models


def summarize(latencies: list[float], requests: int, items: int, seconds: float,
              errors: int, first_error: str) -> dict[str, Any]:
    ordered = sorted(latencies) or [0.0]

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    return {"requests": requests, "items": items, "seconds": seconds, "errors": errors,
            "first_error": first_error, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}


def build_request(model_name: str) -> pb.ModelInferRequest:
    from bench.suite.loadgen import sample_inputs  # numpy only on this path

    model = load_models()[model_name]
    request = pb.ModelInferRequest(model_name=model_name)
    for (name, value), t in zip(sample_inputs(model).items(), model.inputs, strict=True):
        request.inputs.add(name=name, datatype=t.datatype, shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    for t in model.outputs:
        request.outputs.add(name=t.name)
    return request


async def run(target: str, model: str, concurrency: int, duration: float) -> dict[str, Any]:
    request = build_request(model)
    options = [("grpc.max_receive_message_length", 64 << 20),
               ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            await stub.ModelInfer(request, timeout=30)
        latencies: list[float] = []
        errors = 0
        first_error = ""
        end = time.perf_counter() + duration

        async def caller() -> None:
            nonlocal errors, first_error
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    reply = await stub.ModelInfer(request, timeout=30)
                    if not reply.raw_output_contents and not reply.outputs[0].contents.ListFields():
                        raise ValueError("an answer with no output data")
                except (grpc.aio.AioRpcError, ValueError) as exc:
                    errors += 1
                    first_error = first_error or str(exc)[:300]
                    continue
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(caller())
        seconds = time.perf_counter() - start
    rows = request.inputs[0].shape[0]
    return summarize(latencies, len(latencies), len(latencies) * rows, seconds, errors,
                     first_error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.target, args.model, args.concurrency,
                                     args.duration))), flush=True)


if __name__ == "__main__":
    main()
