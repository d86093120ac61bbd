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
        """``to_wire``'s list back; ``ValueError`` (or ``TypeError``) if it is not one."""
        size = 0
        if len(raw) == 4:
            segment, offset, dtype, shape = raw
        elif len(raw) == 5:
            segment, offset, dtype, shape, raw_size = raw
            if dtype != BYTES_DTYPE or not isinstance(raw_size, int) or raw_size < 0:
                raise ValueError("only a bytes descriptor has a size")
            size = raw_size
        else:
            raise ValueError(f"a descriptor has 4 or 5 fields, not {len(raw)}")
        if (type(segment) is not str or type(offset) is not int or type(dtype) is not str
                or type(shape) is not list):
            raise ValueError("a descriptor is [segment, offset, dtype, shape(, size)]")
        return cls(segment, offset, dtype, tuple(map(int, shape)), size)
