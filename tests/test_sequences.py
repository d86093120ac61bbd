"""Sequences (stateful models): the I/O-free table, and end to end over HTTP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import urllib3

from gateway.sequences import SequenceBusy, SequenceError, SequenceState, SequenceTable
from tests.conftest import RunningGateway

# -- the table, without sockets ------------------------------------------------------------


def table(slots: int = 1, idle: float = 1.0, waiting: int = 4) -> SequenceTable:
    t = SequenceTable(slots_per_copy=slots, max_idle_s=idle, max_waiting=waiting)
    t.add_copy(1)
    t.add_copy(2)
    return t


def test_start_reserves_least_loaded_copy() -> None:
    t = table(slots=2)
    a, _ = t.start("a", 0.0)
    b, _ = t.start("b", 0.0)
    c, _ = t.start("c", 0.0)
    assert a.state is SequenceState.OPEN and {a.copy, b.copy} == {1, 2}
    assert c.copy in (1, 2)
    assert t.lookup("a", 0.5) is a


def test_no_free_slot_waits_then_gets_the_freed_one() -> None:
    t = table(slots=1, waiting=1)
    a, _ = t.start("a", 0.0)
    t.start("b", 0.0)
    c, _ = t.start("c", 0.0)
    assert c.state is SequenceState.WAITING
    with pytest.raises(SequenceBusy):
        t.start("d", 0.0)
    released = t.release(a, "ended")
    assert released is not None and released.copy == a.copy
    assert t.take_assigned() == [c]
    assert c.state is SequenceState.OPEN and c.copy == a.copy


def test_release_is_idempotent_and_bound_to_an_incarnation() -> None:
    t = table(slots=1)
    old, _ = t.start("s", 0.0)
    assert t.release(old, "ended") is not None
    assert t.release(old, "cancelled") is None  # a racing second release frees nothing
    new, _ = t.start("s", 1.0)  # same id, new client
    assert t.release(old, "evicted") is None  # a stale release cannot end the new one
    assert t.lookup("s", 1.0) is new
    assert t.free_slots(new.copy or 0) == 0


def test_unknown_and_remembered_ends() -> None:
    t = table()
    with pytest.raises(SequenceError, match="must set sequence_start"):
        t.lookup("nope", 0.0)
    a, _ = t.start("a", 0.0)
    t.evict_idle(5.0)
    with pytest.raises(SequenceError, match="idling"):
        t.lookup("a", 5.0)
    b, _ = t.start("b", 5.0)
    assert [r.reason for r in t.remove_copy(b.copy or 0)] == ["copy_died"]
    with pytest.raises(SequenceError, match="died"):
        t.lookup("b", 5.0)
    assert a.state is SequenceState.RELEASED


def test_busy_sequences_are_not_evicted() -> None:
    t = table()
    a, _ = t.start("a", 0.0)
    assert t.evict_idle(10.0, busy=[a]) == []
    assert [r.reason for r in t.evict_idle(10.0)] == ["evicted"]


def test_restart_ends_the_old_incarnation() -> None:
    t = table(slots=1)
    old, _ = t.start("s", 0.0)
    new, released = t.start("s", 1.0)
    assert [r.reason for r in released] == ["restarted"] and new is not old
    assert t.lookup("s", 1.0) is new


# -- end to end over HTTP ------------------------------------------------------------------


def _frame(gw: RunningGateway, seq: Any, value: float, *, start: bool = False,
           end: bool = False, timeout: float = 30) -> urllib3.BaseHTTPResponse:
    params: dict[str, Any] = {"sequence_id": seq}
    if start:
        params["sequence_start"] = True
    if end:
        params["sequence_end"] = True
    body = orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4],
                                     "data": [value] * 4}], "parameters": params})
    return urllib3.request("POST", f"{gw.http}/v2/models/running_sum/infer", body=body,
                           headers={"Content-Type": "application/json"}, timeout=timeout)


def _sum_count(response: urllib3.BaseHTTPResponse) -> tuple[float, int]:
    assert response.status == 200, response.data
    out = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return out["SUM"][0], out["COUNT"][0]


def test_many_sequences_in_order(gateway: RunningGateway) -> None:
    """8 sequences x 25 frames at once: each sees its own frames, all, once, in order."""
    def run(seq: int) -> list[tuple[float, int]]:
        got = []
        for k in range(1, 26):
            got.append(_sum_count(_frame(gateway, 1000 + seq, float(k), start=k == 1,
                                         end=k == 25)))
        return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    for got in results:
        assert got == [(k * (k + 1) / 2, k) for k in range(1, 26)]
    stats = urllib3.request("GET", f"{gateway.http}/v2/models/running_sum/stats").json()
    s = stats["model_stats"][0]
    assert s["inference_count"] >= 200 and s["execution_count"] < s["inference_count"]


def test_string_ids_restart_and_errors(gateway: RunningGateway) -> None:
    assert _sum_count(_frame(gateway, "cam-1", 1.0, start=True)) == (1.0, 1)
    assert _sum_count(_frame(gateway, "cam-1", 2.0)) == (3.0, 2)
    assert _sum_count(_frame(gateway, "cam-1", 5.0, start=True)) == (5.0, 1)  # restarted
    assert _sum_count(_frame(gateway, "cam-1", 1.0, end=True)) == (6.0, 2)
    over = _frame(gateway, "cam-1", 1.0)
    assert over.status == 400 and "it ended" in over.json()["error"]
    unknown = _frame(gateway, "cam-nope", 1.0)
    assert unknown.status == 400 and "sequence_start" in unknown.json()["error"]
    plain = urllib3.request(
        "POST", f"{gateway.http}/v2/models/running_sum/infer",
        body=orjson.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4],
                                       "data": [0] * 4}]}),
    )
    assert plain.status == 400 and "stateful" in plain.json()["error"]
    bad = _frame(gateway, 1.5, 1.0, start=True)
    assert bad.status == 400 and "sequence_id" in bad.json()["error"]
    config = urllib3.request("GET", f"{gateway.http}/v2/models/running_sum/config").json()
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 1_500_000


def test_idle_sequence_is_evicted_and_the_worker_told(gateway: RunningGateway) -> None:
    assert _sum_count(_frame(gateway, "idle-1", 1.0, start=True)) == (1.0, 1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "sequence 'idle-1' ended (evicted)" not in gateway.log():
        time.sleep(0.1)
    assert "sequence 'idle-1' ended (evicted)" in gateway.log()  # the worker's own line
    late = _frame(gateway, "idle-1", 1.0)
    assert late.status == 400 and "idling" in late.json()["error"]


def test_start_waits_for_a_free_copy(gateway: RunningGateway) -> None:
    """2 copies x 4 slots: a ninth sequence waits until one ends, then runs."""
    for i in range(8):
        assert _sum_count(_frame(gateway, f"w{i}", 1.0, start=True))[1] == 1
    done = threading.Event()
    answer: list[tuple[float, int]] = []

    def ninth() -> None:
        answer.append(_sum_count(_frame(gateway, "w8", 7.0, start=True)))
        done.set()

    thread = threading.Thread(target=ninth)
    thread.start()
    assert not done.wait(0.5)  # parked: every slot is taken
    assert _sum_count(_frame(gateway, "w0", 1.0, end=True)) == (2.0, 2)
    assert done.wait(15)
    thread.join()
    assert answer == [(7.0, 1)]
    for i in range(1, 9):
        _frame(gateway, f"w{i}", 0.0, end=True)


def test_copy_death_mid_sequence(own_gateway: RunningGateway) -> None:
    from tests.test_lifecycle_e2e import _wait_for, _worker_pids

    assert _sum_count(_frame(own_gateway, "d1", 1.0, start=True)) == (1.0, 1)
    import os
    import signal

    for pid in _worker_pids(own_gateway.process.pid, "running_sum"):
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: own_gateway.log().count("of model running_sum (pid") >= 2)  # both exits
    # 500 if it reached the copy's queue before the gateway saw the copy go, else 400 (the
    # sequence is already over): either way a clear error, never another copy's fresh state.
    late = _frame(own_gateway, "d1", 1.0)
    assert late.status in (400, 500) and "died" in late.json()["error"], late.data
    # The copies come back; a new sequence starts from nothing (no state leaked).
    def fresh() -> bool:
        r = _frame(own_gateway, "d2", 4.0, start=True)
        return r.status == 200 and _sum_count(r) == (4.0, 1)

    _wait_for(fresh, timeout=20)
