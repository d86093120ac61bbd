"""Descriptors: where a tensor lives in shared memory, never the bytes themselves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A tensor at ``offset`` in shared-memory segment ``segment`` (a name without ``/``).

    ``dtype`` is a numpy dtype string (``"uint8"``, ``"float32"``, ...), C order.
    """

    segment: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_wire(self) -> list[object]:
        return [self.segment, self.offset, self.dtype, list(self.shape)]

    @classmethod
    def from_wire(cls, raw: list[object]) -> Descriptor:
        segment, offset, dtype, shape = raw
        assert isinstance(segment, str) and isinstance(offset, int) and isinstance(dtype, str)
        assert isinstance(shape, list)
        return cls(segment, offset, dtype, tuple(int(d) for d in shape))
