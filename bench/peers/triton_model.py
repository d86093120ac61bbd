"""A Triton Python-backend model (copied as ``model.py`` into each model of the generated
repository): builds the model named by the config's ``entrypoint`` parameter and serves each
batch Triton's batcher forms with one ``predict`` call.

A stateful model runs under Triton's sequence batcher, which adds the control inputs START,
END and CORRID to every request: they become the ``sequence_id`` parameter (one per item) and
the model's ``on_sequence_start`` / ``on_sequence_end`` calls, as Inferoxy's worker makes them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        sys.path.insert(0, params["root"])
        from bench.peers.common import build

        self.model = build(params["entrypoint"], json.loads(params["model_parameters"]))
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.stateful = "sequence_batching" in config

    def execute(self, requests: list[object]) -> list[object]:
        from bench.peers.common import run_batch

        arrays = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                   for name in self.inputs} for r in requests]
        if not self.stateful:
            answers = run_batch(self.model, arrays)
        else:
            answers = self.run_sequences(requests, arrays)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a[n])
                                                           for n in self.outputs])
                for a in answers]

    def run_sequences(self, requests: list[object], arrays: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:
        import numpy as np

        def control(r: object, name: str) -> int:
            return int(pb_utils.get_input_tensor_by_name(r, name).as_numpy().ravel()[0])

        ids = [control(r, "CORRID") for r in requests]
        for r, seq in zip(requests, ids, strict=True):
            if control(r, "START"):
                self.model.on_sequence_start(seq)
        batch = {k: np.concatenate([a[k] for a in arrays]) for k in self.inputs}
        out = self.model.predict(batch, {"sequence_id": ids})
        for r, seq in zip(requests, ids, strict=True):
            if control(r, "END"):
                self.model.on_sequence_end(seq, "ended")
        return [{k: v[i:i + 1] for k, v in out.items()} for i in range(len(requests))]
