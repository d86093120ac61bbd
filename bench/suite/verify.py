"""Check a system's answers before trusting its numbers (docs/facts.md: Triton's stub with
numpy 2 answers every request with empty outputs at full speed, and perf_analyzer reports no
error). One request over the scenario's protocol family, compared with the model itself
called in-process on the same input."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np

from bench.peers.common import build
from bench.suite.loadgen import sample_inputs, v2_json_body
from bench.suite.scenario import Model
from bench.suite.systems.base import Running


class VerificationError(RuntimeError):
    """A system answered, but not what the model computes."""


def expected(model: Model, params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    return dict(build(model.entrypoint, model.parameters).predict(sample_inputs(model),
                                                                  params or {}))


def compare(system: str, path: str, got: dict[str, np.ndarray],
            want: dict[str, np.ndarray]) -> None:
    for name, value in want.items():
        if name not in got:
            raise VerificationError(f"{system} over {path}: no output {name!r} "
                                    f"(got {sorted(got)})")
        out = np.asarray(got[name])
        if out.size != value.size or not np.allclose(out.reshape(value.shape), value):
            raise VerificationError(
                f"{system} over {path}: output {name!r} is wrong: shape {list(out.shape)} "
                f"(want {list(value.shape)}), first values {out.ravel()[:4].tolist()} "
                f"(want {value.ravel()[:4].tolist()})")


def post_json(url: str, body: bytes) -> dict[str, np.ndarray]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        doc = json.loads(resp.read())
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


def verify(running: Running, model: Model, path: str) -> None:
    if path == "sequence-http":
        verify_sequence(running, model)
        return
    want = expected(model)
    if path == "http-json":
        got = post_json(f"http://{running.http}/v2/models/{model.name}/infer",
                        v2_json_body(model))
    elif path in ("http-binary", "http-shm"):
        import tritonclient.http as http

        client = http.InferenceServerClient(running.http, network_timeout=60)
        inputs = []
        for (name, value), t in zip(sample_inputs(model).items(), model.inputs, strict=True):
            inp = http.InferInput(name, list(value.shape), t.datatype)
            inp.set_data_from_numpy(value, binary_data=True)
            inputs.append(inp)
        outs = [http.InferRequestedOutput(t.name, binary_data=True) for t in model.outputs]
        result = client.infer(model.name, inputs, outputs=outs)
        got = {t.name: result.as_numpy(t.name) for t in model.outputs}
        client.close()
    elif path in ("grpc", "grpc-shm"):
        import tritonclient.grpc as grpcclient

        gclient = grpcclient.InferenceServerClient(running.grpc or "")
        ginputs = []
        for (name, value), t in zip(sample_inputs(model).items(), model.inputs, strict=True):
            ginp = grpcclient.InferInput(name, list(value.shape), t.datatype)
            ginp.set_data_from_numpy(value)
            ginputs.append(ginp)
        gresult = gclient.infer(model.name, ginputs, client_timeout=60)
        got = {t.name: gresult.as_numpy(t.name) for t in model.outputs}
        gclient.close()
    elif path == "zmq":
        from inferoxy.client import Client

        with Client.zmq(running.zmq or "") as zclient:
            got = zclient.infer(model.name, sample_inputs(model))
    else:
        raise VerificationError(f"no verification for path {path!r}")
    compare(running.name, path, got, want)


def verify_sequence(running: Running, model: Model) -> None:
    """Two requests of one sequence: the second answer is the model's after two frames."""
    url = f"http://{running.http}/v2/models/{model.name}/infer"
    seq: dict[str, Any] = {"sequence_id": 987654}
    post_json(url, v2_json_body(model, {**seq, "sequence_start": True}))
    got = post_json(url, v2_json_body(model, {**seq, "sequence_end": True}))
    local = build(model.entrypoint, model.parameters)
    ids = {"sequence_id": [987654]}
    local.predict(sample_inputs(model), ids)
    compare(running.name, "sequence-http", got, dict(local.predict(sample_inputs(model), ids)))
