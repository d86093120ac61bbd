"""REST and gRPC through ``tritonclient`` (binary tensors), blocking."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inferoxy.client._common import Arrays, host_port, timeout_us, wait_s_for
from inferoxy.client.errors import GRPC_TO_HTTP, InferenceError


class TritonTransport:
    """``tritonclient.http`` or ``tritonclient.grpc``, binary tensors, every output returned."""

    def __init__(self, protocol: str, url: str, wait_s: float) -> None:
        try:
            if protocol == "http":
                import tritonclient.http as module
            else:
                import tritonclient.grpc as module
            from tritonclient.utils import InferenceServerException, np_to_triton_dtype
        except ImportError as exc:
            raise ImportError(
                f"Client.{protocol} needs tritonclient: pip install 'tritonclient[{protocol}]'"
            ) from exc
        self.protocol = protocol
        self._module: Any = module
        self._exception = InferenceServerException
        self._dtype = np_to_triton_dtype
        self._wait_s = wait_s
        self._max_rows: dict[tuple[str, str], int | None] = {}
        if protocol == "http":
            self._client: Any = module.InferenceServerClient(
                host_port(url), connection_timeout=wait_s, network_timeout=wait_s
            )
        else:
            self._client = module.InferenceServerClient(host_port(url))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], version: str | None,
              timeout: float | None, parameters: Mapping[str, Any] | None) -> Arrays:
        tensors = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = self._module.InferInput(name, list(array.shape), self._dtype(array.dtype))
            if self.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        kwargs: dict[str, Any] = {
            "model_version": "" if version is None else str(version),
            "timeout": timeout_us(timeout),
            "parameters": dict(parameters) if parameters else None,
        }
        if self.protocol == "grpc":
            kwargs["client_timeout"] = wait_s_for(timeout, self._wait_s)
        try:
            result = self._client.infer(model, tensors, **kwargs)
        except self._exception as exc:
            raise self._error(exc) from None
        response = result.get_response()
        if self.protocol == "http":
            names = [o["name"] for o in response.get("outputs", [])]
        else:
            names = [o.name for o in response.outputs]
        return {name: result.as_numpy(name) for name in names}

    def max_rows(self, model: str, version: str | None) -> int | None:
        """The model's ``max_batch_size`` (a request's most rows here), None if unbounded."""
        key = (model, version or "")
        if key not in self._max_rows:
            try:
                if self.protocol == "http":
                    config = self._client.get_model_config(model, version or "")
                else:
                    config = self._client.get_model_config(model, version or "",
                                                           as_json=True)["config"]
            except self._exception as exc:
                raise self._error(exc) from None
            rows = int(config.get("max_batch_size") or 0)
            self._max_rows[key] = rows or None
        return self._max_rows[key]

    def _error(self, exc: Any) -> InferenceError:
        status = str(exc.status() or "")
        message = str(exc.message() or exc)
        if status.isdigit():
            return InferenceError(int(status), message)
        name = status.rsplit(".", 1)[-1]  # "StatusCode.NOT_FOUND"
        if name in GRPC_TO_HTTP:
            return InferenceError(GRPC_TO_HTTP[name], message)
        return InferenceError(503, message)  # no status: the server was not reached

    def close(self) -> None:
        self._client.close()
