"""Turning a BATCH message into model inputs, and model outputs into shared memory.

I/O-free apart from memory: no sockets here, so it is tested directly.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from shm.descriptor import Descriptor
from shm.segment import SegmentCache
from shm.slab import SlabAllocator, Slot


class BatchError(Exception):
    """The batch cannot be run or its result cannot be returned; the message goes to clients."""


def gather(cache: SegmentCache, items: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], int]:
    """Build one array per input over all items (batch dimension first) and count the rows.

    One item, or items laid out back to back in one segment, give a view (no copy); otherwise
    the rows are concatenated once.
    """
    names = list(items[0]["inputs"])
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        descs = [Descriptor.from_wire(item["inputs"][name]) for item in items]
        first = descs[0]
        contiguous = all(
            d.segment == first.segment
            and d.dtype == first.dtype
            and d.shape[1:] == first.shape[1:]
            and d.offset == prev.offset + prev.nbytes
            for prev, d in itertools.pairwise(descs)
        )
        if contiguous:
            rows = sum(d.shape[0] for d in descs)
            inputs[name] = cache.view(
                Descriptor(first.segment, first.offset, first.dtype, (rows, *first.shape[1:]))
            )
        else:
            inputs[name] = np.concatenate([cache.view(d) for d in descs], axis=0)
    rows = sum(int(item["rows"]) for item in items)
    return inputs, rows


def place_outputs(
    slab: SlabAllocator, outputs: object, rows: int, slots: dict[tuple[str, int], Slot]
) -> dict[str, list[object]]:
    """Copy each output into a slot of the worker's slab and describe it.

    Slots stay allocated (tracked in ``slots``) until the gateway sends RELEASE.
    """
    if not isinstance(outputs, dict):
        raise BatchError(f"model returned {type(outputs).__name__}, expected a dict of arrays")
    described: dict[str, list[object]] = {}
    taken: list[Slot] = []
    try:
        for name, value in outputs.items():
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != rows:
                raise BatchError(
                    f"model output {name!r} has shape {list(arr.shape)}; its first dimension "
                    f"must be the batch size {rows}"
                )
            if arr.dtype.kind not in "biuf":
                raise BatchError(f"model output {name!r} has unsupported dtype {arr.dtype}")
            slot = slab.allocate(arr.nbytes)
            taken.append(slot)
            slot.view(arr.dtype.name, arr.shape)[...] = arr  # native byte order
            described[str(name)] = slot.descriptor(arr.dtype.name, arr.shape).to_wire()
    except BaseException:
        for slot in taken:
            slab.free(slot)
        raise
    for slot in taken:
        slots[(slot.segment.name, slot.offset)] = slot
    return described
