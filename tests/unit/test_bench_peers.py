"""bench_peers' pure parts (scripts/peers/stats.py): arrival plans, the ladder, reading one
curve at another's p99 or load, batch summaries from replies, and the last line's JSON. No
peer, server or network: the module is imported by path."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

STATS = Path(__file__).resolve().parents[2] / "scripts" / "peers" / "stats.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers_stats", STATS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_peers_stats", module)
    spec.loader.exec_module(module)
    return module


S = load()


def pt(offered: float, p99: float, *, achieved: float | None = None, errors: int = 0,
       sent: int = 1000) -> S.Point:
    return S.Point(offered, offered, offered if achieved is None else achieved, p99 / 2, p99,
                   errors, sent)


# ---- arrival plans and the ladder -------------------------------------------------------------

def test_poisson_offsets_are_seeded_sorted_within_the_window_and_near_the_rate() -> None:
    a = S.poisson_offsets(500.0, 4.0, seed=3)
    assert a == S.poisson_offsets(500.0, 4.0, seed=3)
    assert a != S.poisson_offsets(500.0, 4.0, seed=4)
    assert a == sorted(a) and a[0] >= 0 and a[-1] < 4.0
    assert abs(len(a) - 2000) < 200  # ~4.5 sigma


def test_a_ramp_rises_and_a_burst_is_one_instant() -> None:
    r = S.ramp_offsets(10.0, 150.0, 4.0, seed=1)
    first, last = sum(t < 1 for t in r), sum(t >= 3 for t in r)
    assert last > 3 * first and abs(len(r) - 320) < 80
    assert S.burst_offsets(96) == [0.2] * 96


def test_round_robin_split_keeps_the_whole_trace() -> None:
    trace = S.poisson_offsets(100.0, 2.0, seed=0)
    parts = S.split_round_robin(trace, 3)
    assert sorted(x for p in parts for x in p) == trace
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_ladder_is_geometric_and_capped() -> None:
    assert S.ladder_rates(40, 2, 320) == [40, 80, 160, 320]
    assert S.ladder_rates(40, 1.6, 100) == pytest.approx([40, 64])
    with pytest.raises(ValueError):
        S.ladder_rates(40, 1.0, 100)


def test_step_seconds_gathers_enough_requests_within_a_cap() -> None:
    assert S.step_seconds(1000, 2.0, 300) == 2.0
    assert S.step_seconds(100, 2.0, 300) == 3.0
    assert S.step_seconds(10, 2.0, 300) == 8.0  # 4 x 2 s at most


def test_refine_bisects_between_the_last_good_and_the_next_step() -> None:
    assert S.refine_rate([100, 200], [100, 200, 400]) == pytest.approx(math.sqrt(200 * 400))
    assert S.refine_rate([], [100]) is None
    assert S.refine_rate([100], [100]) is None  # nothing above
    assert S.refine_rate([100], [100, 102]) is None  # already within 3 %


# ---- points and reading curves ------------------------------------------------------------

def test_sustained_needs_few_errors_and_the_rate_actually_sent() -> None:
    assert pt(100, 10).sustained
    assert not pt(100, 10, errors=11).sustained  # 1.1 % of 1000
    assert not pt(100, 10, achieved=94).sustained


def test_the_median_repeat_is_the_equal_load_figure() -> None:
    a, b, c = pt(100, 10), pt(100, 300), pt(100, 20)
    assert S.median_point([a, b, c]) is c
    assert S.median_point([a, b]) is a
    with pytest.raises(ValueError):
        S.median_point([])


def test_throughput_at_p99_interpolates_between_the_steps_around_the_budget() -> None:
    curve = [pt(100, 10), pt(200, 20), pt(400, 60), pt(800, 900, achieved=500)]
    assert S.throughput_at_p99(curve, 20) == 200  # exactly a step
    assert S.throughput_at_p99(curve, 40) == pytest.approx(300)  # halfway 20 -> 60 ms
    assert S.throughput_at_p99(curve, 1000) == 400  # the unsustained step is not read
    assert S.throughput_at_p99(curve, 5) is None
    assert S.best_within(curve, 40) is curve[1]


def test_p99_at_load_is_log_linear_between_sustained_steps() -> None:
    curve = [pt(100, 10), pt(400, 40), pt(800, 900, achieved=500)]
    assert S.p99_at_load(curve, 250) == pytest.approx(20.0)  # geometric middle of 10, 40
    assert S.p99_at_load(curve, 50) == 10  # below the curve: its lowest step
    assert S.p99_at_load(curve, 500) is None  # past its last sustained step


def test_peer_figures_read_ours_at_the_peers_p99_and_load() -> None:
    ours = [pt(100, 5), pt(400, 10), pt(800, 30), pt(1600, 2000, achieved=900)]
    peer = [pt(100, 20), pt(200, 50), pt(300, 900, achieved=250)]
    f = S.peer_figures(ours, peer, pt(160, 40), pt(160, 8))
    assert f["peak_rps"] == 200 and f["p99_at_peak_ms"] == 50
    assert f["ours_rps_at_that_p99"] == 800  # 50 ms is past ours' last sustained step
    assert f["throughput_ratio_at_equal_p99"] == 4.0
    assert f["p99_ratio_at_equal_load"] == 5.0
    read = S.peer_figures(ours, peer, pt(160, 40), None)  # ours read off its curve
    assert read["ours_p99_at_equal_load_ms"] == pytest.approx(5.0 * 2 ** (60 / 300), abs=0.01)
    dead = S.peer_figures(ours, [pt(100, 9000, errors=500)], None, None)
    assert dead["throughput_ratio_at_equal_p99"] is None and "reason" in dead


# ---- batching semantics ---------------------------------------------------------------------

def test_batch_summary_counts_batches_from_what_each_reply_says() -> None:
    # a burst of 96 cut as 32, 32, 31, 1: every request reports its own batch's size
    sizes = [32] * 64 + [31] * 31 + [1]
    s = S.batch_summary(sizes, [1000.0] * 96, [5.0] * 96, [2000.0] * 96)
    assert s.batches == 4 and s.size_counts == {1: 1, 31: 1, 32: 2}
    assert s.mean_batch == 24.0 and s.max_batch == 32
    assert s.wait_p50_ms == 1.0 and s.idle_p50_ms == pytest.approx(3.0)
    assert S.size_histogram(s.size_counts) == "1:1 16-31:1 32+:2"


def test_batch_summary_of_nothing_is_empty_not_an_error() -> None:
    s = S.batch_summary([], [], [])
    assert s.requests == 0 and s.batches == 0 and math.isinf(s.wait_p50_ms)


# ---- the last line --------------------------------------------------------------------------

def test_headline_names_every_peer_that_ran_and_why_the_others_did_not() -> None:
    figs = {"ray": {"throughput_ratio_at_equal_p99": 12.5, "p99_ratio_at_equal_load": 30.0},
            "litserve": {"throughput_ratio_at_equal_p99": 2.7, "p99_ratio_at_equal_load": 10}}
    line = S.headline(figs, {"pytriton": "failed on this host: no libpython"},
                      {"ours_peak_rps": 844.0})
    assert line["ray_throughput_ratio_at_equal_p99"] == 12.5
    assert line["litserve_p99_ratio_at_equal_load"] == 10
    assert line["pytriton_not_run"].startswith("failed")
    assert "pytriton_throughput_ratio_at_equal_p99" not in line
    assert json.loads(json.dumps(S.rounded({**line, "x": math.inf, "y": [1.234567]}))) == \
        {**line, "x": None, "y": [1.23]}
