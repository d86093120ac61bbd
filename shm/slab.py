"""A slab allocator: slots for tensors out of a few pooled shared-memory segments.

Creating a segment costs 30-130 µs and the first write to fresh pages is ~6x slower than to
warm ones (docs/facts.md), so segments are created lazily, kept, and their slots reused — never
one segment per request.

Theory of operation:

- Size classes are powers of two from ``min_slot_bytes`` to ``segment_bytes``. A class owns
  segments of ``segment_bytes`` each, cut into ``segment_bytes // class_size`` slots; a slot's
  offset is a multiple of its class size, so every slot is at least ``min_slot_bytes``-aligned.
- Allocation pops the class's free stack (LIFO: the most recently freed, warmest slot first);
  when that is empty it bumps a cursor through the class's newest segment; when that is full
  it creates a segment. All O(1); nothing walks a segment's slots.
- A request larger than ``segment_bytes`` gets a dedicated segment of its own (rounded up to
  whole pages), unlinked as soon as the slot is freed.
- ``limit_bytes`` bounds the sum of segment sizes. Class segments are never given back before
  ``close``: peers cache their mappings (``SegmentCache``), so unlinking would not free the
  memory anyway.

Segment names are ``{name_prefix}-{n}`` with a per-allocator counter, so a name is never
reused within the allocator's life and a peer's cached mapping can never point at a
different segment of the same name.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass

import numpy as np

from shm.descriptor import Descriptor
from shm.segment import Segment, check_name

PAGE_BYTES = 4096


class ShmExhausted(Exception):
    """An allocation would take shared memory past the allocator's limit (or the host's)."""


@dataclass(frozen=True, slots=True)
class Slot:
    """``capacity`` bytes at ``offset`` in ``segment``, lent by a ``SlabAllocator``."""

    segment: Segment
    offset: int
    capacity: int

    def _check_fits(self, dtype: str | np.dtype, shape: tuple[int, ...]) -> None:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if nbytes > self.capacity:
            raise ValueError(f"{nbytes} bytes do not fit a {self.capacity}-byte slot")

    def view(self, dtype: str | np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A writable array at the start of the slot; ``ValueError`` if it does not fit."""
        self._check_fits(dtype, shape)
        return self.segment.view(self.offset, dtype, shape)

    def memory(self, nbytes: int) -> memoryview:
        """The slot's first ``nbytes`` as a writable memoryview (e.g. to read a body into)."""
        if nbytes > self.capacity:
            raise ValueError(f"{nbytes} bytes do not fit a {self.capacity}-byte slot")
        return self.segment.memory(self.offset, nbytes)

    def descriptor(self, dtype: str, shape: tuple[int, ...]) -> Descriptor:
        """The wire form of a ``dtype``/``shape`` tensor at the start of the slot."""
        self._check_fits(dtype, shape)
        return Descriptor(self.segment.name, self.offset, dtype, tuple(shape))


