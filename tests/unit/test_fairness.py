"""Per-device request budgets and the frame pace (server/fairness.py), with explicit times."""

from __future__ import annotations

import pytest

from cascade_testbed.common.config import FairnessConfig, ScenarioError
from cascade_testbed.server.fairness import (
    MAX_TRACKED,
    OTHERS,
    RateLimits,
    TokenBucket,
    admitted_rate,
    frame_bucket,
    request_bucket,
)


class TestTokenBucket:
    def test_starts_full_then_refills_at_its_rate(self) -> None:
        b = TokenBucket(rate=10.0, depth=3.0)
        assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
        assert not b.take(0.05)  # half a token
        assert b.take(0.1)
        assert not b.take(0.1)
        assert [b.take(10.0) for _ in range(4)] == [True, True, True, False]  # capped at depth

    def test_time_going_backwards_adds_nothing(self) -> None:
        b = TokenBucket(rate=10.0, depth=1.0)
        assert b.take(5.0)
        assert not b.take(4.0)
        assert not b.take(5.0)  # the clock's return to 5.0 refills nothing either
        assert b.take(5.25)

    def test_wait_books_debt_so_a_burst_is_paced_at_the_rate(self) -> None:
        b = TokenBucket(rate=100.0, depth=2.0)
        waits = [b.wait_s(0.0) for _ in range(6)]
        assert waits[:2] == [0.0, 0.0]
        assert waits[2:] == pytest.approx([0.01, 0.02, 0.03, 0.04])
        assert b.wait_s(0.05) == pytest.approx(0.0)  # the debt was paid off by then: 0.05-0.04

    @pytest.mark.parametrize("rate,depth", [(0.0, 1.0), (-1.0, 5.0), (1.0, 0.5)])
    def test_refuses_nonsense(self, rate: float, depth: float) -> None:
        with pytest.raises(ValueError):
            TokenBucket(rate, depth)


class TestBudgets:
    def test_admitted_rate_is_the_declared_rate_with_headroom_capped_by_frames(self) -> None:
        cfg = FairnessConfig(headroom=2.0, undeclared_rate_sps=10.0, max_frames_per_s=500.0)
        assert admitted_rate(cfg, 30.0) == 60.0
        assert admitted_rate(cfg, 0.0) == 20.0  # undeclared: the default
        assert admitted_rate(cfg, 1e6) == 500.0  # no more than its frames

    def test_bucket_depth_is_burst_seconds_of_the_rate_at_least_min_burst(self) -> None:
        cfg = FairnessConfig(headroom=2.0, burst_s=2.0, min_burst=32)
        assert request_bucket(cfg, 100.0).depth == 400.0
        assert request_bucket(cfg, 1.0).depth == 32.0
        assert frame_bucket(FairnessConfig(max_frames_per_s=50.0)).depth == 50.0

    def test_a_device_over_its_budget_is_refused_and_counted(self) -> None:
        limits = RateLimits(FairnessConfig(headroom=2.0, burst_s=1.0, min_burst=1))
        limits.join("cam", 5.0)  # 10/s, a bucket of 10
        admitted = sum(limits.admit("cam", 0.0) for _ in range(25))
        assert admitted == 10 and limits.limited == {"cam": 15}
        assert limits.admit("cam", 0.1)  # one token back after 0.1 s
        limits.leave("cam")
        assert limits.admit("cam", 0.1)  # gone: no budget (the queue's share still applies)
        assert limits.limited == {"cam": 15}  # the count outlives the connection

    def test_callers_without_a_budget_and_a_disabled_rule_pass(self) -> None:
        limits = RateLimits(FairnessConfig(enabled=False))
        limits.join("cam", 1.0)
        assert all(limits.admit("cam", 0.0) for _ in range(1000))
        assert RateLimits(FairnessConfig()).admit("http", 0.0)

    def test_counts_by_name_are_bounded(self) -> None:
        limits = RateLimits(FairnessConfig(min_burst=1, burst_s=0.001, headroom=1.0,
                                           undeclared_rate_sps=1.0))
        for i in range(MAX_TRACKED + 10):
            limits.join(f"d{i}", 0.0)
            limits.admit(f"d{i}", 0.0)
            limits.admit(f"d{i}", 0.0)
            limits.leave(f"d{i}")
        assert len(limits.limited) == MAX_TRACKED + 1 and limits.limited[OTHERS] == 10


@pytest.mark.parametrize("field,value", [("headroom", 0.5), ("burst_s", 0.0), ("min_burst", 0),
                                         ("undeclared_rate_sps", 0.0),
                                         ("max_frames_per_s", 0.5)])
def test_config_refuses_values_that_would_lock_devices_out(field: str, value: float) -> None:
    with pytest.raises(ScenarioError):
        FairnessConfig(**{field: value})
