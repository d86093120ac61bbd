"""The I/O-free supervision policies: crash loops, alerts, autoscaling, placement, GPUs."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio
import trio.testing

from gateway.config import ConfigError, parse_model
from supervisor.alerts import Alert, AlertKind, AlertPolicy, Alerts
from supervisor.autoscale import Action, Autoscaler, Load, ScalePolicy, copy_bounds
from supervisor.copy import Copy
from supervisor.crashloop import CrashLoop, CrashLoopPolicy
from supervisor.gpus import discover_gpus, nvml_gpus, parse_gpu_list
from supervisor.placement import CPU, env_for, next_placement
from supervisor.runtime import CopySpec
from supervisor.supervisor import Supervisor


class TestCrashLoop:
    def test_enters_once_at_the_nth_exit_within_the_window(self) -> None:
        loop = CrashLoop(CrashLoopPolicy(max_exits=3, window_s=10))
        assert [loop.on_exit(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [
            False, False, True, False, False]
        assert loop.looping

    def test_exits_spread_wider_than_the_window_are_no_loop(self) -> None:
        loop = CrashLoop(CrashLoopPolicy(max_exits=3, window_s=10))
        assert not any(loop.on_exit(t) for t in (0.0, 6.0, 12.0, 18.0, 24.0))
        assert loop.recent(24.0) == 2

    def test_ready_recovers_once_and_a_quick_relapse_loops_again(self) -> None:
        loop = CrashLoop(CrashLoopPolicy(max_exits=2, window_s=10))
        loop.on_exit(0.0)
        assert loop.on_exit(1.0)
        assert loop.on_ready()
        assert not loop.on_ready()  # only the first HELLO is a recovery
        assert loop.on_exit(2.0)  # the earlier exits are still in the window
        assert loop.on_ready()
        assert not loop.on_exit(30.0)  # much later: a single exit is no loop

    def test_policy_is_validated(self) -> None:
        with pytest.raises(ValueError):
            CrashLoopPolicy(max_exits=0)


def alert(kind: AlertKind = AlertKind.CRASH_LOOP, subject: str = "m") -> Alert:
    return Alert(kind, subject, f"{kind.value} {subject}")


class TestAlertPolicy:
    def test_one_alert_per_episode(self) -> None:
        p = AlertPolicy()
        assert len(p.fire(alert(), 0.0)) == 1
        assert p.fire(alert(), 1.0) == []  # every further restart: no new alert
        assert p.fire(alert(), 500.0) == []
        assert len(p.fire(alert(AlertKind.MODEL_UNAVAILABLE), 2.0)) == 1  # another kind
        assert len(p.fire(alert(subject="other"), 2.0)) == 1  # another model

    def test_recovered_is_held_and_a_relapse_cancels_it(self) -> None:
        p = AlertPolicy(recover_hold_s=5.0)
        p.fire(alert(), 0.0)
        p.resolve("m", 10.0, "m recovered")
        assert p.due(12.0) == []
        assert p.fire(alert(), 13.0) == []  # came back within the hold: still the episode
        assert p.due(30.0) == []  # no "recovered" was ever sent
        p.resolve("m", 40.0, "m recovered")
        [recovered] = p.due(45.0)
        assert recovered.kind is AlertKind.RECOVERED
        assert recovered.details == {"resolved": ["crash_loop"]}
        assert len(p.fire(alert(), 50.0)) == 1  # a new episode

    def test_resolving_nothing_or_quietly_sends_nothing(self) -> None:
        p = AlertPolicy(recover_hold_s=0.0)
        p.resolve("m", 0.0, "nothing was wrong")
        assert p.due(1.0) == []
        p.fire(alert(AlertKind.SCALE_LIMIT), 1.0)
        p.resolve("m", 2.0, "", kinds=frozenset({AlertKind.SCALE_LIMIT}), notify=False)
        assert p.due(3.0) == []
        assert len(p.fire(alert(AlertKind.SCALE_LIMIT), 4.0)) == 1

    def test_rate_limit_drops_and_counts(self) -> None:
        p = AlertPolicy(burst=2, per_minute=60.0)
        sent = [p.fire(alert(subject=f"m{i}"), 0.0) for i in range(5)]
        assert [len(s) for s in sent] == [1, 1, 0, 0, 0]
        [later] = p.fire(alert(subject="late"), 1.0)  # one token back after a second
        assert later.dropped_before == 3

    def test_payload_is_slack_compatible(self) -> None:
        body = Alert(AlertKind.MODEL_UNAVAILABLE, "m", "model 'm' is unavailable", {"copy": 3},
                     at=0.0).payload("inferoxy@host:1")
        assert body["text"].endswith("[inferoxy@host:1] model 'm' is unavailable")
        assert body["alert"] == "model_unavailable"
        assert body["severity"] == "critical"
        assert body["details"] == {"copy": 3}
        assert body["time"] == "1970-01-01T00:00:00Z"
        json.dumps(body)


class _Hook(BaseHTTPRequestHandler):
    statuses: list[int] = []
    bodies: list[dict[str, object]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.bodies.append(json.loads(body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"statuses": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


def test_sender_retries_a_failing_webhook(hook: tuple[str, type[_Hook]]) -> None:
    url, handler = hook
    handler.statuses = [500]

    async def main() -> Alerts:
        alerts = Alerts(url, timeout_s=2.0, attempts=3, retry_delay_s=0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alerts.run)
            alerts.fire(AlertKind.SCALE_LIMIT, "m", "model 'm' reached its scale limit", copies=4)
            with trio.fail_after(10):
                while alerts.sent + alerts.failed == 0:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return alerts

    alerts = trio.run(main)
    assert (alerts.sent, alerts.failed) == (1, 0)
    [body] = handler.bodies
    assert body["alert"] == "scale_limit" and body["details"] == {"copies": 4}


def test_sender_never_blocks_when_the_webhook_is_down() -> None:
    async def main() -> Alerts:
        alerts = Alerts("http://127.0.0.1:9/down", timeout_s=0.5, attempts=2, queue_size=2,
                        retry_delay_s=0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alerts.run)
            with trio.fail_after(0.5):  # firing is synchronous and cheap, whatever the webhook
                for i in range(20):
                    alerts.fire(AlertKind.CRASH_LOOP, f"m{i}", f"copy of m{i} loops")
            with trio.fail_after(10):
                while alerts.failed < 10:  # rate limit passes 10; the queue holds 2
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return alerts

    alerts = trio.run(main)
    assert alerts.sent == 0


def policy(lo: int = 1, hi: int = 4) -> ScalePolicy:
    return ScalePolicy(lo, hi, target_delay_s=0.05, up_after_s=1.0, idle_s=10.0)


def load(now: float, copies: int = 1, delay: float = 0.0, busy: float = 0.0,
         starting: int = 0, slot_free: bool = True) -> Load:
    return Load(now, copies, starting, delay, busy, slot_free)


class TestAutoscaler:
    def test_scales_up_when_delay_stays_over_target(self) -> None:
        a = Autoscaler(policy())
        assert a.observe(load(0.0, delay=0.2)) is None
        assert a.observe(load(0.5, delay=0.2)) is None
        d = a.observe(load(1.0, delay=0.2))
        assert d is not None and d.action is Action.UP and d.copies == 2
        assert "queue delay 200 ms over the 50 ms target for 1s: 1 -> 2 copies" in d.reason

    def test_a_dip_under_target_restarts_the_wait(self) -> None:
        a = Autoscaler(policy())
        a.observe(load(0.0, delay=0.2))
        a.observe(load(0.6, delay=0.01))
        assert a.observe(load(1.2, delay=0.2)) is None
        assert a.observe(load(2.2, delay=0.2)) is not None

    def test_waits_while_a_copy_starts(self) -> None:
        a = Autoscaler(policy())
        a.observe(load(0.0, delay=0.2))
        assert a.observe(load(1.0, copies=2, starting=1, delay=0.9)) is None
        assert a.observe(load(1.5, copies=2, delay=0.9)) is None  # a fresh wait after it
        assert a.observe(load(2.5, copies=2, delay=0.9)) is not None

    def test_limit_is_reported_once_until_it_scales_down(self) -> None:
        a = Autoscaler(policy(hi=2))
        a.observe(load(0.0, copies=2, delay=0.2))
        d = a.observe(load(1.0, copies=2, delay=0.2))
        assert d is not None and d.action is Action.LIMIT
        assert "at max_copies 2" in d.reason
        for t in range(2, 6):
            assert a.observe(load(float(t), copies=2, delay=0.2)) is None
        a.observe(load(10.0, copies=2))
        assert a.observe(load(20.0, copies=2)).action is Action.DOWN  # type: ignore[union-attr]
        a.observe(load(30.0, copies=2, delay=0.2))
        assert a.observe(load(31.0, copies=2, delay=0.2)).action is Action.LIMIT  # type: ignore[union-attr]

    def test_no_free_gpu_is_a_limit(self) -> None:
        a = Autoscaler(policy())
        a.observe(load(0.0, copies=2, delay=0.2, slot_free=False))
        d = a.observe(load(1.0, copies=2, delay=0.2, slot_free=False))
        assert d is not None and d.action is Action.LIMIT and "no free GPU" in d.reason

    def test_scales_down_after_idle_window_never_below_min(self) -> None:
        a = Autoscaler(policy(lo=2))
        assert a.observe(load(0.0, copies=3, busy=0.5)) is None
        assert a.observe(load(9.9, copies=3, busy=0.5)) is None
        d = a.observe(load(10.0, copies=3, busy=0.5))
        assert d is not None and d.action is Action.DOWN and d.copies == 2
        assert "2 copies would do for 10s" in d.reason
        assert a.observe(load(11.0, copies=2)) is None
        assert a.observe(load(100.0, copies=2)) is None  # min_copies holds

    def test_busy_copies_block_scale_down(self) -> None:
        a = Autoscaler(policy())
        a.observe(load(0.0, copies=3, busy=0.5))
        a.observe(load(5.0, copies=3, busy=1.5))  # 1.5 > (3 - 1) * 0.7
        assert a.observe(load(10.0, copies=3, busy=0.5)) is None
        assert a.observe(load(19.0, copies=3, busy=0.5)) is None  # the window began at 10
        assert a.observe(load(20.0, copies=3, busy=0.5)) is not None

    def test_puts_back_copies_below_min(self) -> None:
        d = Autoscaler(policy(lo=2)).observe(load(0.0, copies=1))
        assert d is not None and d.action is Action.UP and "below min_copies 2" in d.reason


def test_copy_bounds() -> None:
    # No min/max: the model's full size, nothing scales.
    assert copy_bounds(True, 1, None, None, 4) == (4, 4)
    assert copy_bounds(False, 3, None, None, 4) == (3, 3)
    assert copy_bounds(True, 2, None, None, 0) == (2, 2)  # no GPUs: the CPU count
    # Asked: between min and max, at most one copy per GPU, never zero.
    assert copy_bounds(True, 1, 1, 4, 4) == (1, 4)
    assert copy_bounds(True, 1, 1, 8, 2) == (1, 2)
    assert copy_bounds(True, 1, None, 2, 4) == (2, 2)
    assert copy_bounds(True, 1, 1, None, 4) == (1, 4)
    assert copy_bounds(False, 0, None, 3, 0) == (1, 3)


def test_next_placement_spreads_one_copy_per_gpu() -> None:
    p = next_placement(True, [0, 1, 3], model_gpus=[0], all_gpus=[0, 1, 1])
    assert p is not None and (p.gpu, p.device, p.visible_devices) == (3, "cuda:0", "3")
    assert next_placement(True, [0, 1], model_gpus=[0, 1], all_gpus=[0, 1]) is None
    sim = next_placement(True, [0, 1], model_gpus=[], all_gpus=[], simulated=True)
    assert sim is not None and (sim.device, sim.visible_devices) == ("cpu", "0")
    cpu = next_placement(False, [0, 1], model_gpus=[None], all_gpus=[None])
    assert cpu is not None and cpu.gpu is None and cpu.visible_devices == ""
    assert env_for(sim)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env_for(cpu)["CUDA_VISIBLE_DEVICES"] == ""


def test_gpu_discovery() -> None:
    assert discover_gpus(None, simulate=3) == [0, 1, 2]
    assert discover_gpus("0,1,3") == [0, 1, 3]
    assert discover_gpus("") == []
    assert isinstance(nvml_gpus(), list)  # no GPU or no driver here: [], never an error
    with pytest.raises(ValueError, match="GPU indices"):
        parse_gpu_list("0,gpu1")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_copies": 3, "max_copies": 2}, "min_copies 3 is more than max_copies 2"),
        ({"min_copies": 0}, "min_copies must be an integer in \\[1, 64\\]"),
        ({"scale_down_idle_s": -1}, "scale_down_idle_s must be a number of seconds"),
        ({"scale_up_queue_delay_us": "fast"}, "scale_up_queue_delay_us must be an integer"),
    ],
)
def test_scaling_fields_are_validated(fields: dict[str, object], message: str) -> None:
    raw = {"entrypoint": "m:C", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
           "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}], **fields}
    with pytest.raises(ConfigError, match=message):
        parse_model("m", raw)


def test_scaling_fields_defaults() -> None:
    raw = {"entrypoint": "m:C", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
           "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
           "max_queue_delay_us": 200_000, "min_copies": 1, "max_copies": 2}
    m = parse_model("m", raw)
    assert (m.min_copies, m.max_copies, m.scale_up_after_s, m.scale_down_idle_s) == (
        1, 2, 1.0, 300.0)
    assert m.scale_up_delay_s == pytest.approx(0.4)  # twice the batching delay, at least 100 ms


# -- the startup timeout counts from the copy's start, not from an image pull -----------------

class _Process:
    """A started copy that never says HELLO: a real ``sleep`` process."""

    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self.pid: int | None = process.pid

    async def wait(self) -> int:
        return await self._process.wait()

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


class _SlowPullRuntime:
    """Stands in for the Docker engine: ``start`` first spends ``pull_s`` pulling an image."""

    name = "slow-pull"

    def __init__(self, pull_s: float) -> None:
        self.pull_s = pull_s
        self.started_at: list[float] = []

    async def start(self, spec: CopySpec) -> _Process:
        await trio.sleep(self.pull_s)
        process = await trio.lowlevel.open_process(["sleep", "30"])
        self.started_at.append(trio.current_time())
        return _Process(process)

    async def sweep_orphans(self) -> int:
        return 0

    def progress(self, image: str) -> str:
        return ""


class _Channel:
    def open_copy(self, copy_id: int) -> None:
        pass

    def close_copy(self, copy_id: int) -> None:
        pass


class _Observer:
    def __init__(self) -> None:
        self.lost_at: list[float] = []

    def on_copy_ready(self, copy: Copy) -> None:
        pass

    def on_copy_lost(self, copy: Copy) -> None:
        self.lost_at.append(trio.current_time())


def test_a_long_image_pull_does_not_count_against_the_startup_timeout() -> None:
    # The pull takes longer than the whole startup timeout; the copy must still get its full
    # timeout once its process exists, and be killed (it never says HELLO) only after that.
    runtime = _SlowPullRuntime(pull_s=2.0)
    observer = _Observer()
    supervisor = Supervisor(runtime, _Channel(), on_worker_gone=lambda pid: None,
                            startup_timeout_s=1.5)
    copy = Copy(id=1, model="m", placement=CPU)
    spec = CopySpec(copy_id=1, model="m", entrypoint="x:Y", image="registry/slow:1",
                    parameters={}, placement=CPU, run_dir="/nonexistent", shm_prefix="ifx-0",
                    heartbeat_s=1.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run_copy, copy, spec, observer)
            with trio.fail_after(30):
                while not observer.lost_at:
                    await trio.sleep(0.05)
            # The supervisor is the one map of copies to their observers (the gateway's
            # servers): it answers while the copy's task runs, and forgets it after.
            assert supervisor.observer(copy.id) is observer
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert supervisor.observer(copy.id) is None and copy.id not in supervisor.copies
    lived = observer.lost_at[0] - runtime.started_at[0]
    assert lived >= 1.5, f"killed {lived:.2f}s after its start, before the startup timeout"
    assert copy.last_error.startswith("did not start within")


# -- the back-off outside a crash loop -----------------------------------------------------------

class _ShortLived:
    """A copy's process that exits (as if killed) ``life_s`` after it starts."""

    pid: int | None = None

    def __init__(self, life_s: float) -> None:
        self.life_s = life_s

    async def wait(self) -> int:
        await trio.sleep(self.life_s)
        return -9

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


