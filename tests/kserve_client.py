"""KServe's own Python client (``kserve``) against a running gateway, in a process of its own.

``python -m tests.kserve_client HTTP_URL GRPC_URL`` prints one JSON object: what each call
returned (or the error it raised). It runs apart from the tests because ``kserve`` and
``tritonclient.grpc`` each register the v2 protobuf messages (``inference.*``) in protobuf's
one default pool, so the two cannot be imported into the same process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def _try(call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await call()
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}


def _request(request_id: str | None, binary: bool = False) -> InferRequest:
    x = np.arange(16, dtype=np.float32)[None]
    if binary:
        tensor = InferInput("INPUT", [1, 16], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
    else:
        tensor = InferInput("INPUT", [1, 16], "FP32", x.reshape(-1).tolist())
    return InferRequest("synthetic", [tensor], request_id=request_id)


def _outputs(response: Any) -> dict[str, Any]:
    if isinstance(response, dict):  # what _try gives back for an error
        return response
    return {"id": response.id, "model_name": response.model_name,
            "OUTPUT": response.outputs[0].as_numpy().reshape(-1).tolist()}


async def main(http_url: str, grpc_url: str) -> dict[str, Any]:
    base = f"http://{http_url}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    report: dict[str, Any] = {
        "rest_live": await _try(lambda: rest.is_server_live(base)),
        "rest_ready": await _try(lambda: rest.is_server_ready(base)),
        "rest_model_ready": await _try(lambda: rest.is_model_ready(base, "synthetic")),
        "rest_infer_json": _outputs(await _try(
            lambda: rest.infer(base, _request("k1"), model_name="synthetic"))),
        "rest_infer_no_id": _outputs(await _try(
            lambda: rest.infer(base, _request(None), model_name="synthetic"))),
        "rest_infer_binary": _outputs(await _try(
            lambda: rest.infer(base, _request("k2", binary=True), model_name="synthetic"))),
        "rest_model_ready_unknown": await _try(lambda: rest.is_model_ready(base, "nope")),
        "rest_infer_unknown": await _try(
            lambda: rest.infer(base, _request("k4"), model_name="nope")),
    }
    await rest.close()
    grpc = InferenceGRPCClient(grpc_url, retries=0, timeout=30)
    report |= {
        "grpc_live": await _try(grpc.is_server_live),
        "grpc_ready": await _try(grpc.is_server_ready),
        "grpc_model_ready": await _try(lambda: grpc.is_model_ready("synthetic")),
        "grpc_infer": _outputs(await _try(lambda: grpc.infer(_request("k3")))),
    }
    await grpc.close()
    return report


def _strings(response: Any) -> Any:
    """The ``UPPER`` output of the strings model, as text (or the error raised)."""
    if isinstance(response, dict):
        return response
    out = next(o for o in response.outputs if o.name == "UPPER")
    return [x.decode() if isinstance(x, bytes) else str(x)
            for x in out.as_numpy().reshape(-1).tolist()]


async def bytes_main(http_url: str, grpc_url: str) -> dict[str, Any]:
    """BYTES tensors (``tests/models/strings.py``) through KServe's client."""
    base = f"http://{http_url}"
    words = ["kserve", "", "bytes"]

    def request(binary: bool) -> InferRequest:
        if binary:
            tensor = InferInput("TEXT", [1, 3], "BYTES")
            tensor.set_data_from_numpy(np.array([[w.encode() for w in words]], dtype=object),
                                       binary_data=True)
        else:
            tensor = InferInput("TEXT", [1, 3], "BYTES", words)
        return InferRequest("strings", [tensor], request_id="kb")

    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    report = {
        "rest_json": _strings(await _try(lambda: rest.infer(base, request(False),
                                                            model_name="strings"))),
        "rest_binary": _strings(await _try(lambda: rest.infer(base, request(True),
                                                              model_name="strings"))),
    }
    await rest.close()
    grpc = InferenceGRPCClient(grpc_url, retries=0, timeout=30)
    report["grpc"] = _strings(await _try(lambda: grpc.infer(request(False))))
    await grpc.close()
    return report


if __name__ == "__main__":
    run = bytes_main if sys.argv[3:] == ["--bytes"] else main
    print(json.dumps(asyncio.run(run(sys.argv[1], sys.argv[2]))))
