"""How busy each copy is, across every producer, without asking anyone: a table in shared
memory.

Every process that sends batches to copies (the control process, each data-plane process)
owns one row and is its only writer; each copy has a column (its id modulo ``COLUMNS``). A
producer adds the batches it has outstanding at a copy when it sends one and takes them off
when the answer comes (``ModelServer`` keeps the cell equal to its ``Copy.outstanding``).
A dispatcher that chooses among its free copies reads each one's column sum: the batches
every producer has there, so two producers stop piling onto the same copy while another is
idle. Cells are plain int64 words, each written by one process only; a reader may see a
count a moment old, which only orders the choice and never admits a batch.
"""

from __future__ import annotations

import numpy as np

from shm.segment import Segment

ROWS = 257  # the control process and up to 256 data-plane processes (--workers)
COLUMNS = 1024
NBYTES = ROWS * COLUMNS * 8


def board_name(shm_prefix: str) -> str:
    """The board of the gateway whose segments are named ``<shm_prefix>-...``."""
    return f"{shm_prefix}-load"


class LoadBoard:
    def __init__(self, segment: Segment, row: int) -> None:
        if not 0 <= row < ROWS:
            raise ValueError(f"load board row {row} is not in [0, {ROWS})")
        self.segment = segment
        self.row = row
        self._table: np.ndarray = segment.view(0, "int64", (ROWS, COLUMNS))
        self._mine: np.ndarray = self._table[row]
        self.rows = row + 1  # rows in use (the producers there are): only these are summed

    @classmethod
    def create(cls, name: str) -> LoadBoard:
        """The control process's board (row 0), zeroed."""
        board = cls(Segment.create(name, NBYTES), 0)
        board._table[...] = 0
        return board

    @classmethod
    def attach(cls, name: str, row: int) -> LoadBoard:
        board = cls(Segment.attach(name), row)
        board._mine[...] = 0  # a restarted process takes over its row from the dead one
        return board

    def add(self, copy_id: int, n: int) -> None:
        self._mine[copy_id % COLUMNS] += n

    def load(self, copy_id: int) -> int:
        """Batches every producer has outstanding at the copy."""
        return int(self._table[:self.rows, copy_id % COLUMNS].sum())

    def clear_row(self, row: int) -> None:
        """A producer died: what it had outstanding went with it (its writer is gone)."""
        self._table[row] = 0

    def close(self) -> None:
        del self._mine, self._table
        self.segment.close()
