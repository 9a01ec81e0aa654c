"""MultiTASC++, the capacity allocator behind its model switching, and the baselines."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from cascade_testbed.server.scheduling import POLICIES, make_policy
from cascade_testbed.server.scheduling.allocation import (
    Demand,
    Flow,
    allocate,
    expected_load,
    forward_rate_at,
    scale_to_load,
    upper_hull,
)
from cascade_testbed.server.scheduling.base import (
    CurvePoint,
    DeviceInfo,
    DeviceWindow,
    HeavyOption,
    SystemView,
)
from cascade_testbed.server.scheduling.baselines import (
    DeviceOnlyPolicy,
    ServerOnlyPolicy,
    UniformAIMDPolicy,
)
from cascade_testbed.server.scheduling.multitasc_pp import MultiTASCPlusPlusPolicy, SetPoint
from tests.helpers import device, linear_curve, server, view, window


def curve(*points: tuple[float, float, float]) -> tuple[CurvePoint, ...]:
    return tuple(CurvePoint(*p) for p in points)


class TestUpperHull:
    def test_drops_points_below_the_hull_and_after_the_peak(self) -> None:
        c = curve((0.0, 0.0, 0.70), (0.2, 0.1, 0.72), (0.4, 0.2, 0.85), (0.6, 0.5, 0.90),
                  (0.8, 0.8, 0.91), (1.0, 1.0, 0.90))
        hull = upper_hull(c)
        assert [p.threshold for p in hull] == [0.0, 0.4, 0.6, 0.8]

    def test_equal_forward_rates_keep_the_most_accurate(self) -> None:
        c = curve((0.0, 0.0, 0.7), (0.1, 0.0, 0.7), (0.5, 0.5, 0.9))
        assert [p.threshold for p in upper_hull(c)] == [0.0, 0.5]


def brute_force(demands: list[Demand], capacity: float) -> float:
    """Best rate-weighted accuracy over every combination of curve points that fits."""
    best = 0.0
    total = sum(d.rate_hz for d in demands)
    for combo in itertools.product(*(d.curve for d in demands)):
        load = sum(d.rate_hz * p.forward_rate for d, p in zip(demands, combo, strict=True))
        if load <= capacity + 1e-9:
            acc = sum(d.rate_hz * p.accuracy for d, p in zip(demands, combo, strict=True))
            best = max(best, acc / total)
    return best


class TestAllocate:
    def test_respects_capacity_and_prefers_steep_gains(self) -> None:
        weak = Demand("weak", 10.0, linear_curve(0.6, 0.4))
        strong = Demand("strong", 10.0, linear_curve(0.9, 0.05))
        a = allocate([weak, strong], capacity_sps=5.0)
        assert a.load_sps <= 5.0 + 1e-9
        assert a.thresholds["weak"] == pytest.approx(0.5) and a.thresholds["strong"] == 0.0
        assert a.accuracy == pytest.approx((0.6 + 0.4 * 0.5 + 0.9) / 2)

    def test_unlimited_capacity_reaches_the_top_of_every_curve(self) -> None:
        a = allocate([Demand("d", 10.0, linear_curve(0.6, 0.4))], capacity_sps=1e9)
        assert a.thresholds["d"] == 1.0 and a.accuracy == pytest.approx(1.0)

    @pytest.mark.parametrize("capacity", [0.0, 2.0, 5.0, 9.0, 14.0, 30.0])
    def test_close_to_the_exact_optimum(self, capacity: float) -> None:
        """Greedy on concave hulls is optimal up to one partly-used step; on small cases
        it is never more than one step's gain below brute force, and never above it."""
        demands = [
            Demand("a", 10.0, curve((0, 0, 0.6), (0.5, 0.3, 0.8), (1, 1, 0.9))),
            Demand("b", 5.0, curve((0, 0, 0.7), (0.3, 0.2, 0.75), (0.6, 0.6, 0.95),
                                   (1, 1, 0.96))),
            Demand("c", 8.0, curve((0, 0, 0.85), (0.7, 0.4, 0.93), (1, 1, 0.94))),
        ]
        exact = brute_force(demands, capacity)
        got = allocate(demands, capacity)
        assert got.load_sps <= capacity + 1e-9
        assert got.accuracy <= exact + 1e-9
        assert got.accuracy >= exact - 0.05

    def test_no_demand(self) -> None:
        assert allocate([], 10.0).accuracy == 0.0


