"""Loop-lag histograms: bucketing, merging devices, nearest-rank percentiles, and the probe."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from cascade_testbed.common.looplag import (
    BUCKET_US,
    LagHistogram,
    lag_summary,
    merge,
    percentile_ms,
)
from cascade_testbed.emulated_devices.loop_probe import TimerLag, precise_loop


def hist_of(lags_ms: list[float]) -> LagHistogram:
    h = LagHistogram()
    for x in lags_ms:
        h.add(x / 1e3)
    return h


def test_percentiles_are_bucket_upper_edges_capped_at_max() -> None:
    h = hist_of([0.01] * 98 + [1.23, 7.0])
    assert percentile_ms(h, 50) == BUCKET_US / 1e3
    assert percentile_ms(h, 99) == 1.25  # 1.23 ms lies in [1.20, 1.25)
    assert percentile_ms(h, 100) == 7.0  # the top bucket's edge would be 7.05: capped
    assert lag_summary(h)["max"] == 7.0 and lag_summary(h)["n"] == 100


def test_early_firing_counts_as_on_time_and_empty_is_none() -> None:
    h = hist_of([-0.5])
    assert h.counts == {0: 1} and h.max_s == 0.0
    assert lag_summary(LagHistogram()) == {"p50": None, "p99": None, "p99.9": None,
                                           "max": None, "n": 0}


def test_merge_of_json_round_trips_equals_one_histogram() -> None:
    a, b = [0.1, 0.3, 2.5], [0.05, 9.9]
    parts = [json.loads(json.dumps(hist_of(x).to_dict())) for x in (a, b)]
    merged, whole = merge([*parts, None]), hist_of(a + b)
    assert merged.counts == whole.counts and merged.n == 5
    assert merged.max_s == pytest.approx(whole.max_s)


def test_merge_refuses_other_bucket_widths() -> None:
    with pytest.raises(ValueError):
        merge([{"bucket_us": 100, "n": 1, "max_ms": 0.1, "counts": {"0": 1}}])


def test_timers_record_how_late_a_busy_loop_runs_them() -> None:
    """A timer behind a blocked loop is recorded as late (at least by the block: timing
    claims about a shared machine are left to scripts/bench_density.py)."""
    loop = precise_loop()
    try:
        timers = TimerLag(loop)
        fired: list[str] = []
        now = loop.time()
        timers.call_at(now + 0.005, fired.append, "idle")
        loop.run_until_complete(asyncio.sleep(0.02))
        timers.call_at(loop.time() + 0.002, fired.append, "blocked")
        loop.call_soon(time.sleep, 0.02)  # the loop is busy when the timer is due
        loop.run_until_complete(asyncio.sleep(0.04))
    finally:
        loop.close()
    assert fired == ["idle", "blocked"] and timers.hist.n == 2
    assert timers.hist.max_s >= 0.015
