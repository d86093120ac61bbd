"""PyTriton serving the suite's models (run in ``.venv-bench-triton``):

    python -m bench.peers.pytriton_server SPEC.json

SPEC: {"http_port", "grpc_port", "metrics_port", "models": [{name, entrypoint, parameters,
batch_size, max_queue_delay_us, copies, inputs: [[name, dtype, shape]], outputs: [...]}]}.
Each copy is one instance of the model class (PyTriton runs one callable per instance).
The statistics and shared-memory APIs stay open (``restricted_endpoints=[]``): PyTriton
otherwise puts them behind an access token, and perf_analyzer needs them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from bench.peers.common import build


def infer_fn(model: Any) -> Any:
    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return dict(model.predict(inputs, {}))
    return infer


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    config = TritonConfig(http_address="127.0.0.1", http_port=spec["http_port"],
                          grpc_address="127.0.0.1", grpc_port=spec["grpc_port"],
                          metrics_port=spec["metrics_port"], log_verbose=0)
    with Triton(config=config,
                security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        for m in spec["models"]:
            fns = [infer_fn(build(m["entrypoint"], m["parameters"])) for _ in range(m["copies"])]
            triton.bind(
                model_name=m["name"], infer_func=fns,
                inputs=[Tensor(name=n, dtype=np.dtype(d), shape=tuple(s))
                        for n, d, s in m["inputs"]],
                outputs=[Tensor(name=n, dtype=np.dtype(d), shape=tuple(s))
                         for n, d, s in m["outputs"]],
                config=ModelConfig(max_batch_size=m["batch_size"], batcher=DynamicBatcher(
                    max_queue_delay_microseconds=m["max_queue_delay_us"])),
                strict=False,
            )
        print("PYTRITON READY", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
