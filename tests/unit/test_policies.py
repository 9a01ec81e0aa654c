"""Scheduler policies as plain objects: explicit views in, thresholds out."""

from __future__ import annotations

import pytest

from cascade_testbed.server.scheduling import POLICIES, make_policy
from cascade_testbed.server.scheduling.base import (
    CurvePoint,
    DeviceState,
    PolicyError,
    ReportHorizon,
    WindowTotals,
    accuracy_optimal_threshold,
    check_params,
)
from cascade_testbed.server.scheduling.multitasc import MultiTASCPolicy, marginal_gain
from cascade_testbed.server.scheduling.static import StaticPolicy
from tests.helpers import device, linear_curve, server, view, window

WEAK = device("low-000", "low", gain=0.4, initial=0.8)
STRONG = device("high-001", "high", gain=0.05, initial=0.8)


def run_steps(policy: MultiTASCPolicy, steps: int, sat: dict[str, tuple[int, int]],
              srv: object, thresholds: dict[str, float] | None = None) -> dict[str, float]:
    """Drive `steps` control intervals with the same per-device outcomes; return thresholds."""
    infos = {d.device_id: d for d in (WEAK, STRONG)}
    thr = thresholds or {dev: policy.join(info, 0.0) for dev, info in infos.items()}
    for k in range(steps):
        v = view(0.5 * (k + 1), {dev: (infos[dev], thr[dev], window(*sat[dev], thr[dev]))
                                 for dev in infos}, srv)  # type: ignore[arg-type]
        thr.update(policy.step(v).thresholds)
    return thr


class TestStatic:
    def test_keeps_initial_thresholds(self) -> None:
        p = StaticPolicy()
        assert p.join(WEAK, 0.0) == 0.8
        v = view(1.0, {"low-000": (WEAK, 0.8, window(0, 50))}, server(queue_len=500))
        assert p.step(v).thresholds == {}

    def test_fixed_threshold_param(self) -> None:
        assert StaticPolicy({"threshold": 0.3}).join(WEAK, 0.0) == 0.3


