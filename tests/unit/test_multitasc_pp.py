"""MultiTASC++, the capacity allocator behind its model switching, and the baselines."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from server.scheduling import POLICIES, make_policy
from server.scheduling.allocation import Demand, allocate, upper_hull
from server.scheduling.base import (
    CurvePoint,
    DeviceInfo,
    DeviceWindow,
    HeavyOption,
    SystemView,
)
from server.scheduling.baselines import DeviceOnlyPolicy, ServerOnlyPolicy, UniformAIMDPolicy
from server.scheduling.multitasc_pp import MultiTASCPlusPlusPolicy
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
        """One check that favours another model is not enough."""
        _, switches = self._switching_run(rate_per_report=50, steps=3,
                                          params={"patience": 3})
        assert switches == []

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
