"""Shared-memory segments and the slab allocator, against the real /dev/shm."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

from shm.descriptor import Descriptor
from shm.segment import (
    SHM_DIR,
    Segment,
    SegmentCache,
    list_segments,
    segment_name,
    sweep_stale,
    unlink_matching,
)
from shm.slab import ShmExhausted, SlabAllocator, Slot

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix no other test (or run) uses; whatever it left in /dev/shm is removed."""
    p = f"ifxtest{uuid4().hex[:8]}"
    yield p
    unlink_matching(f"{p}-")


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- Segment ---------------------------------------------------------------------------


def test_attach_in_another_process_writes_and_leaves_segment(prefix: str) -> None:
    name = segment_name(prefix, os.getpid(), "rt")
    with Segment.create(name, 4096) as seg:
        run_python(
            "from shm.segment import Segment\n"
            f"s = Segment.attach({name!r})\n"
            "assert s.size == 4096\n"
            "s.memory(10, 5)[:] = b'hello'\n"
            "s.close()\n"
        )
        assert bytes(seg.memory(10, 5)) == b"hello"
        # The resource-tracker regression: a child that attached must not unlink the segment.
        assert exists(name)
        seg.unlink()
    assert not exists(name)


def test_create_fails_if_exists_and_attach_fails_if_missing(prefix: str) -> None:
    name = segment_name(prefix, os.getpid(), "x")
    with Segment.create(name, 4096):
        with pytest.raises(FileExistsError):
            Segment.create(name, 4096)
    with pytest.raises(FileNotFoundError) as info:
        Segment.attach(segment_name(prefix, os.getpid(), "missing"))
    assert SHM_DIR not in str(info.value) and prefix not in str(info.value)


def test_views_share_memory_between_mappings(prefix: str) -> None:
    name = segment_name(prefix, os.getpid(), "v")
    with Segment.create(name, 8192) as owner, Segment.attach(name) as peer:
        a = owner.view(4096, "float32", (2, 3))
        a[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = peer.view(4096, np.dtype(np.float32), (2, 3))
        assert b.flags.writeable
        np.testing.assert_array_equal(b, a)
        b[1, 2] = 42.0
        assert a[1, 2] == 42.0
        assert owner.view(0, "uint8", (0,)).shape == (0,)
        del a, b


@pytest.mark.parametrize(
    ("offset", "dtype", "shape"),
    [
        (-1, "uint8", (1,)),
        (0, "uint8", (4097,)),
        (4096, "uint8", (1,)),
        (4092, "float64", (1,)),
        (0, "uint8", (-1, 2)),
    ],
)
def test_view_out_of_bounds_rejected(
    prefix: str, offset: int, dtype: str, shape: tuple[int, ...]
) -> None:
    with Segment.create(segment_name(prefix, os.getpid(), "b"), 4096) as seg:
        with pytest.raises(ValueError):
            seg.view(offset, dtype, shape)


def test_memory_bounds_checked(prefix: str) -> None:
    with Segment.create(segment_name(prefix, os.getpid(), "m"), 4096) as seg:
        assert len(seg.memory(4000, 96)) == 96
        for offset, nbytes in [(4000, 97), (-1, 1), (0, -1), (4097, 0)]:
            with pytest.raises(ValueError):
                seg.memory(offset, nbytes)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../etc/passwd", "a/b", "a b", "x" * 201, "semi;colon", "ü"]
)
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        Segment.attach(name)
    with pytest.raises(ValueError):
        Segment.create(name, 4096)


def test_segment_name_validates_parts() -> None:
    assert segment_name("ifx", 12, "g-3") == "ifx-12-g-3"
    for bad in [("if-x", 12, "a"), ("", 12, "a"), ("ifx", 0, "a"), ("ifx", 12, "a/b")]:
        with pytest.raises(ValueError):
            segment_name(*bad)


def test_close_with_live_view_is_safe(prefix: str) -> None:
    name = segment_name(prefix, os.getpid(), "c")
    seg = Segment.create(name, 4096)
    view = seg.view(0, "uint8", (16,))
    seg.close()  # a live export: the mapping is left to the view
    view[:] = 7
    assert int(view.sum()) == 16 * 7
    seg.unlink()
    del view


