"""Pure device-side pieces: arrival schedules, forwarding rules, compute and link emulation."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_testbed.common.config import LinkSpec
from cascade_testbed.emulated_devices.arrivals import arrival_times
from cascade_testbed.emulated_devices.emulation import ComputeProfile, Link, pad
from cascade_testbed.emulated_devices.forwarding import RULES, confidence_rule, get_rule


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


class TestArrivals:
    @pytest.mark.parametrize("kind", ["constant", "poisson"])
    def test_within_horizon_sorted_and_seeded(self, kind: str) -> None:
        a = arrival_times(kind, 10.0, 30.0, rng(1))  # type: ignore[arg-type]
        assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 30.0
        assert np.array_equal(a, arrival_times(kind, 10.0, 30.0, rng(1)))  # type: ignore[arg-type]

    def test_constant_rate_is_exact(self) -> None:
        a = arrival_times("constant", 10.0, 30.0, rng())
        assert len(a) == 300
        assert np.allclose(np.diff(a), 0.1)

    def test_poisson_rate_and_dispersion(self) -> None:
        """Mean rate within 3% over a long horizon; gaps have CV close to 1 (exponential)."""
        a = arrival_times("poisson", 20.0, 2000.0, rng(2))
        assert abs(len(a) / 2000.0 - 20.0) < 0.6
        gaps = np.diff(a)
        assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05

    def test_poisson_extends_for_rare_short_draws(self) -> None:
        a = arrival_times("poisson", 0.5, 200.0, rng(3))
        assert a.max() < 200.0 and len(a) > 50

    def test_unknown_kind(self) -> None:
        with pytest.raises(ValueError):
            arrival_times("bursty", 1.0, 1.0, rng())  # type: ignore[arg-type]

    def test_degenerate(self) -> None:
        assert len(arrival_times("poisson", 0.0, 10.0, rng())) == 0


class TestBurstyAndTrace:
    def test_onoff_keeps_the_mean_rate_and_is_bursty(self) -> None:
        """Mean rate as asked; counts per second vary far more than Poisson's (dispersion
        index well above 1)."""
        a = arrival_times("onoff", 10.0, 4000.0, rng(4), burst_on_s=1.0, burst_off_s=3.0)
        assert abs(len(a) / 4000.0 - 10.0) < 1.0
        counts = np.bincount(a.astype(int), minlength=4000)
        assert counts.var() / counts.mean() > 5
        poisson = np.bincount(arrival_times("poisson", 10.0, 4000.0, rng(4)).astype(int),
                              minlength=4000)
        assert poisson.var() / poisson.mean() < 1.3

    def test_onoff_without_silences_is_poisson(self) -> None:
        a = arrival_times("onoff", 10.0, 100.0, rng(5), burst_off_s=0.0)
        b = arrival_times("poisson", 10.0, 100.0, rng(5))
        assert np.array_equal(a, b)

    def test_trace_follows_the_rate_from_the_offset(self) -> None:
        trace = [(0.0, 5.0), (100.0, 50.0), (200.0, 0.0)]
        a = arrival_times("trace", 0.0, 300.0, rng(6), trace=trace)
        assert abs(np.sum(a < 100) / 100 - 5.0) < 1.0
        assert abs(np.sum((a >= 100) & (a < 200)) / 100 - 50.0) < 3.0
        assert np.sum(a >= 200) == 0
        late = arrival_times("trace", 0.0, 100.0, rng(6), trace=trace, offset_s=150.0)
        assert abs(np.sum(late < 50) / 50 - 50.0) < 4.0 and np.sum(late >= 50) == 0
        assert np.all(np.diff(a) >= 0)

    def test_trace_needs_points(self) -> None:
        with pytest.raises(ValueError, match="trace"):
            arrival_times("trace", 1.0, 10.0, rng())


class TestForwarding:
    def test_confidence_rule(self) -> None:
        p = np.array([0.7, 0.2, 0.1])
        assert confidence_rule(p, 0.8) and not confidence_rule(p, 0.7)

    @pytest.mark.parametrize("name", sorted(RULES))
    def test_higher_threshold_never_forwards_less(self, name: str) -> None:
        """Monotone in the threshold, so every scheduler can move any rule the same way."""
        rule = get_rule(name)
        g = rng(5)
        for _ in range(200):
            p = g.dirichlet(np.ones(10))
            decisions = [rule(p, t) for t in np.linspace(0, 1, 21)]
            assert decisions == sorted(decisions)
        assert not rule(np.eye(10)[0], 0.0)
        assert rule(np.full(10, 0.1), 1.0)

    def test_unknown_rule(self) -> None:
        with pytest.raises(ValueError, match="unknown forwarding rule"):
            get_rule("vibes")


class TestEmulation:
    def test_pad_counts_overrun(self) -> None:
        ok = pad(1.0, 0.002, 0.010)
        late = pad(1.0, 0.020, 0.010)
        assert ok.end == pytest.approx(1.010) and not ok.overrun
        assert late.end == pytest.approx(1.020) and late.overrun

    def test_compute_profile_median(self) -> None:
        prof = ComputeProfile(20.0, 0.2)
        g = rng(4)
        samples = np.array([prof.sample_s(g) for _ in range(4000)])
        assert np.median(samples) == pytest.approx(0.020, rel=0.03)
        assert ComputeProfile(20.0, 0.0).sample_s(g) == pytest.approx(0.020)

    def test_link_delay_and_bandwidth(self) -> None:
        """Delivery = start + size/bandwidth + delay; a burst serialises behind itself."""
        link = Link(LinkSpec(delay_ms=5.0, jitter_ms=0.0, bandwidth_mbps=8.0), rng())
        first = link.transmit(0.0, 1000)  # 1 ms on the wire at 8 Mbit/s
        second = link.transmit(0.0, 1000)
        assert first == pytest.approx(0.006)
        assert second == pytest.approx(0.007)

    def test_link_is_fifo_under_jitter(self) -> None:
        link = Link(LinkSpec(delay_ms=5.0, jitter_ms=4.0, bandwidth_mbps=100.0), rng(9))
        times = [link.transmit(i * 0.0005, 100) for i in range(500)]
        assert times == sorted(times)
        assert all(t >= i * 0.0005 for i, t in enumerate(times))

    def test_link_reset(self) -> None:
        link = Link(LinkSpec(delay_ms=0.0, jitter_ms=0.0, bandwidth_mbps=0.001), rng())
        link.transmit(0.0, 1000)
        link.reset()
        assert link.transmit(0.0, 0) == 0.0
