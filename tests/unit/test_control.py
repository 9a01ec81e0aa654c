"""The scheduler's shell without sockets: `Controller.step` turns a policy's decision into
threshold messages (clamped, only real moves, one epoch per move, only to the devices whose
value changed), `Runtime.apply` acts on the rest, and a failing policy does not stop the loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.events import EventLog, read_events
from cascade_testbed.server.control import (
    THRESHOLD_EPSILON,
    Controller,
    DuplicateDevice,
    clamp_threshold,
    every,
)
from cascade_testbed.server.runtime import Runtime, ServerSettings
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    HeavyOption,
    PolicyDecision,
    SystemView,
)
from cascade_testbed.server.stats import ServerStats
from tests.helpers import device, server


class ScriptedPolicy:
    """Answers `join` with a fixed value and each `step` with the next scripted decision."""

    name: ClassVar[str] = "scripted"

    def __init__(self, decisions: list[PolicyDecision] | None = None, start: float = 0.5,
                 fail: Callable[[int], bool] = lambda n: False) -> None:
        self.decisions = list(decisions or [])
        self.start = start
        self.fail = fail
        self.views: list[SystemView] = []
        self.left: list[str] = []

    def join(self, device: DeviceInfo, now: float) -> float:
        return self.start

    def leave(self, device_id: str, now: float) -> None:
        self.left.append(device_id)

    def step(self, view: SystemView) -> PolicyDecision:
        self.views.append(view)
        if self.fail(len(self.views)):
            raise RuntimeError("policy bug")
        return self.decisions.pop(0) if self.decisions else PolicyDecision()


class Fleet:
    """A controller with devices whose outgoing messages are kept, decoded, per device."""

    def __init__(self, policy: ScriptedPolicy, events_path: Path, *devices: str) -> None:
        self.events_path = events_path
        self.policy = policy
        self.log = EventLog(self.events_path, "server")
        self.controller = Controller(policy, ServerStats(), self.log, slo_ms=100.0,
                                     interval_s=0.5)
        self.sent: dict[str, list[bytes]] = {}
        self.welcomes = {dev: self.join(dev) for dev in devices}

    def join(self, dev: str, tier: str = "low") -> wire.Welcome:
        out = self.sent.setdefault(dev, [])
        return self.controller.join(device(dev, tier), out.append, now=0.0)

    def step(self, now: float = 1.0, **kw: Any) -> PolicyDecision:
        return self.controller.step(now, server(), **kw)

    def messages(self, dev: str) -> list[wire.Threshold]:
        return [wire.decode(b) for b in self.sent[dev]]  # type: ignore[misc]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.events_path) if e["kind"] == kind]


MakeFleet = Callable[..., Fleet]


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    """Makes fleets; their event logs are closed when the test ends."""
    made: list[Fleet] = []

    def make(policy: ScriptedPolicy, *devices: str) -> Fleet:
        made.append(Fleet(policy, tmp_path / f"events-{len(made)}.jsonl", *devices))
        return made[-1]

    yield make
    for f in made:
        f.log.close()


def decide(**thresholds: float) -> PolicyDecision:
    return PolicyDecision(thresholds=thresholds, note="test")


@pytest.mark.parametrize(("value", "clamped"), [(1.7, 1.0), (-0.2, 0.0), (0.3, 0.3), (0, 0.0),
                                               (1, 1.0), (1e-12, 1e-12), (float("inf"), 1.0)])
def test_clamp_threshold_keeps_a_threshold_within_0_and_1(value: float, clamped: float) -> None:
    """The one clamp of a threshold: every policy's output passes it (`join` and `step`
    below); the wire refuses a value outside [0, 1] rather than clamping it again."""
    out = clamp_threshold(value)
    assert out == clamped and type(out) is float


def test_a_nan_threshold_is_refused_not_clamped() -> None:
    """max/min pass NaN through; no device can act on it, so it is a policy bug."""
    with pytest.raises(ValueError, match="not a number"):
        clamp_threshold(float("nan"))


class TestThresholdMessages:
    def test_a_nan_from_a_policy_keeps_the_devices_threshold(
            self, make_fleet: MakeFleet, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.ERROR, logger="cascade_testbed.server.control"):
            f = make_fleet(ScriptedPolicy([decide(a=float("nan"), b=0.25)],
                                          start=float("nan")), "a", "b")
            assert f.welcomes["a"].threshold == device("a", "low").initial_threshold
            f.step()
        assert f.messages("a") == [] and [m.value for m in f.messages("b")] == [0.25]
        assert f.controller.sessions["a"].threshold == f.welcomes["a"].threshold
        assert sum("not a number" in r.getMessage() for r in caplog.records) == 3

    def test_join_welcomes_with_the_policy_threshold_clamped(self, make_fleet: MakeFleet) -> None:
        assert make_fleet(ScriptedPolicy(start=1.7), "a").welcomes["a"].threshold == 1.0
        assert make_fleet(ScriptedPolicy(start=-0.2), "a").welcomes["a"].threshold == 0.0
        welcome = make_fleet(ScriptedPolicy(start=0.3), "a").welcomes["a"]
        assert (welcome.threshold, welcome.epoch) == (0.3, 0)
        assert welcome.config == {"slo_ms": 100.0, "policy": "scripted"}

    def test_a_second_connection_with_the_same_id_is_refused(self, make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy(), "a")
        with pytest.raises(DuplicateDevice):
            f.join("a")

    def test_values_outside_0_1_are_clamped_before_they_are_sent(self,
                                                                 make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy([decide(a=1.5, b=-3.0)]), "a", "b")
        f.step()
        assert [(m.value, m.epoch) for m in f.messages("a")] == [(1.0, 1)]
        assert [(m.value, m.epoch) for m in f.messages("b")] == [(0.0, 1)]
        assert f.controller.sessions["a"].threshold == 1.0

    def test_moves_under_epsilon_send_nothing_and_keep_the_old_value(
            self, make_fleet: MakeFleet) -> None:
        tiny, real = 0.5 + THRESHOLD_EPSILON / 2, 0.5 + 2 * THRESHOLD_EPSILON
        f = make_fleet(ScriptedPolicy([decide(a=tiny), decide(a=real)]), "a")
        f.step()
        assert f.messages("a") == []
        assert f.controller.sessions["a"].threshold == 0.5
        f.step()
        assert [m.value for m in f.messages("a")] == [real]

    def test_each_move_bumps_that_devices_epoch_only(self, make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy([decide(a=0.4), decide(a=0.3, b=0.6), decide(a=0.2)]),
                       "a", "b")
        for _ in range(3):
            f.step()
        assert [(m.value, m.epoch) for m in f.messages("a")] == [(0.4, 1), (0.3, 2), (0.2, 3)]
        assert [(m.value, m.epoch) for m in f.messages("b")] == [(0.6, 1)]
        assert f.controller.status()["devices"]["a"]["epoch"] == 3

    def test_only_devices_whose_threshold_changed_hear_of_it(self, make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy([decide(a=0.5, b=0.7, gone=0.1)]), "a", "b", "c")
        f.step()
        assert f.messages("a") == []  # the value it already has
        assert [m.value for m in f.messages("b")] == [0.7]
        assert f.messages("c") == []  # not named by the decision
        changed = f.events("thresholds")
        assert [e["values"] for e in changed] == [{"b": 0.7}]  # an unknown id is ignored
        assert changed[0]["note"] == "test"

    def test_a_decision_that_changes_nothing_writes_no_event(self, make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy([decide(a=0.5)]), "a")
        f.step()
        assert f.events("thresholds") == []
        assert f.controller.steps == 1

    def test_a_gear_switch_is_recorded_as_given(self, make_fleet: MakeFleet) -> None:
        gear = {"gear": 2, "load": 120.0}
        f = make_fleet(ScriptedPolicy([PolicyDecision(gear=gear)]), "a")
        f.step()
        assert [{k: e[k] for k in gear} for e in f.events("gear_switch")] == [gear]


class TestTheView:
    def test_reports_reach_the_policy_once_as_fresh_with_their_age(
            self, make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy(), "a", "b")
        report = wire.Report(window_s=0.5, generated=10, forwarded=4, answered=10, slo_met=9,
                             slo_missed=1, fallback=0, threshold=0.5,
                             mean_light_confidence=0.8, light_ms_mean=12.0, epoch=0)
        f.controller.on_report("a", report, now=0.75)
        f.controller.on_report("nobody", report, now=0.75)  # left already: ignored
        options = {"heavy": HeavyOption("heavy", 0.99, 500.0)}
        f.step(now=1.0, heavy_model="heavy", heavy_options=options)
        f.step(now=1.5)
        first, second = f.policy.views
        a = first.devices["a"]
        assert a.fresh and a.window is not None
        assert (a.window.slo_met, a.window.forwarded, a.window.age_s) == (9, 4, 0.25)
        assert first.devices["b"].window is None and not first.devices["b"].fresh
        assert (first.heavy_model, dict(first.heavy_options)) == ("heavy", options)
        assert (first.now, first.slo_ms) == (1.0, 100.0)
        later = second.devices["a"]
        assert not later.fresh and later.window is not None and later.window.age_s == 0.75
        assert f.controller.last_server_window == server()

    def test_a_device_that_leaves_is_gone_from_the_view_and_the_policy_hears(
            self, make_fleet: MakeFleet) -> None:
        f = make_fleet(ScriptedPolicy(), "a", "b")
        f.controller.leave("a", now=0.5)
        f.controller.leave("a", now=0.6)  # twice: told once
        f.step()
        assert list(f.policy.views[0].devices) == ["b"]
        assert f.policy.left == ["a"]


async def test_a_failing_policy_is_logged_and_the_loop_goes_on(
        make_fleet: MakeFleet, caplog: pytest.LogCaptureFixture) -> None:
    third = asyncio.Event()
    policy = ScriptedPolicy(fail=lambda n: n <= 2)
    f = make_fleet(policy, "a")

    def step() -> None:
        f.step()
        if len(policy.views) >= 3:
            third.set()

    with caplog.at_level(logging.ERROR, logger="cascade_testbed.server.control"):
        loop = asyncio.create_task(every(0.001, step, "policy scripted"))
        await asyncio.wait_for(third.wait(), timeout=10)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert [r.getMessage() for r in caplog.records] == ["policy scripted failed"] * 2
    assert f.join("b").threshold == 0.5  # still serving


class FakeBatcher:
    def __init__(self, model: str) -> None:
        self.model = SimpleNamespace(name=model)
        self.policy = SimpleNamespace(max_batch_size=32)
        self.caps: list[int] = []

    def use(self, model: Any, profile: Any) -> None:
        self.model = model

    def set_max_batch_size(self, n: int) -> None:
        self.caps.append(n)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Runtime, FakeBatcher, Path]]:
    """A runtime over two named models and a fake batcher; only `apply` is exercised."""
    models = {n: SimpleNamespace(name=n) for n in ("heavy", "heavy-xl")}
    batcher = FakeBatcher("heavy")
    path = tmp_path / "events.jsonl"
    events = EventLog(path, "server")
    rt = Runtime(ServerSettings(), None, models, {n: None for n in models},  # type: ignore[arg-type]
                 ServerStats(), batcher, None, events, 0.0)  # type: ignore[arg-type]
    yield rt, batcher, path
    events.close()


class TestApply:
    def test_a_model_switch_and_a_batch_cap_are_applied(
            self, runtime: tuple[Runtime, FakeBatcher, Path]) -> None:
        rt, batcher, path = runtime
        rt.apply(PolicyDecision(heavy_model="heavy-xl", max_batch_size=8, note="load fell"))
        assert rt.model.name == "heavy-xl" and batcher.caps == [8]
        switch = [e for e in read_events(path) if e["kind"] == "model_switch"]
        assert [(e["previous"], e["model"], e["reason"]) for e in switch] == [
            ("heavy", "heavy-xl", "load fell")]

    def test_an_unknown_or_current_model_and_no_cap_change_nothing(
            self, runtime: tuple[Runtime, FakeBatcher, Path]) -> None:
        rt, batcher, path = runtime
        rt.apply(PolicyDecision(heavy_model="nonexistent"))
        rt.apply(PolicyDecision(heavy_model="heavy"))
        rt.apply(PolicyDecision())
        assert rt.model.name == "heavy" and batcher.caps == []
        assert read_events(path) == []
