"""Ray Serve serving the suite's models over v2 JSON (run in ``.venv-bench-ray``):

    python -m bench.peers.ray_app SPEC.json

One application per model at ``/v2/models/<name>/infer``, ``num_replicas`` = copies, requests
merged by ``@serve.batch`` (max batch size and wait set to the model's). Ray Serve has no v2
protocol of its own: the deployment parses and answers v2 JSON itself.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from bench.peers.common import build

V2 = {"float32": "FP32", "uint8": "UINT8", "int32": "INT32"}


@serve.deployment(ray_actor_options={"num_cpus": 0})
class V2Model:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name = spec["name"]
        self.model = build(spec["entrypoint"], spec["parameters"])
        self.dtypes = {n: np.dtype(d) for n, d, _ in spec["inputs"]}
        self.batched.set_max_batch_size(spec["batch_size"])
        self.batched.set_batch_wait_timeout_s(spec["max_queue_delay_us"] / 1e6)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def batched(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        sizes = [len(next(iter(r.values()))) for r in requests]
        batch = {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}
        out = self.model.predict(batch, {})
        answers, start = [], 0
        for n in sizes:
            answers.append({k: v[start:start + n] for k, v in out.items()})
            start += n
        return answers

    async def __call__(self, request: Request) -> JSONResponse:
        doc = await request.json()
        arrays = {i["name"]: np.asarray(i["data"], dtype=self.dtypes[i["name"]])
                  .reshape(i["shape"]) for i in doc["inputs"]}
        out = await self.batched(arrays)
        return JSONResponse({"model_name": self.name, "outputs": [
            {"name": k, "datatype": V2[str(v.dtype)], "shape": list(v.shape),
             "data": v.ravel().tolist()} for k, v in out.items()]})


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    ray.init(num_cpus=spec["num_cpus"], include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": spec["http_port"]})
    for m in spec["models"]:
        app = V2Model.options(num_replicas=m["copies"]).bind(m)  # type: ignore[attr-defined]
        serve.run(app, name=m["name"],
                  route_prefix=f"/v2/models/{m['name']}/infer")
    print("RAY READY", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