class TestMultiTASC:
    def test_shared_overload_lowers_everyone_weak_devices_least(self) -> None:
        """A building queue means the server is the bottleneck: all shed, and the device whose
        forwarded samples gain least from the heavy model (strong light model) sheds most."""
        p = MultiTASCPolicy()
        thr = run_steps(p, 3, {"low-000": (16, 4), "high-001": (16, 4)},
                        server(queue_len=40, mean_queue_ms=60))
        assert p.congested
        assert thr["low-000"] < 0.8 and thr["high-001"] < 0.8
        assert 0.8 - thr["high-001"] > 0.8 - thr["low-000"]

    def test_a_device_whose_forwards_come_back_late_sheds_first_and_grows_last(self) -> None:
        """Two devices with the same model: the one whose forwarded samples miss the SLO (a
        slow link) is worth less to forward to, under congestion and with room alike."""
        slow, fast = device("low-slow", "low", gain=0.3), device("low-fast", "low", gain=0.3)
        for srv, congested in ((server(queue_len=40, mean_queue_ms=60), True),
                               (server(), False)):
            p = MultiTASCPolicy({"group_by": "device", "min_decided": 1000})
            thr = {d.device_id: p.join(d, 0.0) for d in (slow, fast)}
            for k in range(3):
                v = view(0.5 * (k + 1), {
                    "low-slow": (slow, thr["low-slow"], window(10, 10, thr["low-slow"])),
                    "low-fast": (fast, thr["low-fast"], window(20, 0, thr["low-fast"]))}, srv)
                thr.update(p.step(v).thresholds)
            if congested:  # both shed; the slow one more
                assert thr["low-slow"] < thr["low-fast"] < 0.8
            else:  # both grow; the fast one more
                assert thr["low-fast"] > thr["low-slow"] > 0.8

    def test_room_raises_everyone_weak_devices_most(self) -> None:
        p = MultiTASCPolicy()
        thr = run_steps(p, 3, {"low-000": (20, 0), "high-001": (20, 0)}, server(queue_len=0))
        assert not p.congested
        assert thr["low-000"] > 0.8 and thr["high-001"] > 0.8
        assert thr["low-000"] - 0.8 > thr["high-001"] - 0.8

    @pytest.mark.parametrize("srv", [server(queue_len=40, mean_queue_ms=60), server()],
                             ids=["congested", "room"])
    def test_blind_to_heterogeneity_every_device_moves_alike(self, srv: object) -> None:
        """`heterogeneity = false`: the same rule with one weight for all and the fleet pooled,
        so a weak and a strong device (and a late one) take the same steps from the same
        start, where the aware rule sets them apart."""
        blind = run_steps(MultiTASCPolicy({"heterogeneity": False}), 3,
                          {"low-000": (20, 0), "high-001": (15, 5)}, srv)
        aware = run_steps(MultiTASCPolicy(), 3, {"low-000": (20, 0), "high-001": (15, 5)}, srv)
        assert blind["low-000"] == pytest.approx(blind["high-001"]) != 0.8
        assert aware["low-000"] != pytest.approx(aware["high-001"])

    def test_blind_to_heterogeneity_pools_the_fleet(self) -> None:
        """One tier misses while the other has room: per tier, only the missing one sheds;
        pooled (35 of 40 met, under target), the whole fleet sheds together."""
        sat = {"low-000": (15, 5), "high-001": (20, 0)}
        aware = run_steps(MultiTASCPolicy(), 1, sat, server(queue_len=0, mean_queue_ms=1.0))
        blind = run_steps(MultiTASCPolicy({"heterogeneity": False}), 1, sat,
                          server(queue_len=0, mean_queue_ms=1.0))
        assert aware["low-000"] < 0.8 < aware["high-001"]
        assert blind["low-000"] == blind["high-001"] < 0.8

    def test_group_below_target_without_congestion_sheds_alone(self) -> None:
        """A tier that misses its SLO while the server is not waiting is limited by its own
        latency budget: only it forwards less; the others may still grow."""
        p = MultiTASCPolicy()
        thr = run_steps(p, 2, {"low-000": (10, 10), "high-001": (20, 0)},
                        server(queue_len=0, mean_queue_ms=1.0))
        assert not p.congested
        assert thr["low-000"] < 0.8 and thr["high-001"] > 0.8

    def test_below_target_never_grows(self) -> None:
        p = MultiTASCPolicy({"target": 0.9, "margin": 0.0})
        thr = run_steps(p, 4, {"low-000": (17, 3), "high-001": (20, 0)}, server())
        assert thr["low-000"] < 0.8

    def test_hold_inside_the_margin(self) -> None:
        """Between target and target + margin nothing moves (no dithering)."""
        p = MultiTASCPolicy({"target": 0.9, "margin": 0.08})
        thr = run_steps(p, 3, {"low-000": (19, 1), "high-001": (19, 1)}, server())
        assert thr == {"low-000": 0.8, "high-001": 0.8}

    def test_severity_scales_the_step(self) -> None:
        mild = run_steps(MultiTASCPolicy(), 1, {"low-000": (93, 7), "high-001": (100, 0)},
                         server())
        harsh = run_steps(MultiTASCPolicy(), 1, {"low-000": (40, 60), "high-001": (100, 0)},
                          server())
        assert 0.8 - harsh["low-000"] > 0.8 - mild["low-000"] > 0

    def test_too_few_samples_are_not_judged(self) -> None:
        p = MultiTASCPolicy({"min_decided": 50})
        thr = run_steps(p, 1, {"low-000": (0, 10), "high-001": (0, 10)}, server())
        assert thr["low-000"] > 0.8  # no verdict on 10 samples; the server has room

    def test_reports_are_not_counted_twice(self) -> None:
        """A report seen in one step is not added again when no new one arrives."""
        p = MultiTASCPolicy({"min_decided": 30})
        p.join(WEAK, 0.0)
        v = view(0.5, {"low-000": (WEAK, 0.8, window(20, 0))}, server())
        p.step(v)
        stale = view(1.0, {"low-000": (WEAK, 0.8, window(20, 0))}, server(), fresh=False)
        p.step(stale)
        assert p._group_satisfaction() == {}

    def test_horizon_forgets_old_reports(self) -> None:
        p = MultiTASCPolicy({"horizon_s": 1.0, "min_decided": 1})
        p.join(WEAK, 0.0)
        p.step(view(0.5, {"low-000": (WEAK, 0.8, window(0, 20))}, server()))
        p.step(view(2.0, {"low-000": (WEAK, 0.8, window(20, 0))}, server()))
        assert p._group_satisfaction() == {"low": 1.0}

    def test_clamped(self) -> None:
        p = MultiTASCPolicy({"min_threshold": 0.5, "max_threshold": 0.85, "down_step": 1.0})
        thr = run_steps(p, 5, {"low-000": (0, 20), "high-001": (0, 20)},
                        server(queue_len=100, mean_queue_ms=100))
        assert thr == {"low-000": 0.5, "high-001": 0.5}
        thr = run_steps(MultiTASCPolicy({"max_threshold": 0.85, "up_step": 1.0}), 3,
                        {"low-000": (20, 0), "high-001": (20, 0)}, server())
        assert thr == {"low-000": 0.85, "high-001": 0.85}

    def test_per_device_grouping(self) -> None:
        a = device("low-a", "low", gain=0.3)
        b = device("low-b", "low", gain=0.3)
        p = MultiTASCPolicy({"group_by": "device"})
        p.join(a, 0.0)
        p.join(b, 0.0)
        d = p.step(view(0.5, {"low-a": (a, 0.8, window(5, 15)), "low-b": (b, 0.8, window(20, 0))},
                        server()))
        assert d.thresholds["low-a"] < 0.8 < d.thresholds["low-b"]

    def test_leave_forgets_the_device(self) -> None:
        p = MultiTASCPolicy()
        p.join(WEAK, 0.0)
        p.leave("low-000", 1.0)
        assert p.step(view(1.5, {}, server())).thresholds == {}

    def test_start_at_max(self) -> None:
        assert MultiTASCPolicy({"start": "max", "max_threshold": 0.9}).join(WEAK, 0.0) == 0.9

    @pytest.mark.parametrize("params", [{"speed": 1}, {"target": "high"}, {"group_by": "x"}])
    def test_bad_params(self, params: dict[str, object]) -> None:
        with pytest.raises(PolicyError):
            MultiTASCPolicy(params)


