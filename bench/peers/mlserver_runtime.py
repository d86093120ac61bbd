"""An MLServer runtime serving one of the suite's models (run in ``.venv-bench-mlserver``).

``model-settings.json`` names it as ``implementation`` and passes the model's entrypoint and
constructor arguments in ``parameters.extra``; MLServer's adaptive batching (``max_batch_size``,
``max_batch_time``) merges requests into one ``predict`` call, as Triton's batcher does.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers.common import build


class Served(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self._model = build(extra["entrypoint"], extra["model_parameters"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        out = self._model.predict(inputs, {})
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output(k, v) for k, v in out.items()])