class TestLoadPrediction:
    def test_forward_rate_is_interpolated_on_the_curve(self) -> None:
        c = curve((0.0, 0.0, 0.6), (0.5, 0.2, 0.8), (1.0, 1.0, 0.9))
        assert forward_rate_at(c, 0.25) == pytest.approx(0.1)
        assert forward_rate_at(c, 0.75) == pytest.approx(0.6)
        assert forward_rate_at(c, -1.0) == 0.0 and forward_rate_at(c, 2.0) == 1.0
        assert forward_rate_at((), 0.5) == 0.0

    def test_scaling_fits_the_budget_and_heavier_weights_shed_more(self) -> None:
        flows = [Flow("heavy", 10.0, linear_curve(0.6, 0.3), 0.8, weight=2.0),
                 Flow("light", 10.0, linear_curve(0.6, 0.3), 0.8, weight=0.5)]
        assert expected_load(flows) == pytest.approx(16.0)
        s, thr = scale_to_load(flows, 8.0)
        assert 0 < s < 1
        assert expected_load([replace(f, threshold=thr[f.device_id]) for f in flows]) \
            == pytest.approx(8.0, abs=1e-3)
        assert 0.8 - thr["heavy"] > 0.8 - thr["light"] > 0

    def test_no_scaling_within_budget(self) -> None:
        flows = [Flow("a", 10.0, linear_curve(0.6, 0.3), 0.5)]
        assert scale_to_load(flows, 6.0) == (1.0, {"a": 0.5})


class TestSetPoint:
    def make(self) -> SetPoint:
        return SetPoint(target=0.95, margin=0.02, step=0.001, max_boost=0.02, horizon_s=20.0,
                        error_scale=0.05)

    def test_short_of_target_raises_the_set_point_up_to_its_bound(self) -> None:
        sp = self.make()
        assert sp.value == pytest.approx(0.97)
        sp.update(0.5, met=80, missed=20)
        assert sp.value == pytest.approx(0.971)
        for k in range(100):
            sp.update(1.0 + 0.5 * k, met=80, missed=20)
        assert sp.value == pytest.approx(0.99)

    def test_comfortably_above_target_lets_it_fall_back(self) -> None:
        sp = self.make()
        for k in range(10):
            sp.update(0.5 * k, met=80, missed=20)
        raised = sp.boost
        for k in range(200):
            sp.update(10.0 + 0.5 * k, met=100, missed=0)
        assert raised > 0 and sp.boost == 0.0

    def test_between_target_and_margin_it_holds(self) -> None:
        sp = self.make()
        sp.boost = 0.01
        sp.update(0.5, met=96, missed=4)
        assert sp.boost == pytest.approx(0.01)


def info(dev: str, tier: str, gain: float, initial: float = 0.8,
         curves: dict[str, tuple[CurvePoint, ...]] | None = None) -> DeviceInfo:
    return replace(device(dev, tier, gain, initial), curves=curves or {})


def pp_view(now: float, states: dict[str, tuple[DeviceInfo, float, DeviceWindow]],
            srv: object = None, heavy: str = "base",
            options: dict[str, HeavyOption] | None = None) -> SystemView:
    v = view(now, states, srv or server())  # type: ignore[arg-type]
    return replace(v, heavy_model=heavy, heavy_options=options or {})


def drive(p: MultiTASCPlusPlusPolicy, steps: int,
          outcome: dict[str, tuple[DeviceInfo, tuple[int, int], int]],
          srv: object = None) -> dict[str, float]:
    """`outcome`: device -> (info, (met, missed) per report, forwarded per report)."""
    thr = {dev: p.join(i, 0.0) for dev, (i, _, _) in outcome.items()}
    for k in range(steps):
        states = {}
        for dev, (i, (met, missed), fwd) in outcome.items():
            w = replace(window(met, missed, thr[dev]), forwarded=fwd)
            states[dev] = (i, thr[dev], w)
        thr.update(p.step(pp_view(0.5 * (k + 1), states, srv)).thresholds)
    return thr


