"""CascadeServe's pure parts: the batcher simulation, the planner, plans and the gears policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.common.gear_plan import Gear, GearPlan
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    DeviceState,
    DeviceWindow,
    ServerWindow,
    SystemView,
)
from cascade_testbed.server.scheduling.gears import GearsPolicy
from cascade_testbed.testbed.plan.batch_sim import p95_ms, simulate_batcher
from cascade_testbed.testbed.plan.planner import (
    PlanInputs,
    ServerCascade,
    TierCurve,
    pareto_front,
    plan_gears,
)

PROFILE = BatchProfile(6.0, 4.2)


class TestBatchSim:
    def test_one_request_alone_waits_the_queue_delay_then_its_batch(self) -> None:
        t = simulate_batcher(0.001, PROFILE, 32, 0.002, n=1)
        assert t[0] == pytest.approx(0.002 + PROFILE.target_s(1))

    def test_latency_grows_with_load_and_explodes_past_capacity(self) -> None:
        capacity = 32 / PROFILE.target_s(32)
        p = [p95_ms(r, PROFILE, 32, 0.002) for r in (20, 100, 180, 1.3 * capacity)]
        assert p[0] < p[1] < p[2] < p[3]
        assert p[3] > 1000  # the queue grows without bound

    def test_a_small_cap_cannot_keep_up_where_a_large_one_can(self) -> None:
        assert p95_ms(190, PROFILE, 4, 0.002) > 500 > p95_ms(190, PROFILE, 32, 0.002)

    def test_no_load_no_samples(self) -> None:
        assert p95_ms(0.0, PROFILE, 8, 0.002) == 0.0


def curve(gain: float) -> TierCurve:
    """A light model whose cascade gains `gain` accuracy per unit of forward rate, concave."""
    t = np.linspace(0, 1, 11)
    fwd = t.copy()
    acc = 0.6 + gain * (1 - (1 - fwd) ** 2) / 2
    return TierCurve(t, fwd, acc)


def inputs(max_rps: int = 300, **kw: object) -> PlanInputs:
    base = dict(weights={"low": 0.5, "high": 0.5},
                curves={"big": {"low": curve(0.6), "high": curve(0.2)},
                        "small": {"low": curve(0.4), "high": curve(0.1)}},
                profiles={"big": PROFILE, "small": BatchProfile(3.0, 2.1)},
                max_batch_size=32, max_queue_delay_s=0.002, server_budget_ms=90.0,
                max_rps=max_rps, min_accuracy_step=0.0, sim_samples=800)
    base.update(kw)
    return PlanInputs(**base)  # type: ignore[arg-type]


class TestPlanner:
    def test_front_is_sorted_and_nothing_on_it_is_dominated(self) -> None:
        front = pareto_front(inputs())
        accs = [c.accuracy for c in front]
        costs = [c.cost_ms for c in front]
        assert accs == sorted(accs, reverse=True) and costs == sorted(costs, reverse=True)
        assert front[0].heavy_model == "big" and front[0].forward_rate == 1.0
        assert front[-1].forward_rate == 0.0  # nothing sent costs nothing

    def test_gears_get_cheaper_as_load_grows_and_each_fits_its_loads(self) -> None:
        plan = plan_gears(inputs())
        accs = [plan.gears[g].accuracy for g in plan.table]
        assert accs == sorted(accs, reverse=True)
        assert plan.gears[plan.table[0]].forward_rate == 1.0
        assert plan.gears[plan.table[-1]].accuracy < plan.gears[plan.table[0]].accuracy
        for q, g in enumerate(plan.table):
            gear = plan.gears[g]
            server_sps = q * gear.forward_rate
            profile = PROFILE if gear.heavy_model == "big" else BatchProfile(3.0, 2.1)
            assert server_sps <= 0.8 * gear.max_batch_size / profile.target_s(
                gear.max_batch_size) + 1e-9
            assert 0 <= gear.p95_server_ms <= 90.0

    def test_no_cascade_plans_single_models_only(self) -> None:
        one = {"low": TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.9])),
               "high": TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.9]))}
        small = {"low": TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.85])),
                 "high": TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.85]))}
        plan = plan_gears(inputs(max_rps=400, curves={"big": one, "small": small}))
        assert {g.heavy_model for g in plan.gears} == {"big", "small"}
        assert all(g.forward_rate == 1.0 for g in plan.gears)
        assert plan.gears[plan.table[0]].heavy_model == "big"
        assert plan.gears[plan.table[-1]].heavy_model == "small"

    def test_with_a_target_each_load_gets_the_fewest_replicas_that_meet_it(self) -> None:
        """Single models (devices send everything): big 0.9, small 0.85. A target of 0.88 only
        big meets: its replicas grow with the load; a target of 0.8 both meet: the cheaper
        one needs fewer replicas, and where they need as many the more accurate one runs."""
        one = {t: TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.9]))
               for t in ("low", "high")}
        small = {t: TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.85]))
                 for t in ("low", "high")}
        singles = {"big": one, "small": small}
        plan = plan_gears(inputs(max_rps=600, curves=singles, min_accuracy=0.88,
                                 max_replicas=4))
        replicas = [plan.gears[g].replicas for g in plan.table]
        assert {g.heavy_model for g in plan.gears} == {"big"}
        assert replicas == sorted(replicas) and replicas[0] == 1 and replicas[-1] > 1
        for q, g in enumerate(plan.table):
            gear = plan.gears[g]
            assert q / gear.replicas <= 0.8 * gear.max_batch_size / PROFILE.target_s(
                gear.max_batch_size) + 1e-9 or gear.replicas == 4
        loose = plan_gears(inputs(max_rps=600, curves=singles, min_accuracy=0.8,
                                  max_replicas=4))
        at = {q: loose.gears[g] for q, g in enumerate(loose.table)}
        assert at[10].heavy_model == "big" and at[10].replicas == 1  # tie: the accurate one
        assert at[600].heavy_model == "small"
        assert at[600].replicas < replicas[600]

    def test_server_cascades_join_the_front_and_a_fixed_plan_keeps_one(self) -> None:
        """Devices send everything; on the server, small answers what it is sure of and big
        the rest: a cascade between the two models' accuracy and cost."""
        one = {t: TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.9]))
               for t in ("low", "high")}
        small = {t: TierCurve(np.array([1.0]), np.array([1.0]), np.array([0.85]))
                 for t in ("low", "high")}
        cascade = ServerCascade("small", "big", np.array([0.5, 0.8]), np.array([0.1, 0.3]),
                                np.array([0.88, 0.9]))
        ins = inputs(max_rps=600, curves={"big": one, "small": small},
                     server_cascades={"small>big": cascade}, min_accuracy=0.895,
                     max_replicas=4)
        front = pareto_front(ins)
        names = {c.heavy_model for c in front}
        assert "small>big@0.8" in names and "big" not in names  # as accurate, cheaper
        sc = next(c for c in front if c.heavy_model == "small>big@0.8")
        assert sc.cost_ms == pytest.approx(1e3 * (BatchProfile(3.0, 2.1).target_s(32)
                                                 + 0.3 * PROFILE.target_s(32)) / 32)
        assert sc.thresholds == {"low": 1.0, "high": 1.0} and sc.forward_rate == 1.0
        plan = plan_gears(ins)
        assert {g.heavy_model for g in plan.gears} == {"small>big@0.8"}
        fixed = plan_gears(dataclasses.replace(ins, min_accuracy=0.85, fixed=True))
        assert {g.heavy_model for g in fixed.gears} == {"small"}  # the cheapest meeting it
        assert len({g.replicas for g in fixed.gears}) > 1       # its replicas follow the load

    def test_plan_round_trips_and_lookup_clamps(self) -> None:
        plan = plan_gears(inputs(max_rps=50))
        again = GearPlan.from_dict(plan.to_dict())
        assert again == plan
        assert plan.lookup(-3) == plan.table[0]
        assert plan.lookup(10.2) == plan.table[11]
        assert plan.lookup(1e9) == plan.table[-1]


