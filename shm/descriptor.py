"""Descriptors: where a tensor lives in shared memory, never the bytes themselves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BYTES_DTYPE = "bytes"  # the descriptor dtype of a v2 BYTES tensor (in its wire form)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A tensor at ``offset`` in shared-memory segment ``segment`` (a name without ``/``).

    ``dtype`` is a numpy dtype string (``"uint8"``, ``"float32"``, ...), C order; or
    ``"bytes"`` (``BYTES_DTYPE``): a v2 ``BYTES`` tensor of ``shape`` elements in its wire
    form (``shm.bytes_tensor``: each element a 4-byte length and its bytes) taking ``size``
    bytes — the one descriptor whose byte length its shape does not say.
    """

    segment: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    size: int = 0  # bytes of a "bytes" tensor; unused otherwise

    @property
    def nbytes(self) -> int:
        if self.dtype == BYTES_DTYPE:
            return self.size
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_wire(self) -> list[object]:
        if self.dtype == BYTES_DTYPE:
            return [self.segment, self.offset, self.dtype, list(self.shape), self.size]
        return [self.segment, self.offset, self.dtype, list(self.shape)]

    @classmethod
    def from_wire(cls, raw: list[object]) -> Descriptor:
        if len(raw) == 5:
            segment, offset, dtype, shape, size = raw
            assert dtype == BYTES_DTYPE and isinstance(size, int) and size >= 0
        else:
            segment, offset, dtype, shape = raw
            size = 0
        assert isinstance(segment, str) and isinstance(offset, int) and isinstance(dtype, str)
        assert isinstance(shape, list)
        return cls(segment, offset, dtype, tuple(int(d) for d in shape), size)