class TestMultiTASCPlusPlus:
    def test_missing_device_backs_off_in_proportion(self) -> None:
        """Per-device control: a device far below target moves more than one just below;
        a device above target with room grows."""
        p = MultiTASCPlusPlusPolicy()
        thr = drive(p, 2, {"a": (info("a", "mid", 0.3), (14, 6), 10),
                           "b": (info("b", "mid", 0.3), (18, 2), 10),
                           "c": (info("c", "mid", 0.3), (20, 0), 10)})
        assert 0.8 - thr["a"] > 0.8 - thr["b"] > 0
        assert thr["c"] > 0.8

    def test_device_load_aware_multipliers(self) -> None:
        """Same miss, same gain: the device sending more of the server's load sheds more;
        with room, the one sending less grows more."""
        p = MultiTASCPlusPlusPolicy()
        miss = drive(p, 1, {"big": (info("big", "mid", 0.3), (15, 5), 18),
                            "small": (info("small", "mid", 0.3), (15, 5), 2)})
        assert 0.8 - miss["big"] > 0.8 - miss["small"] > 0
        p = MultiTASCPlusPlusPolicy()
        room = drive(p, 1, {"big": (info("big", "mid", 0.3), (20, 0), 18),
                            "small": (info("small", "mid", 0.3), (20, 0), 2)})
        assert room["small"] - 0.8 > room["big"] - 0.8 > 0

    def test_shared_congestion_lowers_everyone(self) -> None:
        p = MultiTASCPlusPlusPolicy()
        thr = drive(p, 2, {"a": (info("a", "low", 0.4), (20, 0), 10),
                           "b": (info("b", "high", 0.05), (20, 0), 10)},
                    server(queue_len=64, mean_queue_ms=80))
        assert thr["a"] < 0.8 and thr["b"] < 0.8
        assert 0.8 - thr["b"] > 0.8 - thr["a"]  # the strong light model sheds most

    def test_not_judged_without_enough_samples(self) -> None:
        p = MultiTASCPlusPlusPolicy({"min_decided": 100})
        assert drive(p, 2, {"a": (info("a", "mid", 0.3), (0, 20), 10)}) == {"a": 0.8}

    def test_set_point_above_target(self) -> None:
        """The controller aims above the target (SLO satisfaction rate updates): a device at
        96 % is below the set-point and backs off, even though it meets the 95 % target."""
        p = MultiTASCPlusPlusPolicy()
        thr = drive(p, 1, {"a": (info("a", "mid", 0.3), (48, 2), 10)})
        assert thr["a"] < 0.8

    def test_one_cut_per_evidence(self) -> None:
        """After a cut, the misses that caused it are not held against the new threshold."""
        p = MultiTASCPlusPlusPolicy()
        a = info("a", "mid", 0.3)
        thr = p.join(a, 0.0)
        d1 = p.step(pp_view(0.5, {"a": (a, thr, window(10, 10, thr))}))
        assert d1.thresholds["a"] < thr
        # No new report: the same evidence must not cut again.
        d2 = p.step(pp_view(1.0, {"a": (a, d1.thresholds["a"], None)}))  # type: ignore[dict-item]
        assert d2.thresholds == {}

    def test_newcomer_starts_no_higher_than_its_tier(self) -> None:
        p = MultiTASCPlusPlusPolicy()
        p.join(info("a", "low", 0.3, initial=0.8), 0.0)
        drive(p, 0, {})
        p._devices["a"].threshold = 0.4
        assert p.join(info("b", "low", 0.3, initial=0.8), 1.0) == pytest.approx(0.4)
        assert p.join(info("c", "high", 0.3, initial=0.8), 1.0) == pytest.approx(0.8)

    def test_leading_signal_scales_before_any_miss(self) -> None:
        """Devices that joined and have not missed anything yet: their predicted load is
        more than the model's planned capacity, so every threshold is scaled down now, the
        heaviest sender most."""
        p = MultiTASCPlusPlusPolicy({"utilization": 1.0})
        big = info("big", "low", 0.3)
        small = info("small", "low", 0.3)
        thr = {"big": p.join(big, 0.0), "small": p.join(small, 0.0)}
        options = {"base": HeavyOption("base", 0.95, capacity_sps=20.0)}
        states = {"big": (big, thr["big"], replace(window(40, 0, thr["big"]), generated=40,
                                                   forwarded=32)),
                  "small": (small, thr["small"], replace(window(10, 0, thr["small"]),
                                                         generated=10, forwarded=8))}
        calm = replace(server(), arrivals=0)
        d = p.step(pp_view(0.5, states, calm, options=options))
        assert "scaled" in d.note
        assert p.predicted_load == pytest.approx(20.0, rel=0.02)
        assert 0.8 - d.thresholds["big"] > 0.8 - d.thresholds["small"] > 0

    def test_growth_stops_at_the_planned_load(self) -> None:
        p = MultiTASCPlusPlusPolicy({"utilization": 1.0})
        a = info("a", "low", 0.3, initial=0.5)
        thr = p.join(a, 0.0)
        options = {"base": HeavyOption("base", 0.95, capacity_sps=24.0)}
        for k in range(40):
            w = replace(window(20, 0, thr), generated=20,
                        forwarded=round(20 * forward_rate_at(a.curve, thr)))
            srv = replace(server(), arrivals=round(w.forwarded))
            thr = p.step(pp_view(0.5 * (k + 1), {"a": (a, thr, w)}, srv,
                                 options=options)).thresholds.get("a", thr)
        assert 40 * forward_rate_at(a.curve, thr) <= 24.0 * 1.05
        assert thr > 0.55

    def test_one_unlucky_device_is_not_shared_congestion(self) -> None:
        """Waiting requests and one device below target among many: only that device backs
        off; the fleet as a whole meets the target, so the others are not cut."""
        p = MultiTASCPlusPlusPolicy()
        fleet = {f"d{i}": (info(f"d{i}", "mid", 0.3), (20, 0), 10) for i in range(9)}
        fleet["bad"] = (info("bad", "mid", 0.3), (17, 3), 10)
        thr = drive(p, 1, fleet, server(queue_len=2, mean_queue_ms=40))
        assert thr["bad"] < 0.8
        assert all(thr[f"d{i}"] == pytest.approx(0.8) for i in range(9))

    def _options(self) -> dict[str, HeavyOption]:
        return {"cheap": HeavyOption("cheap", 0.90, capacity_sps=400.0),
                "base": HeavyOption("base", 0.95, capacity_sps=100.0)}

    def _fleet(self) -> dict[str, DeviceInfo]:
        cheap = linear_curve(0.6, 0.3)   # the cheap heavy model adds less accuracy
        base = linear_curve(0.6, 0.38)
        return {f"d{i}": info(f"d{i}", "low", 0.35, 0.8, {"cheap": cheap, "base": base})
                for i in range(10)}

    def _switching_run(self, rate_per_report: int, steps: int = 12,
                       params: dict[str, object] | None = None
                       ) -> tuple[MultiTASCPlusPlusPolicy, list[tuple[float, str]]]:
        p = MultiTASCPlusPlusPolicy({"switch_every_s": 1.0, "patience": 2, "cooldown_s": 0.0,
                                     **(params or {})})
        fleet = self._fleet()
        thr = {dev: p.join(i, 0.0) for dev, i in fleet.items()}
        heavy = "base"
        switches = []
        for k in range(steps):
            now = 0.5 * (k + 1)
            states = {dev: (i, thr[dev], replace(window(rate_per_report, 0, thr[dev]),
                                                 generated=rate_per_report))
                      for dev, i in fleet.items()}
            d = p.step(pp_view(now, states, heavy=heavy, options=self._options()))
            thr.update(d.thresholds)
            if d.heavy_model:
                switches.append((now, d.heavy_model))
                heavy = d.heavy_model
        return p, switches

    def test_switches_to_the_cheaper_model_under_high_load(self) -> None:
        """100 samples/s per device: the base model's capacity buys little; the cheap one's
        four times the capacity buys more accuracy."""
        p, switches = self._switching_run(rate_per_report=50)
        assert switches and switches[0][1] == "cheap"
        assert p.estimates["cheap"] > p.estimates["base"]

    def test_keeps_the_accurate_model_under_low_load(self) -> None:
        p, switches = self._switching_run(rate_per_report=2)
        assert switches == []
        assert p.estimates["base"] >= p.estimates["cheap"]

    def test_patience(self) -> None:
        """One check that favours another model is not enough when the running one copes:
        here the slower, more accurate model wins at low load, after `patience` checks."""
        options = {"cheap": HeavyOption("cheap", 0.90, capacity_sps=400.0),
                   "base": HeavyOption("base", 0.95, capacity_sps=100.0)}
        fleet = self._fleet()
        for patience, expect_switch in ((3, False), (2, True)):
            p = MultiTASCPlusPlusPolicy({"switch_every_s": 1.0, "patience": patience,
                                         "cooldown_s": 0.0})
            thr = {dev: p.join(i, 0.0) for dev, i in fleet.items()}
            switches = []
            for k in range(4):  # checks at 0.5 s and 1.5 s only
                states = {dev: (i, thr[dev], replace(window(1, 0, thr[dev]), generated=1))
                          for dev, i in fleet.items()}
                d = p.step(pp_view(0.5 * (k + 1), states, heavy="cheap", options=options))
                thr.update(d.thresholds)
                if d.heavy_model:
                    switches.append(d.heavy_model)
            assert (switches == ["base"]) is expect_switch, (patience, switches)

    def test_surge_switches_at_once(self) -> None:
        """The running model cannot carry the load: no waiting for patience or cooldown."""
        _, switches = self._switching_run(rate_per_report=50, steps=1,
                                          params={"patience": 5, "cooldown_s": 100.0})
        assert switches == [(0.5, "cheap")]

    def test_surge_switch_never_raises_a_threshold(self) -> None:
        p = MultiTASCPlusPlusPolicy({"patience": 5})
        fleet = self._fleet()
        thr = {dev: p.join(i, 0.0) for dev, i in fleet.items()}
        states = {dev: (i, thr[dev], replace(window(50, 0, thr[dev]), generated=50))
                  for dev, i in fleet.items()}
        d = p.step(pp_view(0.5, states, heavy="base", options=self._options()))
        assert d.heavy_model == "cheap" and d.note.startswith("surge")
        assert d.thresholds and all(t <= thr[dev] + 1e-9 for dev, t in d.thresholds.items())

    def test_without_switching_a_surge_is_met_by_thresholds_alone(self) -> None:
        """`switching = false`: the surge that makes the policy leave the base model at once
        keeps it on the base model, and the load-aware scaling cuts the thresholds instead."""
        p, switches = self._switching_run(rate_per_report=50, steps=4,
                                          params={"switching": False})
        assert switches == [] and p.estimates == {}
        p = MultiTASCPlusPlusPolicy({"switching": False})
        fleet = self._fleet()
        thr = {dev: p.join(i, 0.0) for dev, i in fleet.items()}
        states = {dev: (i, thr[dev], replace(window(50, 0, thr[dev]), generated=50))
                  for dev, i in fleet.items()}
        d = p.step(pp_view(0.5, states, heavy="base", options=self._options()))
        assert d.heavy_model is None
        assert d.thresholds and all(t < thr[dev] for dev, t in d.thresholds.items())

    def test_single_model_never_switches(self) -> None:
        p = MultiTASCPlusPlusPolicy({"switch_every_s": 0.0})
        p.join(WEAK_PP, 0.0)
        d = p.step(pp_view(1.0, {"w": (WEAK_PP, 0.8, window(20, 0))},
                           options={"base": HeavyOption("base", 0.95, 100.0)}))
        assert d.heavy_model is None


