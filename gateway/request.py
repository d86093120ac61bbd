"""A request on its way through the core, and what comes back for it.

Nothing here holds tensor bytes: inputs are descriptors of gateway-owned slots, outputs are
numpy views over a worker's output slots. Ownership of the input slots passes to the core at
``submit``; the core frees them when no worker can read them any more (the batch finished,
or the request left the queue unrun).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from gateway.errors import InferoxyError
from shm.descriptor import Descriptor
from shm.messages import OutputTarget, SequenceRef
from shm.slab import Slot

_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class InferRequest:
    model: str
    version: str
    inputs: dict[str, Descriptor]
    slots: list[Slot]
    rows: int
    key: Hashable  # requests with equal keys may share a batch
    parameters: dict[str, Any]
    deadline: float  # trio.current_time() by which an answer is due
    request_id: str = ""  # the client's id, echoed back
    region_inputs: tuple[str, ...] = ()  # inputs that lie in client regions
    output_targets: dict[str, OutputTarget] = field(default_factory=dict)
    sequence: SequenceRef | None = None
    seq: Any = None  # the gateway.sequences.Sequence incarnation it belongs to
    seq_expect: Any = None  # a stream's own incarnation: anything else is refused
    # Called once when no worker can read the inputs any more (inputs a data-plane process owns).
    on_inputs_freed: Callable[[], None] | None = None
    # Called once answered (result or error), for callers that do not ``await wait()``.
    on_done: Callable[[InferRequest], None] | None = None
    serial: int = field(default_factory=lambda: next(_ids))
    # Set by the core:
    enqueued_ns: int = 0
    dispatched_ns: int = 0
    attempts: int = 0
    abandoned: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    result: RequestResult | None = None
    error: InferoxyError | None = None


class BatchOutputs:
    """A batch's output views; tells the worker to reuse its slots once every request let go."""

    __slots__ = ("_on_release", "_refs", "arrays")

    def __init__(
        self, arrays: dict[str, np.ndarray], refs: int, on_release: Callable[[], None]
    ) -> None:
        self.arrays = arrays
        self._refs = refs
        self._on_release = on_release

    def release_one(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self.arrays = {}
            self._on_release()


@dataclass(eq=False, slots=True)
class RequestResult:
    """One request's rows of a batch's outputs. Call ``release()`` once encoded.

    ``outputs`` holds views of the outputs the response carries; ``in_regions`` the shapes
    of those the worker wrote into the client's regions (the response carries no data).
    """

    outputs: dict[str, np.ndarray]
    _batch: BatchOutputs | None
    in_regions: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def release(self) -> None:
        if self._batch is not None:
            batch, self._batch = self._batch, None
            self.outputs = {}
            batch.release_one()
