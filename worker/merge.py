"""Which waiting batches a copy may run as one ``predict``, and splitting the result.

I/O-free. Theory of operation: every data-plane process batches on its own, so a copy fed by
N of them may find up to N batches of one model waiting. Running them one after the other
costs a ``predict`` each; a GPU model's cost barely grows with rows, so the copy runs the
batch at the head of its queue together with the batches right behind it that

* carry no sequence (a stateful batch runs alone, in order, as the model's state needs),
* have the same model parameters and the same ``max_rows`` (the model's batch size),
* have the same inputs with the same shapes past the batch dimension,

as long as the rows add up to at most ``max_rows``. Each producer then gets its own rows of
every output back, under its own batch id. Order is kept: only batches that stand
*consecutively* behind the head join it; anything else (a batch that does not fit, a
``SEQUENCE_END``, ``STOP``) waits in the backlog in the order it came.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from shm.messages import Batch, ToWorker
from worker.batch import BatchError, output_rows


def rows_of(batch: Batch) -> int:
    return batch.rows


def _signature(batch: Batch) -> tuple[Any, ...] | None:
    """What must be equal for two batches to run together; None: runs alone."""
    items = batch.items
    if not items or any(item.sequence is not None for item in items):
        return None
    shapes = tuple(sorted((name, d.shape[1:]) for name, d in items[0].inputs.items()))
    for item in items[1:]:
        if tuple(sorted((n, d.shape[1:]) for n, d in item.inputs.items())) != shapes:
            return None
    return (repr(batch.parameters), batch.max_rows, shapes)


class Backlog:
    """Messages received while looking for batches to merge, in arrival order."""

    def __init__(self) -> None:
        self._queue: deque[ToWorker] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, message: ToWorker) -> None:
        self._queue.append(message)

    def pop(self) -> ToWorker:
        return self._queue.popleft()

    def take_mergeable(self, head: Batch, max_rows: int) -> list[Batch]:
        """The batches standing right behind ``head`` that may run with it, removed."""
        want = _signature(head)
        if want is None:
            return []
        rows = head.rows
        taken: list[Batch] = []
        while self._queue:
            message = self._queue[0]
            if (not isinstance(message, Batch) or _signature(message) != want
                    or rows + message.rows > max_rows):
                break
            self._queue.popleft()
            taken.append(message)
            rows += message.rows
        return taken


def slice_rows(outputs: object, start: int, rows: int, total: int) -> dict[str, Any]:
    """Rows ``[start, start + rows)`` of every output of a ``total``-row run (views)."""
    if not isinstance(outputs, dict):
        raise BatchError(f"model returned {type(outputs).__name__}, expected a dict of arrays")
    part: dict[str, Any] = {}
    for name, value in outputs.items():
        part[name] = output_rows(name, value, total)[start:start + rows]
    return part