WEAK_PP = info("w", "low", 0.4)


class TestBaselines:
    def test_ends_of_the_cascade(self) -> None:
        assert ServerOnlyPolicy().join(WEAK_PP, 0.0) == 1.0
        assert DeviceOnlyPolicy().join(WEAK_PP, 0.0) == 0.0
        assert ServerOnlyPolicy().step(view(1.0, {}, server(queue_len=500))).thresholds == {}

    def test_uniform_aimd_moves_everyone_together(self) -> None:
        p = UniformAIMDPolicy({"start": 0.8})
        a, b = info("a", "low", 0.4), info("b", "high", 0.05)
        p.join(a, 0.0)
        p.join(b, 0.0)
        d = p.step(view(0.5, {"a": (a, 0.8, window(10, 10)), "b": (b, 0.8, window(20, 0))},
                        server()))
        assert d.thresholds == {"a": pytest.approx(0.72), "b": pytest.approx(0.72)}
        d = p.step(view(5.0, {"a": (a, 0.72, window(30, 0)), "b": (b, 0.72, window(30, 0))},
                        server()))
        assert d.thresholds == {"a": pytest.approx(0.73), "b": pytest.approx(0.73)}

    def test_registered(self) -> None:
        assert {"multitasc++", "server-only", "device-only", "uniform-aimd"} <= set(POLICIES)
        assert make_policy("multitasc++").name == "multitasc++"
