"""Which waiting batches a copy runs as one predict (``worker.merge``, I/O-free), the
stats that cross from data-plane processes (``gateway.stats``), and ``--workers auto``
(``supervisor.cpus``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.stats import ModelStats, add_stats, stats_delta, stats_to_wire
from shm.messages import Batch, SequenceEnd, Timing
from supervisor.cpus import cgroup_cpu_limit, parse_workers, usable_cores
from worker.batch import BatchError
from worker.merge import Backlog, rows_of, slice_rows


def batch(rows: int, *, params: dict[str, Any] | None = None, width: int = 4,
          sequence: bool = False, max_rows: int = 8) -> Batch:
    item: dict[str, Any] = {"rid": "r", "rows": rows,
                            "inputs": {"X": ["seg", 0, "float32", [rows, width]]}}
    if sequence:
        item["sequence"] = [7, True, False]
    return Batch.from_wire(
        {"id": 1, "items": [item], "parameters": params or {}, "max_rows": max_rows})


def test_takes_consecutive_compatible_batches_up_to_max_rows() -> None:
    backlog = Backlog()
    for b in (batch(3), batch(2), batch(4), batch(1)):
        backlog.push(b)
    head = batch(2)
    taken = backlog.take_mergeable(head, 8)
    assert [rows_of(b) for b in taken] == [3, 2]  # 2 + 3 + 2 = 7; 4 more would be 11
    assert len(backlog) == 2  # the rest waits, in order
    popped = backlog.pop()
    assert isinstance(popped, Batch) and popped.rows == 4


def test_never_merges_across_what_must_keep_its_order_or_shape() -> None:
    for other in (batch(1, params={"k": 1}), batch(1, width=5), batch(1, sequence=True),
                  batch(1, max_rows=16)):
        backlog = Backlog()
        backlog.push(other)
        backlog.push(batch(1))
        assert backlog.take_mergeable(batch(1), 8) == []  # the head of the line differs
        assert len(backlog) == 2
    backlog = Backlog()
    backlog.push(SequenceEnd(7, "evicted"))
    backlog.push(batch(1))
    assert backlog.take_mergeable(batch(1), 8) == []  # nothing overtakes a SEQUENCE_END
    assert Backlog().take_mergeable(batch(1, sequence=True), 8) == []


def test_slice_rows_gives_each_producer_its_rows() -> None:
    out = {"Y": np.arange(10).reshape(5, 2)}
    assert slice_rows(out, 0, 2, 5)["Y"].tolist() == [[0, 1], [2, 3]]
    assert slice_rows(out, 2, 3, 5)["Y"].tolist() == [[4, 5], [6, 7], [8, 9]]
    with pytest.raises(BatchError, match="batch size 6"):
        slice_rows(out, 0, 2, 6)
    with pytest.raises(BatchError, match="dict of arrays"):
        slice_rows([1, 2], 0, 1, 2)


def test_stats_deltas_add_up_to_what_was_counted() -> None:
    seen = ModelStats()
    total = ModelStats()
    before = None
    for rows in (1, 3, 8):
        seen.record_batch(2, rows, Timing(input_ns=5, infer_ns=100 * rows))
        seen.success.add(1000 * rows)
        seen.latency.observe(1000 * rows)
        seen.record_failure("timeout", 7)
        now = stats_to_wire(seen)
        add_stats(total, stats_delta(now, before))
        before = now
    assert stats_to_wire(total) == stats_to_wire(seen)
    assert total.inference_count == 12 and total.execution_count == 3
    assert total.failures_by_reason == {"timeout": 3}


def test_workers_auto_counts_usable_cores_and_the_cgroup_quota(tmp_path: Path) -> None:
    assert parse_workers("3", tmp_path) == 3
    assert parse_workers("0", tmp_path) == 0
    with pytest.raises(ValueError, match="'auto' or a number"):
        parse_workers("-1", tmp_path)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    unlimited = usable_cores(tmp_path)
    assert unlimited >= 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert usable_cores(tmp_path) == min(unlimited, 2)
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1, one core
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 1
    assert parse_workers("auto", tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("800000\n")  # 8 cores' worth
    assert parse_workers("auto", tmp_path) == (
        min(8, usable_cores(Path("/nonexistent"))) if usable_cores(Path("/nonexistent")) >= 4
        else 1)


def test_load_board_sums_every_producer_and_forgets_a_dead_one() -> None:
    import uuid

    from gateway.loadboard import COLUMNS, ROWS, LoadBoard, board_name
    from supervisor.cpus import MAX_WORKERS

    assert ROWS == MAX_WORKERS + 1  # a row per data-plane process, and the control's
    name = board_name(f"ifxtest{uuid.uuid4().hex[:8]}-1")
    control = LoadBoard.create(name)
    try:
        plane = LoadBoard.attach(name, 1)
        control.rows = 2  # the pool says how many producers there are
        control.add(7, 1)
        plane.add(7, 2)
        plane.add(8, 1)
        assert (control.load(7), plane.load(7), plane.load(8)) == (3, 3, 1)
        assert control.load(7 + COLUMNS) == 3  # ids share columns modulo COLUMNS
        plane.add(7, -2)
        assert control.load(7) == 1
        plane.add(8, 5)
        control.clear_row(1)  # the data-plane process died
        assert (control.load(7), control.load(8)) == (1, 0)
        again = LoadBoard.attach(name, 1)  # its restart starts from a clean row
        assert again.load(8) == 0
        again.close()
        plane.close()
    finally:
        control.segment.unlink()
        control.close()
