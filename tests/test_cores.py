"""The I/O-free cores: batching policy, copy lifecycle, back-off, placement, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.batching import BatchPolicy, BatchQueue, QueueFull
from gateway.config import ConfigError, load_models, parse_model
from supervisor.backoff import Backoff
from supervisor.lifecycle import CopyEvent, CopyState, next_state
from supervisor.placement import discover_gpus, place

ROOT = Path(__file__).resolve().parent.parent


def queue(batch: int = 4, delay_us: int = 1000, size: int = 8) -> BatchQueue[str]:
    return BatchQueue(BatchPolicy(batch, delay_us, size))


class TestBatchQueue:
    def test_full_batch_closes_at_once(self) -> None:
        q = queue()
        for i in range(4):
            q.push(f"r{i}", 1, "k", now=0.0)
        assert q.take(now=0.0, copy_free=True) == ["r0", "r1", "r2", "r3"]
        assert len(q) == 0

    def test_partial_batch_waits_for_the_delay(self) -> None:
        q = queue(delay_us=1000)
        q.push("a", 1, "k", now=10.0)
        assert q.take(now=10.0005, copy_free=True) is None
        assert q.next_deadline() == pytest.approx(10.001)
        assert q.take(now=10.001, copy_free=True) == ["a"]

    def test_wants_look_only_for_a_new_oldest_or_a_full_batch(self) -> None:
        # The adapter sleeps until the oldest request's deadline; a push needs it awake only
        # when that deadline is new or a batch is full. Rows stay counted through every path.
        q = queue(batch=4, delay_us=1000)
        q.push("a", 1, "k", now=0.0)
        assert q.wants_look()  # the oldest: a new deadline
        q.push("b", 2, "k", now=0.0)
        assert not q.wants_look()
        q.push("c", 1, "other", now=0.0)
        assert q.wants_look() and q.rows == 4  # four rows queued: a batch may be full
        assert q.take(now=0.0, copy_free=True) is None  # key "k" has 3 rows: not full
        assert q.take(now=0.001, copy_free=True) == ["a", "b"]  # its delay ran out
        assert q.rows == 1
        q.push_front([("a", 1, "k", 0.0)])
        assert q.rows == 2
        assert q.remove(lambda r: r == "c") == ["c"]
        assert q.rows == 1
        assert q.take(now=1.0, copy_free=True) == ["a"] and q.rows == 0

    def test_zero_delay_never_holds_back(self) -> None:
        q = queue(delay_us=0)
        q.push("a", 1, "k", now=0.0)
        assert q.take(now=0.0, copy_free=True) == ["a"]

    def test_nothing_closes_without_a_free_copy(self) -> None:
        q = queue()
        for i in range(6):
            q.push(f"r{i}", 1, "k", now=0.0)
        assert q.take(now=99.0, copy_free=False) is None
        assert q.take(now=99.0, copy_free=True) == ["r0", "r1", "r2", "r3"]

    def test_rows_count_towards_the_batch(self) -> None:
        q = queue(batch=4)
        q.push("two", 2, "k", now=0.0)
        q.push("three", 3, "k", now=0.0)
        q.push("one", 1, "k", now=0.0)
        # "three" does not fit after "two"; taking "one" first would reorder the key.
        assert q.take(now=1.0, copy_free=True) == ["two"]
        assert q.take(now=1.0, copy_free=True) == ["three", "one"]

    def test_keys_batch_apart_without_reordering(self) -> None:
        q = queue(batch=4)
        for name, key in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")]:
            q.push(name, 1, key, now=0.0)
        assert q.take(now=1.0, copy_free=True) == ["a1", "a2"]
        assert q.take(now=1.0, copy_free=True) == ["b1", "b2"]

    def test_bound_rejects_but_retries_get_in(self) -> None:
        q = queue(size=2)
        q.push("a", 1, "k", now=0.0)
        q.push("b", 1, "k", now=0.0)
        with pytest.raises(QueueFull):
            q.push("c", 1, "k", now=0.0)
        q.push_front([("retry1", 1, "k", 0.0), ("retry2", 1, "k", 0.0)])
        assert q.take(now=1.0, copy_free=True) == ["retry1", "retry2", "a", "b"]

    def test_rows_out_of_range_rejected(self) -> None:
        with pytest.raises(ValueError):
            queue(batch=4).push("x", 5, "k", now=0.0)

    def test_remove(self) -> None:
        q = queue()
        for name in "abc":
            q.push(name, 1, "k", now=0.0)
        assert q.remove(lambda r: r == "b") == ["b"]
        assert q.take(now=1.0, copy_free=True) == ["a", "c"]


class TestLifecycle:
    def test_normal_life(self) -> None:
        s = CopyState.STARTING
        s = next_state(s, CopyEvent.HELLO)
        assert s is CopyState.READY
        s = next_state(s, CopyEvent.EXITED)
        assert s is CopyState.DEAD
        assert next_state(s, CopyEvent.RESTART) is CopyState.STARTING

    def test_events_out_of_place_are_ignored(self) -> None:
        assert next_state(CopyState.READY, CopyEvent.HELLO) is CopyState.READY
        assert next_state(CopyState.DEAD, CopyEvent.EXITED) is CopyState.DEAD
        assert next_state(CopyState.STOPPED, CopyEvent.RESTART) is CopyState.STOPPED
        assert next_state(CopyState.STOPPING, CopyEvent.HELLO) is CopyState.STOPPING

    def test_stop_from_anywhere_ends_stopped(self) -> None:
        for state in (CopyState.STARTING, CopyState.READY):
            assert next_state(state, CopyEvent.STOP) is CopyState.STOPPING
            assert next_state(CopyState.STOPPING, CopyEvent.EXITED) is CopyState.STOPPED
        assert next_state(CopyState.DEAD, CopyEvent.STOP) is CopyState.STOPPED


def test_backoff_grows_caps_and_forgives() -> None:
    b = Backoff(initial_s=0.5, factor=2, max_s=3, stable_after_s=60)
    assert [b.on_exit(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.on_exit(120.0) == 0.5


def test_placement() -> None:
    assert [p.visible_devices for p in place(True, 1, [0, 1, 3])] == ["0", "1", "3"]
    assert all(p.device == "cuda:0" for p in place(True, 1, [0, 1]))
    cpu = place(True, 2, [])
    assert [(p.device, p.visible_devices) for p in cpu] == [("cpu", ""), ("cpu", "")]
    assert len(place(False, 3, [0, 1])) == 3
    assert discover_gpus("0,2") == [0, 2]
    assert discover_gpus("") == []


class TestConfig:
    def test_examples_load(self) -> None:
        models = load_models(ROOT / "examples" / "models.yaml")
        assert set(models) == {"stub", "synthetic", "face", "running_sum", "face_files",
                               "face_stream"}
        assert models["face"].outputs[0].shape == (16, 4)

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("batch_size", -1, "batch_size must be an integer"),
            ("copies", "two", "copies must be an integer"),
            ("entrypoint", "os.system", "entrypoint must be 'module:Class'"),
            ("run_on_gpu", "yes", "run_on_gpu must be true or false"),
            ("inputs", [], "inputs must be a non-empty list"),
            ("inputs", [{"name": "x", "datatype": "STRING", "shape": [1]}], "datatype must be"),
            ("inputs", [{"name": "x", "datatype": "FP32", "shape": [0]}], "shape must be"),
            ("colour", "red", "unknown field"),
        ],
    )
    def test_invalid_fields_are_named(self, field: str, value: object, message: str) -> None:
        raw = {
            "entrypoint": "m:C",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
            field: value,
        }
        with pytest.raises(ConfigError, match=message):
            parse_model("m", raw)

    @pytest.mark.parametrize("name", ["../etc", "a b", "", "x" * 80, "-lead"])
    def test_model_names_are_validated(self, name: str) -> None:
        with pytest.raises(ConfigError, match="model name"):
            parse_model(name, {})

    def test_unreadable_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load_models(tmp_path / "missing.yaml")
        (tmp_path / "bad.yaml").write_text("models: [1, 2]")
        with pytest.raises(ConfigError, match="'models' mapping"):
            load_models(tmp_path / "bad.yaml")


class TestGroups:
    def test_one_request_per_group_per_batch_in_order(self) -> None:
        q = queue(batch=4)
        for name, group in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a"), ("c1", "c")]:
            q.push(name, 1, "k", now=0.0, group=group)
        assert q.take(now=1.0, copy_free=True) == ["a1", "b1", "c1"]
        assert q.take(now=1.0, copy_free=True) == ["a2"]
        assert q.take(now=1.0, copy_free=True) == ["a3"]

    def test_a_group_passed_over_for_its_key_stays_behind(self) -> None:
        q = queue(batch=4)
        q.push("a1", 1, "k1", now=0.0, group="a")
        q.push("b1", 1, "k2", now=0.0, group="b")
        q.push("b2", 1, "k1", now=0.0, group="b")  # same key as the head, but b1 is first
        q.push("c1", 1, "k1", now=0.0, group="c")
        assert q.take(now=1.0, copy_free=True) == ["a1", "c1"]
        assert q.take(now=1.0, copy_free=True) == ["b1"]
        assert q.take(now=1.0, copy_free=True) == ["b2"]


def test_deadline_heap_pops_due_live_items_and_forgets_answered_ones() -> None:
    from gateway.deadlines import DeadlineHeap

    heap: DeadlineHeap[str] = DeadlineHeap()
    late, early, answered = heap.push(3.0, "late"), heap.push(1.0, "early"), heap.push(2.0, "x")
    heap.discard(answered)
    heap.discard(answered)  # idempotent
    assert heap.live == 2 and answered[2] is None  # the item is let go at once
    assert heap.next_deadline() == 1.0
    assert heap.due(0.5) == []
    assert heap.due(2.5) == ["early"]  # the answered one surfaces and is dropped
    assert heap.items() == ["late"] and late[2] == "late" and early[2] == "early"
    for i in range(200):  # answered entries do not pile up
        heap.discard(heap.push(10.0 + i, f"r{i}"))
    assert heap.live == 1 and len(heap) <= 65
