"""A stateful example: the running sum of a stream of frames, per sequence.

Each item of a batch belongs to a sequence (``parameters["sequence_id"]``, one entry per
item, with ``sequence_start`` / ``sequence_end``). The model keeps, per sequence, the sum of
every ``INPUT`` it has seen and the number of frames; it answers ``SUM`` (the running sum)
and ``COUNT`` (frames so far) — answers that are only right if every frame of a sequence
reached this copy, once, in order. ``on_sequence_end`` drops a sequence's state, whatever
the reason (ended, evicted after idling, stream closed).
"""

from __future__ import annotations

import numpy as np


class RunningSum:
    def __init__(self, device: str) -> None:
        self.device = device
        self.state: dict[object, tuple[np.ndarray, int]] = {}
        self.ended: list[tuple[object, str]] = []  # (id, reason), for the curious

    def on_sequence_start(self, sequence_id: object) -> None:
        self.state.pop(sequence_id, None)

    def on_sequence_end(self, sequence_id: object, reason: str) -> None:
        self.state.pop(sequence_id, None)
        self.ended = [*self.ended[-99:], (sequence_id, reason)]

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, object]
                ) -> dict[str, np.ndarray]:
        x = inputs["INPUT"]
        ids = parameters.get("sequence_id")
        if not isinstance(ids, list) or len(ids) != len(x):
            raise ValueError("RunningSum is stateful: it needs one sequence_id per item")
        sums = np.empty_like(x, dtype=np.float32)
        counts = np.empty((len(x), 1), dtype=np.int32)
        for i, seq_id in enumerate(ids):
            total, count = self.state.get(seq_id, (np.zeros(x.shape[1:], np.float32), 0))
            total = total + x[i]
            count += 1
            self.state[seq_id] = (total, count)
            sums[i] = total
            counts[i] = count
        return {"SUM": sums, "COUNT": counts}
