"""The claims' statistics, metrics, checks and verdicts on known inputs, and the runner's
bookkeeping (attempts, exclusions, provenance) on run folders written by hand (no runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cascade_testbed.testbed.claims.catalog import (
    CLAIMS,
    Catalog,
    Claim,
    answered_by_share,
    both,
    cost_meeting_targets,
    equal_accuracy,
    equal_slo,
    field_at,
    median_saving,
    meets_targets,
    metric_named,
    same_reply_timeout,
    saving_at,
    tail_slo,
    to_completion,
    worst,
)
from cascade_testbed.testbed.claims.jobs import (
    MAX_ATTEMPTS,
    Job,
    attempts,
    run_all,
    todo,
    unfaithful,
)
from cascade_testbed.testbed.claims.runner import (
    Plan,
    claims_json,
    claims_markdown,
    judge,
    write_results,
)
from cascade_testbed.testbed.claims.stats import (
    SEED_BUDGET,
    Effect,
    at_paper_number,
    holds,
    holm,
    interval,
    p_value,
    paired_effects,
    seeds_needed,
)
from cascade_testbed.testbed.sweep import Reuse

T_975_2DF = 4.302652729911275
"""Student t 97.5 % quantile with 2 degrees of freedom (three seeds)."""
FAITHFUL = {"compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": 2.0}}


class TestIntervals:
    def test_a_difference_interval_is_the_t_interval_of_the_paired_differences(self) -> None:
        e = interval(paired_effects([0.96, 0.95, 0.97], [0.95, 0.93, 0.94], "difference",
                                    scale=100), "difference")
        assert e.per_seed == pytest.approx((1.0, 2.0, 3.0))
        half = T_975_2DF * 1.0 / math.sqrt(3)
        assert (e.measured, e.low, e.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
        assert e.method == "t"

    def test_a_ratio_interval_is_taken_on_logarithms(self) -> None:
        e = interval([2.0, 4.0, 8.0], "ratio")
        logs = [math.log(2), math.log(4), math.log(8)]
        half = T_975_2DF * math.log(2) / math.sqrt(3)
        assert e.measured == pytest.approx(4.0)  # the geometric mean
        assert (e.low, e.high) == pytest.approx((math.exp(sum(logs) / 3 - half),
                                                 math.exp(sum(logs) / 3 + half)))
        same = interval([3.0, 3.0, 3.0], "ratio")
        assert (same.measured, same.low, same.high) == pytest.approx((3.0, 3.0, 3.0))

    def test_inputs_that_cannot_make_an_interval_are_refused(self) -> None:
        with pytest.raises(ValueError, match="same"):
            paired_effects([1.0, 2.0], [1.0], "difference")
        with pytest.raises(ValueError, match=">= 0"):
            paired_effects([1.0, -1.0], [1.0, 1.0], "ratio")
        with pytest.raises(ValueError, match="at least 2"):
            interval([1.0], "difference")

    def test_a_ratio_over_zero_is_infinite_and_judged_on_the_range(self) -> None:
        effects = paired_effects([0.5, 0.4, 0.75], [0.0, 0.0, 0.25], "ratio")
        assert effects == (math.inf, math.inf, 3.0)
        assert paired_effects([0.0], [0.0], "ratio") == (1.0,)  # both arms alike
        assert paired_effects([0.0], [2.0], "ratio") == (0.0,)
        e = interval(effects, "ratio")
        assert e.method == "range" and (e.low, e.measured, e.high) == (3.0, math.inf, math.inf)
        assert holds(e, "ratio", "higher") and not holds(e, "ratio", "lower")
        assert p_value(e, "ratio", "higher") == pytest.approx(0.125)  # 3 of 3 seeds: 0.5 ** 3
        mixed = interval([0.0, 2.0, math.inf], "ratio")
        assert (mixed.low, mixed.high) == (0.0, math.inf) and not holds(mixed, "ratio", "higher")


class TestVerdicts:
    @pytest.mark.parametrize("low,high,kind,direction,expected", [
        (0.5, 3.0, "difference", "higher", True),
        (-0.1, 3.0, "difference", "higher", False),   # the interval touches no effect
        (-3.0, -0.5, "difference", "lower", True),
        (1.2, 2.0, "ratio", "higher", True),
        (0.9, 2.0, "ratio", "higher", False),
        (0.5, 0.9, "ratio", "lower", True),
        (0.0, 0.0, "difference", "higher", False),    # exactly no effect is not an effect
    ])
    def test_the_whole_interval_must_lie_on_the_papers_side(
            self, low: float, high: float, kind: str, direction: str, expected: bool) -> None:
        effect = Effect((low + high) / 2, low, high, (low, high))
        assert holds(effect, kind, direction) is expected  # type: ignore[arg-type]

    def test_a_non_inferiority_claim_must_exclude_its_margin(self) -> None:
        worse_by_half = Effect(-0.5, -0.9, -0.1, (-0.5, -0.5))
        assert holds(worse_by_half, "difference", "higher", null=-1.0)
        assert not holds(worse_by_half, "difference", "higher")
        assert not holds(Effect(-0.5, -1.2, 0.2, ()), "difference", "higher", null=-1.0)

    def test_reaching_the_papers_number_is_judged_on_the_mean(self) -> None:
        assert at_paper_number(Effect(21.0, 5.0, 30.0, ()), 20.0, "higher") is True
        assert at_paper_number(Effect(1.4, 1.2, 1.6, ()), 14.0, "higher") is False
        assert at_paper_number(Effect(1.4, 1.2, 1.6, ()), None, "higher") is None

    @pytest.mark.parametrize("per_seed,kind,direction,null", [
        ((1.0, 2.0, 3.0), "difference", "higher", None),
        ((0.1, 0.2, 0.05, 0.3), "difference", "higher", None),
        ((-0.5, -0.2, -0.4), "difference", "higher", -1.0),
        ((1.5, 1.6, 1.7), "ratio", "higher", None),
        ((0.8, 0.9, 0.85), "ratio", "lower", None),
        ((1.2, 0.8, 1.0), "ratio", "higher", None),
    ])
    def test_the_p_value_agrees_with_the_interval(self, per_seed: tuple[float, ...], kind: str,
                                                  direction: str, null: float | None) -> None:
        e = interval(per_seed, kind)  # type: ignore[arg-type]
        p = p_value(e, kind, direction, null)  # type: ignore[arg-type]
        assert (p < 0.025) is holds(e, kind, direction, null)  # type: ignore[arg-type]
        assert 0.0 <= p <= 1.0

    def test_holm_rejects_step_down_from_the_smallest_p(self) -> None:
        # m = 4, alpha 0.025: thresholds 0.00625, 0.00833, 0.0125, 0.025 by rank.
        assert holm([0.001, 0.02, 0.008, 0.5]) == [True, False, True, False]
        assert holm([0.007, 0.001]) == [True, True]   # 0.001 <= .0125, then 0.007 <= .025
        assert holm([0.02, 0.02]) == [False, False]   # 0.02 > 0.0125 stops at once
        assert holm([]) == []

    def test_seeds_needed_grow_as_the_effect_shrinks_against_its_spread(self) -> None:
        big = seeds_needed([5.0, 6.0, 7.0], "difference", "higher")
        assert big.needed == 3 and big.seeds == 5  # never fewer than the floor
        small = seeds_needed([0.5, 1.5, 1.0], "difference", "higher")
        assert small.needed is not None and 5 <= small.needed <= SEED_BUDGET
        assert small.needed > seeds_needed([0.9, 1.1, 1.0], "difference", "higher").seeds - 1
        none = seeds_needed([-1.0, 0.5, -0.2], "difference", "higher")
        assert none.needed is None and none.seeds == SEED_BUDGET  # no effect in the pilot
        assert seeds_needed([-0.5, -0.4, -0.6], "difference", "higher", null=-1.0).needed == 3
        assert seeds_needed([math.inf, 2.0], "ratio", "higher").needed is None


def _summary(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"accuracy": 0.9, "slo_satisfaction": 0.95, "slo_ms": 150,
                            "latency_ms": {"p95": 100.0}, "duration_s": 20.0,
                            "samples": {"generated": 1000, "fallback": 0, "rejected": 0,
                                        "lost": 0}, "reply_timeout_ms": 150.0}
    base.update(fields)
    return base


class TestMetricsAndChecks:
    def test_fields_worst_and_named_objectives(self) -> None:
        arm = {"devices=40": _summary(slo_satisfaction=0.97),
               "devices=100": _summary(slo_satisfaction=0.93)}
        assert field_at("slo_satisfaction", "devices=100")(arm) == 0.93
        assert worst("slo_satisfaction")(arm) == 0.93
        assert metric_named("slo_satisfaction")(arm) == pytest.approx(0.95)  # mean of points
        assert metric_named("latency_ms.p95")({"": _summary()}) == 100.0
        assert metric_named("cost_meeting_targets") is cost_meeting_targets

    def test_tail_slo_is_the_share_of_devices_whose_p95_meets_the_slo(self) -> None:
        devices = [{"latency_ms": {"p95": p}} for p in (100.0, 150.0, 151.0, None)]
        assert tail_slo({"": _summary(per_device=devices)}) == 0.5

    def test_cloud_share_per_generated_sample(self) -> None:
        share = answered_by_share("xl")
        assert share({"": _summary(answered_by={"xl": 50, "lite": 950})}) == 0.05
        assert share({"": _summary(answered_by={})}) == 0.0
        with pytest.raises(KeyError, match="one point"):
            share({"a": _summary(), "b": _summary()})

    def test_a_system_meets_its_targets_with_p95_in_the_slo_and_accuracy_at_target(
            self) -> None:
        def run(p95: float, acc: float, cost: float = 10.0) -> dict[str, Any]:
            return _summary(latency_ms={"p95": p95}, accuracy=acc, slo_ms=100,
                            policy_params={"min_accuracy": 0.95},
                            cost={"per_1000_samples": cost})
        assert meets_targets(run(100.0, 0.95)) and not meets_targets(run(100.1, 0.96))
        assert not meets_targets(run(50.0, 0.949))
        assert meets_targets(_summary())  # no target: the SLO alone
        assert cost_meeting_targets({"a": run(90, 0.96, 10.0), "b": run(90, 0.96, 20.0)}) == 15
        assert cost_meeting_targets({"a": run(90, 0.96), "b": run(120, 0.96)}) == math.inf

    def test_the_saving_over_the_space_is_the_median_of_the_cheapest_baseline_that_meets(
            self) -> None:
        def run(cost: float, ok: bool = True) -> dict[str, Any]:
            return _summary(latency_ms={"p95": 90.0 if ok else 500.0}, slo_ms=100,
                            cost={"per_1000_samples": cost})
        arms = {"cs": {"p1": run(10), "p2": run(10), "p3": run(10, ok=False),
                       "p4": run(10), "p5": run(10, ok=False)},
                "a": {"p1": run(30), "p2": run(15, ok=False), "p3": run(20),
                      "p4": run(5, ok=False), "p5": run(1, ok=False)},
                "b": {"p1": run(25), "p2": run(40), "p3": run(30), "p4": run(9, ok=False),
                      "p5": run(1, ok=False)}}
        at = {p: saving_at("cs", ("a", "b"), p)(arms) for p in arms["cs"]}
        assert at == {"p1": 2.5, "p2": 4.0, "p3": 0.0, "p4": math.inf, "p5": None}
        assert median_saving("cs", ("a", "b"))(arms) == pytest.approx(3.25)
        with pytest.raises(ValueError, match="no system met"):
            median_saving("cs", ("a",))({"cs": {"p": run(1, False)}, "a": {"p": run(1, False)}})

    def test_equal_accuracy_with_its_slo_and_clean_conditions(self) -> None:
        check = equal_accuracy(0.005, slo=True, clean=True)
        ok = {"": _summary(accuracy=0.900)}
        assert check({"": _summary(accuracy=0.8951)}, ok) is None
        why = check({"": _summary(accuracy=0.894)}, ok)
        assert why is not None and "more than 0.005 below" in why
        why = check({"": _summary(latency_ms={"p95": 151.0})}, ok)
        assert why is not None and "method's p95 151 ms misses the SLO" in why
        dirty = _summary(samples={"generated": 10, "fallback": 1, "rejected": 0, "lost": 0})
        assert "baseline had fallbacks" in (check(ok, {"": dirty}) or "")
        assert equal_accuracy(0.005)({"": _summary(latency_ms={"p95": 999.0})}, ok) is None

    def test_latency_to_completion_needs_every_sample_answered_by_the_server(self) -> None:
        ok = {"": _summary()}
        assert to_completion(ok, ok) is None
        cut = _summary(samples={"generated": 10, "fallback": 2, "rejected": 1, "lost": 0})
        assert to_completion(ok, {"": cut}) == "the baseline had 3 samples timed out or rejected"

    def test_equal_slo_and_the_same_reply_timeout(self) -> None:
        assert equal_slo(0.005)({"": _summary(slo_satisfaction=0.946)},
                                {"": _summary(slo_satisfaction=0.95)}) is None
        why = equal_slo(0.005)({"p": _summary(slo_satisfaction=0.94)},
                               {"p": _summary(slo_satisfaction=0.95)})
        assert why is not None and "at p" in why
        assert same_reply_timeout({"": _summary()}, {"": _summary()}) is None
        assert same_reply_timeout({"": _summary()}, {"": _summary(reply_timeout_ms=1000.0)})
        assert same_reply_timeout({"": _summary(reply_timeout_ms=None)},
                                  {"": _summary(reply_timeout_ms=None)})
        combined = both(equal_slo(0.0), same_reply_timeout)
        assert combined({"": _summary()}, {"": _summary(reply_timeout_ms=1.0)}) is not None


def write_run(run_dir: Path, **fields: object) -> None:
    run_dir.mkdir(parents=True)
    data = {"emulation": FAITHFUL, "slo_ms": 150,
            "samples": {"generated": 100, "lost": 0, "fallback": 0, "rejected": 0}, **fields,
            "run": {"harness_ended": True, "interrupted": False}}
    (run_dir / "summary.json").write_text(json.dumps(data))


def jobs_for(tmp_path: Path, arms: tuple[str, ...] = ("fast", "slow"),
             points: tuple[str, ...] = ("",), seeds: int = 3) -> list[Job]:
    from cascade_testbed.common.config import ScenarioConfig

    return [Job("two.toml", arm, point, seed, ScenarioConfig(name="two", seed=seed),
                tmp_path / "out" / "two" / (f"{arm}_{point}" if point else arm)
                / f"seed-{seed}")
            for arm in arms for point in points for seed in range(1, seeds + 1)]


def claim(**over: Any) -> Claim:
    fields: dict[str, Any] = dict(
        id="diff", statement="", paper=1.0, paper_text="+1 pp", unit="pp",
        kind="difference", direction="higher", scenario="two.toml", method="fast",
        baseline="slow", metric=field_at("slo_satisfaction"), scale=100.0, seeds=3,
        no_check="test")
    fields.update(over)
    return Claim(**fields)


def barely_resolved_runs(tmp_path: Path) -> list[Job]:
    """Runs where fast beats slow on SLO satisfaction by a real but barely resolved effect,
    and on accuracy by a large one."""
    jobs = jobs_for(tmp_path)
    gaps = {1: 0.011, 2: 0.02, 3: 0.013}
    for job in jobs:
        write_run(job.run_dir, slo_satisfaction=0.9 + (gaps[job.seed] if job.arm == "fast"
                                                       else 0.0),
                  accuracy=0.9 + (0.2 + 0.01 * job.seed if job.arm == "fast" else 0.0))
    return jobs


class TestJudging:
    def test_verdicts_from_the_summaries_on_disk(self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path, points=("devices=10", "devices=20"))
        slo = {"fast": (0.95, 0.96, 0.97), "slow": (0.90, 0.90, 0.90)}
        for job in jobs:
            write_run(job.run_dir, slo_satisfaction=slo[job.arm][job.seed - 1]
                      - (0.01 if job.point == "devices=10" else 0.0),
                      cost=10.0 if job.arm == "fast" else 30.0)
        claims = [claim(metric=field_at("slo_satisfaction", "devices=20"),
                        points=("devices=20",)),
                  claim(id="worst", baseline=None, metric=worst("slo_satisfaction"),
                        reference=0.9),
                  claim(id="cost", kind="ratio", unit="x", paper=2.0, paper_text="2x",
                        metric=field_at("cost", "devices=10"), invert=True, scale=1.0)]
        p = Plan(jobs, tmp_path / "out", {c.id: 3 for c in claims})
        diff, low, ratio = judge(claims, p)
        assert diff.effect is not None and diff.effect.per_seed == pytest.approx((5, 6, 7))
        assert diff.holds and diff.holds_holm and diff.at_paper is True
        assert low.effect is not None and low.effect.per_seed == pytest.approx((4, 5, 6))
        assert ratio.effect is not None and ratio.effect.measured == pytest.approx(3.0)
        assert ratio.holds and ratio.at_paper is True
        line = json.loads(claims_json([diff, low, ratio], {"commit": "abc"}))
        assert line["commit"] == "abc"
        assert [c["id"] for c in line["claims"]] == ["diff", "worst", "cost"]
        first = line["claims"][0]
        assert {"id", "paper", "measured", "ci95", "unit", "direction", "holds", "seeds",
                "null", "attempts", "holds_holm", "p"} <= set(first)
        assert first["null"] == 0.0 and line["claims"][2]["null"] == 1.0
        assert len(first["attempts"]) == 6 and all(a["reason"] == "faithful" and a["kept"]
                                                    for a in first["attempts"])

    def test_a_claim_reads_only_its_points_even_where_its_method_ran_more(
            self, tmp_path: Path) -> None:
        """The method runs at 40 and 100 devices (another claim reads both), the baseline at
        100 only: a claim on the 100 point and its check see that point alone."""
        jobs = [j for j in jobs_for(tmp_path, points=("devices=40", "devices=100"))
                if j.arm == "fast" or j.point == "devices=100"]
        for job in jobs:
            write_run(job.run_dir, slo_satisfaction=0.99 if job.arm == "fast" else 0.9,
                      accuracy=0.9)
        c = claim(metric=field_at("slo_satisfaction", "devices=100"), points=("devices=100",),
                  check=equal_accuracy(0.01), no_check="")
        (v,) = judge([c], Plan(jobs, tmp_path / "out", {"diff": 3}))
        assert v.error == "" and v.holds and v.invalid == []

    def test_an_arm_against_itself_does_not_hold(self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path)
        for job in jobs:
            write_run(job.run_dir, slo_satisfaction=0.9 + 0.01 * job.seed)
        (v,) = judge([claim()], Plan(jobs, tmp_path / "out", {"diff": 3}))
        assert v.effect is not None and v.effect.per_seed == (0.0, 0.0, 0.0)
        assert not v.holds and not v.holds_holm and v.p == 1.0

    def test_a_seed_where_the_comparison_is_not_valid_means_the_claim_does_not_hold(
            self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path)
        for job in jobs:
            write_run(job.run_dir, cost=10.0 if job.arm == "fast" else 30.0,
                      accuracy=0.8 if job.seed == 2 else 0.95)
        c = claim(id="fair", kind="ratio", unit="x", metric=field_at("cost"), invert=True,
                  scale=1.0, check=lambda m, b: "unequal" if m[""]["accuracy"] < 0.9 else None)
        (v,) = judge([c], Plan(jobs, tmp_path / "out", {"fair": 3}))
        assert v.effect is not None and v.effect.measured == pytest.approx(3.0)
        assert not v.holds and v.invalid == ["seed 2: unequal"]
        assert json.loads(claims_json([v], {}))["claims"][0]["invalid"] == ["seed 2: unequal"]

    def test_lost_samples_make_a_seed_invalid(self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path)
        for job in jobs:
            write_run(job.run_dir, slo_satisfaction=0.99 if job.arm == "fast" else 0.9,
                      samples={"generated": 100, "lost": 2 if job.seed == 1 else 0})
        (v,) = judge([claim()], Plan(jobs, tmp_path / "out", {"diff": 3}))
        assert not v.holds and v.invalid == ["seed 1: 4 samples lost"]

    def test_a_zero_baseline_ratio_is_judged_not_raised(self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path)
        for job in jobs:
            write_run(job.run_dir, forward_rate=0.3 if job.arm == "fast" else 0.0)
        c = claim(id="zero", kind="ratio", unit="x", metric=field_at("forward_rate"),
                  scale=1.0)
        (v,) = judge([c], Plan(jobs, tmp_path / "out", {"zero": 3}))
        assert v.error == "" and v.effect is not None and v.effect.method == "range"
        assert v.holds and math.isinf(v.effect.measured)
        out = json.loads(claims_json([v], {}))["claims"][0]
        assert out["ci95"] == [None, None] and out["interval"] == "range" and out["holds"]
        assert "inf" in claims_markdown([v])

    def test_unfaithful_seeds_are_counted_and_judged_again_without_them(
            self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path, seeds=5)
        effects = {1: 2.0, 2: 2.5, 3: 1.5, 4: -40.0, 5: 2.2}
        for job in jobs:
            lag = 200.0 if (job.arm, job.seed) == ("slow", 4) else 2.0
            write_run(job.run_dir, slo_satisfaction=0.5 + (effects[job.seed] / 100
                                                           if job.arm == "fast" else 0.0),
                      emulation={"compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": lag}})
        (v,) = judge([claim(seeds=5)], Plan(jobs, tmp_path / "out", {"diff": 5}))
        assert not v.holds  # every seed counts: the disturbed one pulls the interval down
        assert v.excluded == ["seed 4: host overloaded (loop lag p99 200 ms > 15 ms) after 1 "
                              "attempts"]
        assert v.without_excluded is not None and v.without_excluded.holds
        assert v.without_excluded.effect.n == 4
        (row,) = claims_markdown([v]).splitlines()[2:]
        assert "does not hold" in row and "without the 1 excluded seeds: holds" in row
        out = json.loads(claims_json([v], {}))["claims"][0]
        assert out["without_excluded"]["holds"] and out["excluded"]

    def test_holm_across_the_table_is_given_beside_the_plain_verdicts(
            self, tmp_path: Path) -> None:
        jobs = barely_resolved_runs(tmp_path)
        weak = claim()
        strong = claim(id="acc", metric=field_at("accuracy"))
        others = [claim(id=f"same{i}", metric=field_at("slo_ms")) for i in range(3)]
        verdicts = judge([weak, strong, *others], Plan(jobs, tmp_path / "out",
                                                       {c.id: 3 for c in [weak, strong,
                                                                          *others]}))
        assert verdicts[0].holds and not verdicts[0].holds_holm
        assert verdicts[1].holds and verdicts[1].holds_holm
        assert "Holm: does not hold" in claims_markdown(verdicts).splitlines()[2]
        # An ablation is reported beside the papers' claims, outside their family.
        ablation = claim(id="ablation", paper_claim=False)
        alone = judge([weak, ablation], Plan(jobs, tmp_path / "out", {"diff": 3,
                                                                     "ablation": 3}))
        assert alone[0].holds_holm is True and alone[1].holds_holm is None
        assert "Holm" not in claims_markdown(alone).splitlines()[3]

    def test_the_verdicts_are_written_beside_the_runs_as_json_and_markdown(
            self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path)
        for job in jobs:
            write_run(job.run_dir, slo_satisfaction=0.95 if job.arm == "fast" else 0.9,
                      cost=10.0 if job.arm == "fast" else 15.0)
        claims = [claim(), claim(id="cost", kind="ratio", unit="x", paper=2.0,
                                 paper_text="2x", metric=field_at("cost"), invert=True,
                                 scale=1.0)]
        verdicts = judge(claims, Plan(jobs, tmp_path / "out", {"diff": 3, "cost": 3}))
        verdicts[0].effect = None  # as if its runs had not finished
        verdicts[0].error, verdicts[0].holds = "a|b", False
        write_results(tmp_path / "out", verdicts, {"commit": "c"})
        assert json.loads((tmp_path / "out" / "claims.json").read_text()) == \
            json.loads(claims_json(verdicts, {"commit": "c"}))
        table = (tmp_path / "out" / "claims.md").read_text().splitlines()
        assert table[0].startswith("| claim |") and len(table) == 2 + len(verdicts)
        assert table[2] == "| diff | +1 pp | - | - | 0 | error: a\\|b |"  # a | in a cell escaped
        assert table[3] == ("| cost | 2x | 1.50 x | [1.50, 1.50] | 3 | "
                            "**holds (below the paper's number)** |")

    def test_an_unfinished_run_makes_an_error_not_a_number(self, tmp_path: Path) -> None:
        jobs = jobs_for(tmp_path)
        (v,) = judge([claim()], Plan(jobs, tmp_path / "out", {"diff": 3}))
        assert v.effect is None and not v.holds and "did not finish" in v.error
        assert json.loads(claims_json([v], {}))["claims"][0]["measured"] is None


class TestJoin:
    """A table joined from several full runs' claims.json (a full run may span sittings)."""

    def _judged(self, tmp_path: Path) -> tuple[list[Claim], list[Any]]:
        jobs = jobs_for(tmp_path, seeds=5)
        effects = {1: 2.0, 2: 2.5, 3: 1.5, 4: -40.0, 5: 2.2}
        for job in jobs:
            lag = 200.0 if (job.arm, job.seed) == ("slow", 4) else 2.0
            write_run(job.run_dir, slo_satisfaction=0.5 + (effects[job.seed] / 100
                                                           if job.arm == "fast" else 0.0),
                      forward_rate=0.3 if job.arm == "fast" else (0.0 if job.seed < 3 else 0.1),
                      emulation={"compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": lag}})
        claims = [claim(seeds=5),
                  claim(id="zero", kind="ratio", unit="x", metric=field_at("forward_rate"),
                        scale=1.0, seeds=5)]
        return claims, judge(claims, Plan(jobs, tmp_path / "out", {c.id: 5 for c in claims}))

    def test_a_verdict_read_back_from_its_json_is_the_same(self, tmp_path: Path) -> None:
        from cascade_testbed.testbed.claims.join import verdict_from_json

        claims, verdicts = self._judged(tmp_path)
        assert verdicts[0].without_excluded is not None  # the parts a table may carry
        assert verdicts[1].effect is not None and verdicts[1].effect.method == "range"
        for c, v in zip(claims, verdicts, strict=True):
            back = verdict_from_json(c, v.to_json())
            assert back.to_json() == v.to_json()
        assert claims_markdown([verdict_from_json(claims[0], verdicts[0].to_json())]) == \
            claims_markdown(verdicts[:1])

    def test_each_claim_comes_from_the_last_table_that_has_it_and_holm_is_redone(
            self, tmp_path: Path) -> None:
        from cascade_testbed.testbed.claims.join import join

        jobs = barely_resolved_runs(tmp_path)
        weak, strong = claim(), claim(id="acc", metric=field_at("accuracy"))
        others = [claim(id=f"same{i}", metric=field_at("slo_ms")) for i in range(3)]
        every = [weak, strong, *others]
        plan_ = Plan(jobs, tmp_path / "out", {c.id: 3 for c in every})
        first = json.loads(claims_json(judge(every, plan_), {"commit": "old"}))
        assert first["claims"][0]["holds_holm"] is False  # five in the family
        again = json.loads(claims_json(judge([weak], plan_), {"commit": "new"}))
        again["claims"][0]["measured"] = 1.7  # as if judged from other runs
        verdicts, meta = join([weak, strong], [first, again])
        assert [v.claim.id for v in verdicts] == ["diff", "acc"]  # the others left the catalog
        assert verdicts[0].effect is not None and verdicts[0].effect.measured == 1.7
        assert verdicts[0].holds_holm is True  # two in the family now
        assert [t["commit"] for t in meta["joined_from"]] == ["old", "new"]
        assert set(meta["claims_made_by"]) == {"diff", "acc"}
        assert join([claim(id="nowhere")], [first])[0] == []


