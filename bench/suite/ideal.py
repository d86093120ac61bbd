"""The ideal: the same model called in-process with full batches, no server at all.

Two numbers: the *formula* for a model with a declared cost, ``copies x batch / cost(batch)``
rows per second (the synthetic model's ``a + b*n`` ms), and the *measured* one:

    python -m bench.suite.ideal --model NAME --duration S

``copies`` threads (the model sleeps like a GPU, or is the stub) each call ``predict`` on a
batch of ``batch_size`` rows for ``S`` seconds. Prints one JSON line like the load clients
(a "request" is one batch; latency is one ``predict`` call).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from bench.suite.grpc_load import summarize
from bench.suite.scenario import Model, load_models


def formula_rows_per_s(copies: int, batch: int, cost_ms: float) -> float:
    """Rows per second of ``copies`` copies each running full batches back to back."""
    if copies < 1 or batch < 1 or cost_ms <= 0:
        raise ValueError("copies and batch must be >= 1 and cost_ms > 0")
    return copies * batch / (cost_ms / 1000.0)


def formula_for(model: Model) -> float | None:
    cost = model.cost_ms(model.batch_size)
    return None if cost is None else formula_rows_per_s(model.copies, model.batch_size, cost)


def measure(model: Model, duration_s: float) -> dict[str, Any]:
    from bench.peers.common import build
    from bench.suite.loadgen import sample_inputs

    batch = sample_inputs(model, model.batch_size)
    params: dict[str, object] = {}
    if not model.stateless:  # one sequence per row, each already started
        params = {"sequence_id": list(range(model.batch_size))}
    copies = [build(model.entrypoint, model.parameters) for _ in range(model.copies)]
    for c in copies:
        c.predict(batch, params)  # warm
    latencies: list[list[float]] = [[] for _ in copies]
    end = time.perf_counter() + duration_s

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            copies[i].predict(batch, params)
            latencies[i].append(time.perf_counter() - t0)

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(copies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    return summarize(flat, len(flat), len(flat) * model.batch_size, seconds, 0, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(measure(load_models()[args.model], args.duration)), flush=True)


if __name__ == "__main__":
    main()
