"""A Triton Python-backend model (copied as ``model.py`` into each model of the generated
repository): builds the model named by the config's ``entrypoint`` parameter and serves each
batch Triton's dynamic batcher forms with one ``predict`` call."""

from __future__ import annotations

import json
import sys

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

    def execute(self, requests: list[object]) -> list[object]:
        from bench.peers.common import run_batch

        arrays = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                   for name in self.inputs} for r in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a[n])
                                                           for n in self.outputs])
                for a in run_batch(self.model, arrays)]
