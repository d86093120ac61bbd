"""Turning a BATCH message into model inputs, and model outputs into shared memory.

I/O-free apart from memory: no sockets here, so it is tested directly.
"""

from __future__ import annotations

import itertools

import numpy as np

from shm import bytes_tensor
from shm.bytes_tensor import BytesLimits, BytesTensorError
from shm.descriptor import BYTES_DTYPE, Descriptor
from shm.messages import NOT_PLACED, BatchItem, SlotRef
from shm.segment import SegmentCache
from shm.slab import SlabAllocator, Slot

# The gateway bounded every BYTES input already; the worker decodes with bounds no request
# can reach, so a tensor is refused here only when its form is broken (a client region).
_NO_LIMITS = BytesLimits(max_elements=1 << 62, max_element_bytes=1 << 62)


class BatchError(Exception):
    """The batch cannot be run or its result cannot be returned; the message goes to clients."""


def _bytes_input(cache: SegmentCache, descs: list[Descriptor], verify: list[bool]
                 ) -> np.ndarray:
    """A BYTES input over the batch: each request's wire form decoded (one copy of each
    element, into a ``bytes``) and joined along the batch dimension."""
    parts = [bytes_tensor.decode(cache.view(d, verify=v), d.shape, _NO_LIMITS)
             for d, v in zip(descs, verify, strict=True)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def gather(cache: SegmentCache, items: list[BatchItem]) -> tuple[dict[str, np.ndarray], int]:
    """Build one array per input over all items (batch dimension first) and count the rows.

    One item, or items laid out back to back in one segment, give a view (no copy); otherwise
    the rows are concatenated once. Inputs in client regions are re-checked against the
    region's current size before they are touched.
    """
    names = list(items[0].inputs)
    inputs: dict[str, np.ndarray] = {}
    for name in names:
        try:
            descs = [item.inputs[name] for item in items]
        except KeyError:
            raise BatchError(f"input {name!r} is missing from a request of the batch") from None
        verify = [name in item.regions for item in items]
        first = descs[0]
        if first.dtype == BYTES_DTYPE:
            try:
                inputs[name] = _bytes_input(cache, descs, verify)
            except (ValueError, OSError) as exc:  # BytesTensorError is a ValueError
                raise BatchError(f"input {name!r}: {exc}") from None
            continue
        contiguous = not any(verify) and all(
            d.segment == first.segment
            and d.dtype == first.dtype
            and d.shape[1:] == first.shape[1:]
            and d.offset == prev.offset + prev.nbytes
            for prev, d in itertools.pairwise(descs)
        )
        try:
            if contiguous:
                rows = sum(d.shape[0] for d in descs)
                inputs[name] = cache.view(
                    Descriptor(first.segment, first.offset, first.dtype, (rows, *first.shape[1:]))
                )
            elif len(descs) == 1:
                inputs[name] = cache.view(first, verify=verify[0])
            else:
                inputs[name] = np.concatenate(
                    [cache.view(d, verify=v) for d, v in zip(descs, verify, strict=True)], axis=0
                )
        except (ValueError, OSError) as exc:
            raise BatchError(f"input {name!r}: {exc}") from None
    rows = sum(item.rows for item in items)
    return inputs, rows


def output_rows(name: object, value: object, rows: int) -> np.ndarray:
    """A model output as an array whose first dimension is the batch's ``rows``."""
    arr = np.asarray(value)
    if arr.ndim == 0 or arr.shape[0] != rows:
        raise BatchError(
            f"model output {name!r} has shape {list(arr.shape)}; its first dimension "
            f"must be the batch size {rows}"
        )
    return arr


def stack_responses(responses: object, rows: int) -> dict[str, np.ndarray]:
    """A decoupled model's responses (an iterable of output dicts, each with the batch's
    rows first), as one output per name of shape ``[rows, responses, ...]``: the gateway
    sends them one by one. No responses: no outputs (the gateway knows the shapes)."""
    if isinstance(responses, str | bytes) or not hasattr(responses, "__iter__"):
        raise BatchError(f"model returned {type(responses).__name__}, expected a dict of "
                         f"arrays (or, decoupled, an iterable of them)")
    collected: dict[str, list[np.ndarray]] = {}
    count = 0
    iterator = iter(responses)
    while True:
        try:
            response = next(iterator)
        except StopIteration:
            break
        except Exception as exc:  # the model's own code runs as it yields: its failure
            raise BatchError(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(response, dict):
            raise BatchError(f"a decoupled model's response {count} is "
                             f"{type(response).__name__}, expected a dict of arrays")
        if count and set(response) != set(collected):
            raise BatchError(f"a decoupled model's response {count} has outputs "
                             f"{sorted(response)}, the first had {sorted(collected)}")
        for name, value in response.items():
            collected.setdefault(str(name), []).append(output_rows(name, value, rows))
        count += 1
    try:
        return {name: np.stack(parts, axis=1) for name, parts in collected.items()}
    except ValueError as exc:
        raise BatchError(f"a decoupled model's responses differ in shape or type: {exc}"
                         ) from None


def place_outputs(
    slab: SlabAllocator,
    cache: SegmentCache,
    outputs: object,
    items: list[BatchItem],
    slots: dict[SlotRef, Slot],
) -> tuple[dict[str, Descriptor], dict[int, str]]:
    """Write each output where its requests want it; describe it; report per-item errors.

    Rows an item sent to a client region are written there; an output is also copied into
    a slot of the worker's slab (kept, tracked in ``slots``, until the gateway sends
    RELEASE) unless every item took it to a region — then only its dtype and shape are sent
    (segment ``NOT_PLACED``).
    """
    rows = sum(item.rows for item in items)
    if not isinstance(outputs, dict):
        outputs = stack_responses(outputs, rows)
    described: dict[str, Descriptor] = {}
    item_errors: dict[int, str] = {}
    taken: list[Slot] = []
    try:
        for name, value in outputs.items():
            arr = output_rows(name, value, rows)
            if arr.dtype.kind in "OSU":
                _place_bytes(slab, cache, str(name), arr, items, described, item_errors, taken)
                continue
            if arr.dtype.kind not in "biuf":
                raise BatchError(f"model output {name!r} has unsupported dtype {arr.dtype}")
            name = str(name)
            dtype = arr.dtype.name  # native byte order from here on
            start = 0
            to_slab = False
            for index, item in enumerate(items):
                part = arr[start : start + item.rows]
                start += item.rows
                target = item.outputs.get(name)
                if target is None:
                    to_slab = True
                    continue
                segment, offset, byte_size = target.segment, target.offset, target.byte_size
                if part.nbytes > byte_size:
                    item_errors[index] = (
                        f"output {name!r} takes {part.nbytes} bytes; its shared-memory region "
                        f"has {byte_size}"
                    )
                    continue
                try:
                    cache.view(Descriptor(segment, offset, dtype, part.shape), verify=True)[
                        ...
                    ] = part
                except (ValueError, OSError) as exc:
                    item_errors[index] = f"output {name!r}: {exc}"
            if to_slab:
                slot = slab.allocate(arr.nbytes)
                taken.append(slot)
                slot.view(dtype, arr.shape)[...] = arr
                described[name] = slot.descriptor(dtype, arr.shape)
            else:
                described[name] = Descriptor(NOT_PLACED, 0, dtype, arr.shape)
    except BaseException:
        for slot in taken:
            slab.free(slot)
        raise
    for slot in taken:
        slots[(slot.segment.name, slot.offset)] = slot
    return described, item_errors


def _encode(name: str, arr: np.ndarray) -> bytes:
    try:
        return bytes_tensor.encode_array(arr)
    except BytesTensorError as exc:
        raise BatchError(f"model output {name!r}: {exc}") from None


def _place_bytes(slab: SlabAllocator, cache: SegmentCache, name: str, arr: np.ndarray,
                 items: list[BatchItem], described: dict[str, Descriptor],
                 item_errors: dict[int, str], taken: list[Slot]) -> None:
    """A BYTES output (object array of bytes/str, or numpy strings), in its wire form:
    into the items' client regions, and once whole into a slot for the rest."""
    start = 0
    to_slab = False
    for index, item in enumerate(items):
        rows = item.rows
        part = arr[start : start + rows]
        start += rows
        target = item.outputs.get(name)
        if target is None:
            to_slab = True
            continue
        segment, offset, byte_size = target.segment, target.offset, target.byte_size
        wire = _encode(name, part)
        if len(wire) > byte_size:
            item_errors[index] = (f"output {name!r} takes {len(wire)} bytes; its "
                                       f"shared-memory region has {byte_size}")
            continue
        try:
            cache.view(Descriptor(segment, offset, "uint8", (len(wire),)), verify=True)[
                ...] = np.frombuffer(wire, np.uint8)
        except (ValueError, OSError) as exc:
            item_errors[index] = f"output {name!r}: {exc}"
    if not to_slab:
        described[name] = Descriptor(NOT_PLACED, 0, BYTES_DTYPE, arr.shape)
        return
    wire = _encode(name, arr)
    slot = slab.allocate(len(wire))
    taken.append(slot)
    slot.memory(len(wire))[:] = wire
    desc = Descriptor(slot.segment.name, slot.offset, BYTES_DTYPE, tuple(arr.shape), len(wire))
    described[name] = desc