def test_segment_cache_attaches_once_and_forgets(prefix: str) -> None:
    pid = os.getpid()
    a = Segment.create(segment_name(prefix, pid, "w1-0"), 4096)
    b = Segment.create(segment_name(prefix, pid, "w2-0"), 4096)
    cache = SegmentCache()
    try:
        a.view(128, "int32", (4,))[:] = [1, 2, 3, 4]
        desc = Descriptor(a.name, 128, "int32", (2, 2))
        np.testing.assert_array_equal(cache.view(desc), [[1, 2], [3, 4]])
        assert cache.get(a.name) is cache.get(a.name)
        cache.get(b.name)
        with pytest.raises(ValueError):
            cache.view(Descriptor(a.name, 4092, "int32", (2,)))
        with pytest.raises(ValueError):
            cache.view(Descriptor("../" + a.name, 0, "int32", (1,)))
        cache.forget(segment_name(prefix, pid, "w1-"))
        assert a.name not in cache and b.name in cache
    finally:
        cache.close()
        for seg in (a, b):
            seg.unlink()
            seg.close()
    assert len(cache) == 0


# -- naming, sweeping ------------------------------------------------------------------


def test_sweep_stale_removes_dead_owners_only(prefix: str) -> None:
    gone = dead_pid()
    dead_names = [segment_name(prefix, gone, r) for r in ("g-0", "w7-3")]
    live_name = segment_name(prefix, os.getpid(), "g-0")
    for name in [*dead_names, live_name]:
        Segment.create(name, 4096).close()
    Segment.create(f"{prefix}-notapid-0", 4096).close()  # not ours: left alone
    assert list_segments(prefix) == sorted([*dead_names, live_name, f"{prefix}-notapid-0"])

    assert sorted(sweep_stale(prefix)) == sorted(dead_names)
    assert list_segments(prefix) == sorted([live_name, f"{prefix}-notapid-0"])
    assert sweep_stale(prefix) == []


def test_unlink_matching(prefix: str) -> None:
    pid = os.getpid()
    for rest in ("w1-0", "w1-1", "w2-0"):
        Segment.create(segment_name(prefix, pid, rest), 4096).close()
    assert unlink_matching(segment_name(prefix, pid, "w1-")) == 2
    assert list_segments(prefix) == [segment_name(prefix, pid, "w2-0")]
    with pytest.raises(ValueError):
        unlink_matching("")


# -- SlabAllocator ---------------------------------------------------------------------


@pytest.fixture
def slab(prefix: str) -> Iterator[SlabAllocator]:
    allocator = SlabAllocator(
        f"{prefix}-{os.getpid()}-g", limit_bytes=8 * MiB, segment_bytes=1 * MiB
    )
    yield allocator
    allocator.close()


def test_slab_reuses_freed_slot_lifo(slab: SlabAllocator) -> None:
    a = slab.allocate(1000)
    b = slab.allocate(1000)
    assert a.segment is b.segment and a.offset != b.offset
    slab.free(a)
    slab.free(b)
    again = slab.allocate(900)
    assert (again.segment.name, again.offset) == (b.segment.name, b.offset)
    assert (slab.allocate(1).offset) == a.offset
    assert slab.bytes_reserved == 1 * MiB  # one segment served all four


def test_slab_size_classes(slab: SlabAllocator) -> None:
    assert slab.allocate(0).capacity == 4096
    assert slab.allocate(4096).capacity == 4096
    assert slab.allocate(4097).capacity == 8192
    big = slab.allocate(300_000)
    assert big.capacity == 2**19 and big.offset % big.capacity == 0
    whole = slab.allocate(1 * MiB)
    assert whole.capacity == 1 * MiB and whole.offset == 0
    # Each class has its own segment(s): 4 KiB, 8 KiB, 512 KiB and 1 MiB classes.
    assert slab.bytes_reserved == 4 * MiB
    assert slab.slots_in_use == 5
    assert slab.bytes_in_use == 4096 * 2 + 8192 + 2**19 + MiB


def test_slab_class_fills_segment_then_adds_one(slab: SlabAllocator) -> None:
    slots = [slab.allocate(2**18) for _ in range(5)]  # 4 per 1 MiB segment
    assert len({s.segment.name for s in slots}) == 2
    assert sorted(s.offset for s in slots[:4]) == [0, 2**18, 2**19, 3 * 2**18]
    assert slab.bytes_reserved == 2 * MiB