class TestAttempts:
    def test_an_unfaithful_run_gets_one_more_attempt_and_both_are_listed(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from cascade_testbed.testbed import provenance

        monkeypatch.setattr(provenance, "stale", lambda *a, **k: None)
        jobs = jobs_for(tmp_path, arms=("fast",), seeds=2)
        write_run(jobs[0].run_dir, emulation={"compute_overrun_fraction": 0.05,
                                             "loop_lag_ms": {"p99": 1.0}})
        write_run(jobs[1].run_dir)
        work, outcome = todo(jobs, Reuse(manifest={}))
        assert [(t.job.seed, t.action) for t in work] == [(1, "retry")]
        assert "compute overrun 5.0%" in outcome.retried[str(jobs[0].run_dir)]

        def run(cfg: Any, run_dir: Path) -> dict[str, Any]:
            write_run(run_dir, emulation={"compute_overrun_fraction": 0.02,
                                          "loop_lag_ms": {"p99": 1.0}})
            return {}

        run_all(jobs, run, Reuse(manifest={}))
        listed = attempts(jobs[0], tmp_path / "out")
        assert [(a.run, a.attempt, a.kept) for a in listed] == [
            ("two/fast/seed-1.attempt-1", 1, False), ("two/fast/seed-1", 2, True)]
        assert all("compute overrun" in a.reason for a in listed)
        assert MAX_ATTEMPTS == 2 and todo(jobs, Reuse(manifest={}))[0] == []  # no third

    def test_a_run_made_by_other_code_is_run_again_unless_any_run_is_reused(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from cascade_testbed.testbed import provenance

        monkeypatch.setattr(provenance, "stale", lambda *a, **k: "code changed since it ran")
        (job,) = jobs_for(tmp_path, arms=("fast",), seeds=1)
        write_run(job.run_dir)
        work, outcome = todo([job], Reuse(manifest={}))
        assert [t.action for t in work] == ["stale"] and outcome.stale
        work, outcome = todo([job], Reuse(any=True, manifest={}))
        assert work == [] and outcome.reused_other == {str(job.run_dir):
                                                       "code changed since it ran"}


@pytest.mark.parametrize(("emulation", "slo_ms", "why"), [
    ({"compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": 14.9}}, 150, None),
    ({"compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": 15.1}}, 150, "loop lag p99 15 ms"),
    ({"compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": 40.0}}, 500, None),
    ({"compute_overrun_fraction": 0.011, "loop_lag_ms": {"p99": 1.0}}, 150, "overrun 1.1%"),
    ({}, 150, "no emulation figures"),  # a run that cannot show it was faithful is not
    ({"compute_overrun_fraction": 0.0, "loop_lag_ms": None}, 150, "no emulation figures"),
    ({"compute_overrun_fraction": None, "loop_lag_ms": {"p99": 1.0}}, 150,
     "no emulation figures"),
])
def test_a_run_is_faithful_when_the_host_kept_up(emulation: dict[str, object], slo_ms: float,
                                                 why: str | None) -> None:
    got = unfaithful({"slo_ms": slo_ms, "emulation": emulation})
    assert got is None if why is None else (got is not None and why in got)