class _SizeClass:
    """Free stack and bump cursor of one size class."""

    __slots__ = ("current", "cursor", "free", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: list[Slot] = []
        self.current: Segment | None = None  # newest segment, still being bumped through
        self.cursor = 0


class SlabAllocator:
    """Hands out ``Slot``s from pooled segments named ``{name_prefix}-{n}``.

    Not thread-safe, by design: one Trio thread owns it, and a lock on the hot path would buy
    nothing there. Other processes give slots back by their wire form with ``free_at``.
    """

    def __init__(
        self,
        name_prefix: str,
        *,
        limit_bytes: int,
        segment_bytes: int = 16 * 2**20,
        min_slot_bytes: int = 4096,
    ) -> None:
        check_name(f"{name_prefix}-0")
        if min_slot_bytes <= 0 or min_slot_bytes & (min_slot_bytes - 1):
            raise ValueError("min_slot_bytes must be a power of two")
        if segment_bytes < min_slot_bytes or segment_bytes & (segment_bytes - 1):
            raise ValueError("segment_bytes must be a power of two >= min_slot_bytes")
        if segment_bytes % PAGE_BYTES:
            raise ValueError(f"segment_bytes must be a multiple of {PAGE_BYTES}")
        if limit_bytes <= 0:
            raise ValueError("limit_bytes must be positive")
        self.name_prefix = name_prefix
        self.limit_bytes = limit_bytes
        self.segment_bytes = segment_bytes
        self.min_slot_bytes = min_slot_bytes
        self._min_shift = min_slot_bytes.bit_length() - 1
        n_classes = (segment_bytes // min_slot_bytes).bit_length()
        self._classes = [_SizeClass(min_slot_bytes << i) for i in range(n_classes)]
        self._segments: dict[str, Segment] = {}  # every live segment this allocator made
        self._dedicated: set[str] = set()  # names of the one-slot big segments
        self._in_use: dict[tuple[str, int], Slot] = {}
        self._counter = 0
        self._bytes_reserved = 0
        self._bytes_in_use = 0
        self._closed = False

    # -- allocation --------------------------------------------------------------------

    def allocate(self, nbytes: int) -> Slot:
        """A slot of at least ``nbytes`` (0 gives a minimum-size slot).

        ``ShmExhausted`` when a new segment would pass ``limit_bytes`` or ``/dev/shm`` is full.
        """
        if self._closed:
            raise RuntimeError("allocator is closed")
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        if nbytes > self.segment_bytes:
            return self._allocate_dedicated(nbytes)
        if nbytes <= self.min_slot_bytes:
            cls = self._classes[0]
        else:
            cls = self._classes[(nbytes - 1).bit_length() - self._min_shift]
        if cls.free:
            slot = cls.free.pop()
        else:
            if cls.current is None or cls.cursor + cls.size > self.segment_bytes:
                cls.current = self._new_segment(self.segment_bytes)
                cls.cursor = 0
            slot = Slot(cls.current, cls.cursor, cls.size)
            cls.cursor += cls.size
        self._lend(slot)
        return slot

    def _allocate_dedicated(self, nbytes: int) -> Slot:
        size = -(-nbytes // PAGE_BYTES) * PAGE_BYTES
        segment = self._new_segment(size)
        self._dedicated.add(segment.name)
        slot = Slot(segment, 0, size)
        self._lend(slot)
        return slot

    def _lend(self, slot: Slot) -> None:
        self._in_use[(slot.segment.name, slot.offset)] = slot
        self._bytes_in_use += slot.capacity

    def _new_segment(self, size: int) -> Segment:
        if self._bytes_reserved + size > self.limit_bytes:
            raise ShmExhausted(
                f"shared memory limit reached: {size} more bytes would pass the "
                f"{self.limit_bytes}-byte limit ({self._bytes_reserved} bytes reserved)"
            )
        while True:
            name = f"{self.name_prefix}-{self._counter}"
            self._counter += 1
            try:
                segment = Segment.create(name, size)
            except FileExistsError:
                # A leftover of an earlier process with our pid that no sweep removed:
                # not ours to delete, so take the next name.
                continue
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise ShmExhausted("host shared memory is full") from None
                raise
            break
        self._segments[name] = segment
        self._bytes_reserved += size
        return segment

    # -- release -----------------------------------------------------------------------

    def free(self, slot: Slot) -> None:
        """Give ``slot`` back; ``ValueError`` on a double free or a slot of another allocator."""
        key = (slot.segment.name, slot.offset)
        lent = self._in_use.get(key)
        if lent is None or lent.segment is not slot.segment:
            if self._segments.get(slot.segment.name) is slot.segment:
                raise ValueError("slot is not in use (double free?)")
            raise ValueError("slot does not belong to this allocator")
        self._release(key, lent)

    def free_at(self, segment_name: str, offset: int) -> None:
        """Give back the slot at ``offset`` in ``segment_name`` (a peer's release message)."""
        key = (segment_name, offset)
        lent = self._in_use.get(key)
        if lent is None:
            raise ValueError("no slot in use at that segment and offset")
        self._release(key, lent)

    def _release(self, key: tuple[str, int], slot: Slot) -> None:
        del self._in_use[key]
        self._bytes_in_use -= slot.capacity
        name = slot.segment.name
        if name in self._dedicated:
            self._dedicated.discard(name)
            del self._segments[name]
            self._bytes_reserved -= slot.segment.size
            slot.segment.unlink()
            slot.segment.close()
            return
        self._classes[(slot.capacity >> self._min_shift).bit_length() - 1].free.append(slot)

    # -- accounting --------------------------------------------------------------------

    @property
    def bytes_reserved(self) -> int:
        """Sum of the sizes of the segments this allocator holds."""
        return self._bytes_reserved

    @property
    def bytes_in_use(self) -> int:
        """Sum of the capacities of the slots currently lent out."""
        return self._bytes_in_use

    @property
    def slots_in_use(self) -> int:
        return len(self._in_use)

    def close(self) -> None:
        """Unlink and unmap every segment; slots still lent out become invalid."""
        self._closed = True
        for segment in self._segments.values():
            segment.unlink()
            segment.close()
        self._segments.clear()
        self._dedicated.clear()
        self._in_use.clear()
        for cls in self._classes:
            cls.free.clear()
            cls.current = None
            cls.cursor = 0
        self._bytes_reserved = 0
        self._bytes_in_use = 0