class _ShortLivedRuntime:
    name = "short-lived"

    def __init__(self, life_s: float) -> None:
        self.life_s = life_s
        self.started_at: list[float] = []

    async def start(self, spec: CopySpec) -> _ShortLived:
        self.started_at.append(trio.current_time())
        return _ShortLived(self.life_s)

    async def sweep_orphans(self) -> int:
        return 0

    def progress(self, image: str) -> str:
        return ""


@pytest.mark.parametrize(("life_s", "longest_s", "loops"), [
    (15.0, 1.6, False),  # killed every 15 s: 4 exits a minute, no crash loop, short back-off
    (0.5, 30.0, True),  # dies at once: a crash loop, and the back-off grows to its cap
])
def test_backoff_stays_short_unless_in_a_crash_loop(life_s: float, longest_s: float,
                                                    loops: bool) -> None:
    runtime = _ShortLivedRuntime(life_s)
    verdicts: list[bool] = []
    supervisor = Supervisor(runtime, _Channel(), on_worker_gone=lambda pid: None,
                            on_crash_loop=lambda copy, entered: verdicts.append(entered))
    copy = Copy(id=1, model="m", placement=CPU)
    spec = CopySpec(copy_id=1, model="m", entrypoint="x:Y", image="", parameters={},
                    placement=CPU, run_dir="/nonexistent", shm_prefix="ifx-0", heartbeat_s=1.0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run_copy, copy, spec, _Observer())
            while len(runtime.started_at) < 16:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    starts = runtime.started_at
    delays = [round(b - a - life_s, 3) for a, b in itertools.pairwise(starts)]
    assert max(delays) == pytest.approx(longest_s), delays
    assert verdicts == ([True] if loops else []), delays