def test_slab_slot_views_and_descriptor(slab: SlabAllocator) -> None:
    slot = slab.allocate(3 * 4 * 4)
    arr = slot.view("float32", (3, 4))
    arr[:] = 1.5
    desc = slot.descriptor("float32", (3, 4))
    assert desc == Descriptor(slot.segment.name, slot.offset, "float32", (3, 4))
    cache = SegmentCache()
    try:
        np.testing.assert_array_equal(cache.view(desc), np.full((3, 4), 1.5, np.float32))
    finally:
        cache.close()
    slot.memory(4)[:] = b"\x00\x00\x00\x00"
    assert arr[0, 0] == 0.0
    with pytest.raises(ValueError):
        slot.view("uint8", (slot.capacity + 1,))
    with pytest.raises(ValueError):
        slot.memory(slot.capacity + 1)
    with pytest.raises(ValueError):
        slot.descriptor("float64", (slot.capacity,))
    del arr


def test_slab_dedicated_segment_unlinked_on_free(slab: SlabAllocator) -> None:
    slot = slab.allocate(1 * MiB + 1)
    assert slot.capacity == 1 * MiB + 4096 and slot.offset == 0
    assert exists(slot.segment.name)
    assert slab.bytes_reserved == 1 * MiB + 4096
    slot.view("uint8", (1 * MiB + 1,))[-1] = 9
    slab.free(slot)
    assert not exists(slot.segment.name)
    assert slab.bytes_reserved == 0 and slab.slots_in_use == 0


def test_slab_limit_raises_shm_exhausted(prefix: str) -> None:
    name_prefix = f"{prefix}-{os.getpid()}-g"
    slab = SlabAllocator(name_prefix, limit_bytes=2 * MiB, segment_bytes=1 * MiB)
    try:
        slab.allocate(2**19)
        slab.allocate(2**19)
        slab.allocate(4096)  # second segment: at the limit, not past it
        with pytest.raises(ShmExhausted) as info:
            slab.allocate(2**19)
        assert name_prefix not in str(info.value) and SHM_DIR not in str(info.value)
        with pytest.raises(ShmExhausted):
            slab.allocate(3 * MiB)
        slab.allocate(4096)  # slots of existing segments are still served
    finally:
        slab.close()


def test_slab_double_free_and_foreign_slot_rejected(prefix: str, slab: SlabAllocator) -> None:
    slot = slab.allocate(10)
    slab.free(slot)
    with pytest.raises(ValueError):
        slab.free(slot)
    other = SlabAllocator(f"{prefix}-{os.getpid()}-o", limit_bytes=MiB, segment_bytes=MiB)
    try:
        foreign = other.allocate(10)
        with pytest.raises(ValueError):
            slab.free(foreign)
        with pytest.raises(ValueError):
            slab.free(Slot(foreign.segment, 0, 4096))
        other.free(foreign)
    finally:
        other.close()


def test_slab_free_at(slab: SlabAllocator) -> None:
    slot = slab.allocate(5000)
    name, offset = slot.descriptor("uint8", (5000,)).to_wire()[:2]
    assert isinstance(name, str) and isinstance(offset, int)
    with pytest.raises(ValueError):
        slab.free_at(name, offset + 1)
    with pytest.raises(ValueError):
        slab.free_at("nope", 0)
    slab.free_at(name, offset)
    assert slab.slots_in_use == 0 and slab.bytes_in_use == 0
    with pytest.raises(ValueError):
        slab.free_at(name, offset)
    assert slab.allocate(5000) == slot


def test_slab_close_leaves_nothing(prefix: str) -> None:
    slab = SlabAllocator(f"{prefix}-{os.getpid()}-g", limit_bytes=8 * MiB, segment_bytes=MiB)
    held = [slab.allocate(n) for n in (0, 5000, 70_000, MiB, 2 * MiB)]
    assert len(list_segments(prefix)) == 5
    view = held[0].view("uint8", (10,))  # a live view must not stop the unlink
    slab.close()
    assert list_segments(prefix) == []
    with pytest.raises(RuntimeError):
        slab.allocate(1)
    del view


def test_slab_rejects_bad_configuration(prefix: str) -> None:
    with pytest.raises(ValueError):
        SlabAllocator("bad/name", limit_bytes=MiB)
    with pytest.raises(ValueError):
        SlabAllocator(prefix, limit_bytes=MiB, min_slot_bytes=3000)
    with pytest.raises(ValueError):
        SlabAllocator(prefix, limit_bytes=MiB, segment_bytes=3 * MiB)
