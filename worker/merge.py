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

from worker.batch import BatchError, output_rows

Message = tuple[bytes, dict[str, Any]]

BATCH = b"BATCH"


def rows_of(batch: dict[str, Any]) -> int:
    return sum(int(item["rows"]) for item in batch["items"])


def _signature(batch: dict[str, Any]) -> tuple[Any, ...] | None:
    """What must be equal for two batches to run together; None: runs alone."""
    items = batch.get("items")
    if not items or any("sequence" in item for item in items):
        return None
    inputs = items[0]["inputs"]
    shapes = tuple(sorted((name, tuple(desc[3][1:])) for name, desc in inputs.items()))
    for item in items[1:]:
        if tuple(sorted((n, tuple(d[3][1:])) for n, d in item["inputs"].items())) != shapes:
            return None
    return (repr(batch.get("parameters") or {}), batch.get("max_rows"), shapes)


class Backlog:
    """Messages received while looking for batches to merge, in arrival order."""

    def __init__(self) -> None:
        self._queue: deque[Message] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, kind: bytes, body: dict[str, Any]) -> None:
        self._queue.append((kind, body))

    def pop(self) -> Message:
        return self._queue.popleft()

    def take_mergeable(self, head: dict[str, Any], max_rows: int) -> list[dict[str, Any]]:
        """The batches standing right behind ``head`` that may run with it, removed."""
        want = _signature(head)
        if want is None:
            return []
        rows = rows_of(head)
        taken: list[dict[str, Any]] = []
        while self._queue:
            kind, body = self._queue[0]
            if kind != BATCH or _signature(body) != want or rows + rows_of(body) > max_rows:
                break
            self._queue.popleft()
            taken.append(body)
            rows += rows_of(body)
        return taken


def slice_rows(outputs: object, start: int, rows: int, total: int) -> dict[str, Any]:
    """Rows ``[start, start + rows)`` of every output of a ``total``-row run (views)."""
    if not isinstance(outputs, dict):
        raise BatchError(f"model returned {type(outputs).__name__}, expected a dict of arrays")
    part: dict[str, Any] = {}
    for name, value in outputs.items():
        part[name] = output_rows(name, value, total)[start:start + rows]
    return part