class TestCatalog:
    def test_ids_are_unique_and_selection_refuses_unknown_ones(self) -> None:
        ids = [c.id for c in CLAIMS]
        assert len(ids) == len(set(ids))
        with pytest.raises(KeyError, match="unknown claims"):
            Catalog().select(["no-such-claim"])

    def test_every_claim_has_a_check_or_says_why_not_and_at_least_five_seeds(self) -> None:
        for c in CLAIMS:
            assert (c.check is None) == bool(c.no_check), c.id
            assert c.seeds >= 5, c.id

    def test_the_renamed_and_rebuilt_claims(self) -> None:
        by_id = {c.id: c for c in CLAIMS}
        sustained = by_id["multitasc-accuracy-sustained"]
        assert sustained.null_value == -1.0 and sustained.check is same_reply_timeout
        assert "multitasc-accuracy-at-slo" not in by_id
        het = by_id["multitasc-heterogeneity"]
        assert (het.method, het.baseline) == ("multitasc", "multitasc-uniform")
        better = {"": _summary(slo_satisfaction=0.95)}
        assert het.check is not None and het.check(
            {"": _summary(slo_satisfaction=0.944)}, better) is not None


def test_a_quick_run_can_scale_every_time_in_a_scenario() -> None:
    from cascade_testbed.common.scenario_file import scenario_from_dict
    from cascade_testbed.testbed.claims.runner import time_scaled

    cfg = scenario_from_dict({
        "name": "t", "duration_s": 40,
        "devices": {"count": 4, "phases": [{"at_s": 0, "count": 2}, {"at_s": 10, "count": 4}]},
        "tiers": {"mid": {"popularity": [[0, 1.0], [20, 2.0]]}}})
    quick = time_scaled(cfg, 0.5)
    assert quick.duration_s == 20 and [p.at_s for p in quick.devices.phases] == [0, 5]
    assert quick.tiers["mid"].popularity == ((0.0, 1.0), (10.0, 2.0))
    assert quick.tiers["low"] == cfg.tiers["low"]


def test_the_cli_joins_the_published_table_and_says_what_no_table_has(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cascade_testbed.testbed import cli

    published = Path(__file__).resolve().parents[2] / "docs" / "claims.json"
    ids = [c["id"] for c in json.loads(published.read_text())["claims"]
           if c["id"] in {k.id for k in CLAIMS}]
    out = tmp_path / "joined"
    result = CliRunner().invoke(cli.app, ["claims", "--join", str(published), "--only",
                                          ",".join(ids), "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert [c["id"] for c in line["claims"]] == ids and line["joined_from"]
    assert (out / "claims.md").read_text().count("\n") == 2 + len(ids)
    missing = CliRunner().invoke(cli.app, ["claims", "--join", str(published), "--out",
                                           str(tmp_path / "all")])
    if len(ids) < len(CLAIMS):
        assert missing.exit_code == 1 and "no table has" in missing.output
    bad = CliRunner().invoke(cli.app, ["claims", "--join", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "bad claims table" in bad.output