class TestCurves:
    def test_marginal_gain_follows_the_curve(self) -> None:
        assert marginal_gain(linear_curve(0.5, 0.4), 0.5, 0.5) == pytest.approx(0.4)
        assert marginal_gain((), 0.5, 0.7) == pytest.approx(0.3)
        flat = tuple(CurvePoint(t / 10, 0.0, 0.9) for t in range(11))
        assert marginal_gain(flat, 0.5, 0.9) == pytest.approx(0.1)  # no usable slope

    def test_accuracy_optimal_threshold(self) -> None:
        curve = (CurvePoint(0.0, 0.0, 0.80), CurvePoint(0.5, 0.3, 0.93),
                 CurvePoint(0.8, 0.5, 0.945), CurvePoint(1.0, 1.0, 0.95))
        assert accuracy_optimal_threshold(curve, 0.01) == 0.8
        assert accuracy_optimal_threshold(curve, 0.05) == 0.5
        assert accuracy_optimal_threshold(()) == 1.0


class TestRegistry:
    def test_known(self) -> None:
        assert {"static", "multitasc"} <= set(POLICIES)
        assert make_policy("static").name == "static"

    def test_unknown(self) -> None:
        with pytest.raises(PolicyError, match="unknown policy"):
            make_policy("oracle")

    def test_check_params_types(self) -> None:
        assert check_params("p", {"a": 2}, {"a": 1.0}) == {"a": 2.0}
        with pytest.raises(PolicyError):
            check_params("p", {"a": True}, {"a": 1.0})


class TestReportHorizon:
    """The per-device memory both MultiTASC policies judge satisfaction and load by."""

    def test_sums_fresh_reports_within_the_horizon_and_drops_older_ones(self) -> None:
        horizon = ReportHorizon(horizon_s=1.0)
        for now, (met, missed) in [(0.0, (8, 2)), (0.5, (6, 4)), (1.2, (5, 5))]:
            horizon.observe(DeviceState(WEAK, 0.8, window(met, missed), fresh=True), now)
        totals = horizon.totals()  # the report at 0.0 is older than 1.2 - 1.0
        assert (totals.slo_met, totals.slo_missed) == (11, 9)
        assert (totals.generated, totals.forwarded, totals.window_s) == (20, 10, 1.0)

    def test_a_report_seen_before_is_not_counted_twice(self) -> None:
        horizon = ReportHorizon(horizon_s=5.0)
        horizon.observe(DeviceState(WEAK, 0.8, window(9, 1), fresh=True), 0.0)
        horizon.observe(DeviceState(WEAK, 0.8, window(9, 1), fresh=False), 0.5)
        horizon.observe(DeviceState(WEAK, 0.8, None, fresh=True), 0.6)
        assert horizon.totals().slo_met == 9

    def test_an_empty_horizon_sums_to_nothing(self) -> None:
        horizon = ReportHorizon(horizon_s=1.0)
        horizon.observe(DeviceState(WEAK, 0.8, window(3, 1), fresh=True), 0.0)
        horizon.observe(DeviceState(WEAK, 0.8, None), 5.0)
        assert horizon.totals() == WindowTotals()
