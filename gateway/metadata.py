"""What the v2 metadata and configuration endpoints say about a model, for every bridge."""

from __future__ import annotations

from typing import Any

from gateway.model_server import ModelServer
from shm.datatypes import V2_TO_CONFIG


def model_metadata(server: ModelServer) -> dict[str, Any]:
    c = server.config
    return {
        "name": c.name,
        "versions": list(server.versions),
        "platform": "inferoxy",
        "inputs": [t.to_metadata(c.batched) for t in c.inputs],
        "outputs": [t.to_metadata(c.batched) for t in c.outputs],
    }


def model_config(server: ModelServer) -> dict[str, Any]:
    """The model's configuration in Triton's ``ModelConfig`` JSON form (perf_analyzer reads it)."""
    c = server.config

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "data_type": V2_TO_CONFIG[t.datatype], "dims": list(t.shape)}
            for t in specs
        ]

    gpus = sorted({p.gpu for p in (copy.placement for copy in server.copies) if p.gpu is not None})
    return {
        "name": c.name,
        "platform": "inferoxy",
        "backend": "inferoxy",
        "version_policy": {"specific": {"versions": [int(v) for v in server.versions]}},
        "max_batch_size": c.batch_size,
        "input": tensors(c.inputs),
        "output": tensors(c.outputs),
        # One scheduler or the other (a oneof in Triton's ModelConfig).
        "dynamic_batching": None if not c.stateless else {
            "max_queue_delay_microseconds": c.max_queue_delay_us,
            "default_queue_policy": {"max_queue_size": c.max_queue_size},
        },
        "instance_group": [{
            "name": f"{c.name}_0",
            "kind": "KIND_GPU" if gpus else "KIND_CPU",
            "count": len(server.copies),
            "gpus": gpus,
        }],
        "sequence_batching": None if c.stateless else {
            "max_sequence_idle_microseconds": c.max_sequence_idle_us,
            "direct": {},
        },
        "parameters": {k: {"string_value": str(v)} for k, v in c.parameters.items()},
        "model_transaction_policy": {"decoupled": True} if c.decoupled else None,
    }