def two_gear_plan() -> GearPlan:
    accurate = Gear("big", {"low": 1.0, "high": 0.9}, 8, 0.95, 0.9, {"low": 0.5, "high": 0.5},
                    3.0)
    cheap = Gear("small", {"low": 0.7, "high": 0.5}, 32, 0.9, 0.4, {"low": 0.7, "high": 0.3},
                 1.0)
    return GearPlan(gears=(accurate, cheap), table=(0,) * 101 + (1,) * 100)


def view(now: float, rates: dict[str, float], queue: int = 0, model: str = "big") -> SystemView:
    devices = {dev: DeviceState(DeviceInfo(dev, dev.split("-")[0], "m"), 0.5, DeviceWindow(
        1.0, int(r), 0, 0, 0, 0, 0, 0.5, 0.5, 1.0)) for dev, r in rates.items()}
    return SystemView(now=now, slo_ms=150, devices=devices,
                      server=ServerWindow(queue_len=queue), heavy_model=model)


class TestGearsPolicy:
    def make(self, **params: float) -> GearsPolicy:
        p = GearsPolicy({"smoothing_s": 0.0, "rise_s": 0.0, **params}, plan=two_gear_plan())
        for dev in ("low-0", "high-0"):
            p.join(DeviceInfo(dev, dev.split("-")[0], "m"), 0.0)
        return p

    def test_starts_on_the_cheapest_gear_and_joins_with_its_thresholds(self) -> None:
        p = GearsPolicy({}, plan=two_gear_plan())
        assert p.current == 1
        assert p.join(DeviceInfo("low-1", "low", "m"), 0.0) == 0.7
        assert p.join(DeviceInfo("high-1", "high", "m"), 0.0) == 0.5
        assert GearsPolicy({"pin_load": 0}, plan=two_gear_plan()).current == 0

    def test_high_load_moves_to_the_cheap_gear_and_applies_all_of_it(self) -> None:
        p = self.make()
        first = p.step(SystemView(now=0.0, slo_ms=150, devices={}, server=ServerWindow()))
        assert first.gear is not None and first.gear["previous"] is None  # announced
        up = p.step(view(0.1, {"low-0": 50, "high-0": 40}))
        assert p.current == 0 and up.gear is not None and up.gear["previous"] == 1
        d = p.step(view(0.2, {"low-0": 100, "high-0": 60}))
        assert p.current == 1 and d.heavy_model == "small" and d.max_batch_size == 32
        assert dict(d.thresholds) == {"low-0": 0.7, "high-0": 0.5}
        assert d.gear is not None and d.gear["gear"] == 1 and d.gear["load_sps"] == 160

    def test_back_to_the_costlier_gear_only_once_the_queue_has_drained(self) -> None:
        p = self.make()
        p.step(view(0.1, {"low-0": 150, "high-0": 50}))
        assert p.current == 1
        stuck = p.step(view(0.2, {"low-0": 30, "high-0": 30}, queue=100))
        assert p.current == 1 and stuck.gear is None  # 100 * 8 > 60
        p.step(view(0.3, {"low-0": 30, "high-0": 30}, queue=7))
        assert p.current == 0  # 7 * 8 <= 60

    def test_safety_factor_scales_the_measured_load(self) -> None:
        p = self.make(safety_factor=2.0)
        p.step(view(0.1, {"low-0": 30, "high-0": 30}))
        assert p.current == 1 and p.load_sps == 120

    def test_pinned_gear_never_moves(self) -> None:
        p = self.make(pin_load=0)
        for load in (10, 500, 1000):
            p.step(view(load, {"low-0": load, "high-0": 0}))
            assert p.current == 0

    def test_no_reports_yet_is_no_measurement(self) -> None:
        p = GearsPolicy({"smoothing_s": 1.0, "rise_s": 1.0}, plan=two_gear_plan())
        empty = SystemView(now=0.0, slo_ms=150, devices={}, server=ServerWindow())
        p.step(empty)
        p.step(view(0.2, {"a-0": 0}))  # reports before the run starts: nothing generated yet
        assert p.current == 1
        p.step(view(0.5, {"a-0": 300}))
        assert p.load_sps == 300 and p.current == 1  # the first report is taken as it is

    def test_smoothing_rises_fast_and_falls_slowly(self) -> None:
        p = GearsPolicy({"smoothing_s": 1.0, "rise_s": 0.25}, plan=two_gear_plan())
        p.step(view(0.0, {"a-0": 100}))
        p.step(view(0.25, {"a-0": 300}))
        assert p.load_sps == pytest.approx(100 + (1 - np.exp(-1)) * 200)  # 1 - 1/e of the way
        before = p.load_sps
        p.step(view(1.25, {"a-0": 0}))
        assert p.load_sps == pytest.approx(before * np.exp(-1))

    def test_a_policy_without_a_plan_says_how_to_make_one(self) -> None:
        from cascade_testbed.server.scheduling.base import PolicyError
        with pytest.raises(PolicyError, match="testbed plan"):
            GearsPolicy({})
