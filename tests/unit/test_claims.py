"""The claims' interval and verdict logic on known inputs, and the runner's bookkeeping on
run folders written by hand (no runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from testbed.claims.catalog import CLAIMS, Catalog, Claim, field_at, worst
from testbed.claims.runner import claims_json, claims_markdown, judge, plan, write_results
from testbed.claims.stats import (
    Effect,
    at_paper_number,
    holds,
    interval,
    paired_effects,
)

T_975_2DF = 4.302652729911275
"""Student t 97.5 % quantile with 2 degrees of freedom (three seeds)."""


class TestIntervals:
    def test_a_difference_interval_is_the_t_interval_of_the_paired_differences(self) -> None:
        e = interval(paired_effects([0.96, 0.95, 0.97], [0.95, 0.93, 0.94], "difference",
                                    scale=100), "difference")
        assert e.per_seed == pytest.approx((1.0, 2.0, 3.0))
        half = T_975_2DF * 1.0 / math.sqrt(3)
        assert (e.measured, e.low, e.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))

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
        with pytest.raises(ValueError, match="positive"):
            paired_effects([1.0, 0.0], [1.0, 1.0], "ratio")
        with pytest.raises(ValueError, match="at least 2"):
            interval([1.0], "difference")


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

    def test_reaching_the_papers_number_is_judged_on_the_mean(self) -> None:
        assert at_paper_number(Effect(21.0, 5.0, 30.0, ()), 20.0, "higher") is True
        assert at_paper_number(Effect(1.4, 1.2, 1.6, ()), 14.0, "higher") is False
        assert at_paper_number(Effect(1.4, 1.2, 1.6, ()), None, "higher") is None


def write_run(run_dir: Path, **fields: object) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(
        {**fields, "run": {"harness_ended": True, "interrupted": False}}))


class TestRunner:
    def scenario(self, tmp_path: Path) -> Path:
        folder = tmp_path / "scenarios"
        folder.mkdir()
        (folder / "two.toml").write_text(
            'name = "two"\nduration_s = 5\n[sweep]\ndevices = [10, 20]\n'
            '[sweep.variant.fast]\npolicy = { name = "multitasc" }\n'
            '[sweep.variant.slow]\npolicy = { name = "static" }\n')
        return folder

    def claims(self) -> list[Claim]:
        return [Claim("diff", "", 1.0, "+1 pp", "pp", "difference", "higher", "two.toml",
                      "fast", "slow", field_at("slo_satisfaction", "devices=20"), scale=100),
                Claim("worst", "", 0.0, "", "pp", "difference", "higher", "two.toml", "fast",
                      None, worst("slo_satisfaction"), reference=0.9, scale=100),
                Claim("cost", "", 2.0, "2x", "x", "ratio", "higher", "two.toml", "fast",
                      "slow", field_at("cost", "devices=10"), invert=True)]

    def test_every_point_runs_once_per_seed_and_claims_share_runs(self,
                                                                  tmp_path: Path) -> None:
        p = plan(self.claims(), [1, 2, 3], tmp_path / "out", {"two.toml": {"duration_s": 2}},
                 quick_mode=True, scenarios=self.scenario(tmp_path))
        assert len(p.jobs) == 2 * 2 * 3  # arms x devices x seeds, not x claims
        assert {j.cfg.duration_s for j in p.jobs} == {2.0}
        assert {(j.arm, j.point) for j in p.jobs} == {
            ("fast", "devices=10"), ("fast", "devices=20"), ("slow", "devices=10"),
            ("slow", "devices=20")}
        assert all(j.cfg.seed == j.seed and j.run_dir.name == f"seed-{j.seed}"
                   for j in p.jobs)

    def test_points_no_claim_reads_are_not_run(self, tmp_path: Path) -> None:
        only = Claim("at-20", "", None, "", "pp", "difference", "higher", "two.toml", "fast",
                     "slow", field_at("slo_satisfaction", "devices=20"), points=("devices=20",))
        p = plan([only], [1, 2, 3], tmp_path / "out", {}, quick_mode=False,
                 scenarios=self.scenario(tmp_path))
        assert {(j.arm, j.point) for j in p.jobs} == {("fast", "devices=20"),
                                                      ("slow", "devices=20")}

    def test_verdicts_from_the_summaries_on_disk(self, tmp_path: Path) -> None:
        p = plan(self.claims(), [1, 2, 3], tmp_path / "out", {}, quick_mode=False,
                 scenarios=self.scenario(tmp_path))
        slo = {"fast": (0.95, 0.96, 0.97), "slow": (0.90, 0.90, 0.90)}
        cost = {"fast": (10.0, 10.0, 10.0), "slow": (30.0, 30.0, 30.0)}
        for job in p.jobs:
            write_run(job.run_dir, slo_satisfaction=slo[job.arm][job.seed - 1]
                      - (0.01 if job.point == "devices=10" else 0.0),
                      cost=cost[job.arm][job.seed - 1])
        assert p.todo == []
        diff, low, ratio = judge(self.claims(), p, [1, 2, 3])
        assert diff.effect is not None and diff.effect.per_seed == pytest.approx((5, 6, 7))
        assert diff.holds and diff.at_paper is True
        assert low.effect is not None and low.effect.per_seed == pytest.approx((4, 5, 6))
        assert ratio.effect is not None and ratio.effect.measured == pytest.approx(3.0)
        assert ratio.holds
        line = json.loads(claims_json([diff, low, ratio]))
        assert [c["id"] for c in line["claims"]] == ["diff", "worst", "cost"]
        assert set(line["claims"][0]) >= {"id", "paper", "measured", "ci95", "unit",
                                          "direction", "holds"}

    def test_a_seed_where_the_comparison_is_not_valid_means_the_claim_does_not_hold(
            self, tmp_path: Path) -> None:
        claim = Claim("fair", "", 2.0, "2x", "x", "ratio", "higher", "two.toml", "fast",
                      "slow", field_at("cost", "devices=10"), invert=True,
                      points=("devices=10",),
                      check=lambda m, b: "unequal" if m["devices=10"]["accuracy"] < 0.9
                      else None)
        p = plan([claim], [1, 2, 3], tmp_path / "out", {}, quick_mode=False,
                 scenarios=self.scenario(tmp_path))
        for job in p.jobs:
            write_run(job.run_dir, cost=10.0 if job.arm == "fast" else 30.0,
                      accuracy=0.8 if job.seed == 2 else 0.95)
        (verdict,) = judge([claim], p, [1, 2, 3])
        assert verdict.effect is not None and verdict.effect.measured == pytest.approx(3.0)
        assert not verdict.holds and verdict.invalid == ["seed 2: unequal"]
        assert json.loads(claims_json([verdict]))["claims"][0]["invalid"] == ["seed 2: unequal"]

    def test_the_verdicts_are_written_beside_the_runs_as_json_and_markdown(
            self, tmp_path: Path) -> None:
        p = plan(self.claims(), [1, 2, 3], tmp_path / "out", {}, quick_mode=False,
                 scenarios=self.scenario(tmp_path))
        for job in p.jobs:
            write_run(job.run_dir, slo_satisfaction=0.95 if job.arm == "fast" else 0.9,
                      cost=10.0 if job.arm == "fast" else 15.0)
        verdicts = judge(self.claims(), p, [1, 2, 3])
        verdicts[0].effect = None  # as if its runs had not finished
        verdicts[0].error, verdicts[0].holds = "a|b", False
        write_results(tmp_path / "out", verdicts)
        assert json.loads((tmp_path / "out" / "claims.json").read_text()) == \
            json.loads(claims_json(verdicts))
        table = (tmp_path / "out" / "claims.md").read_text().splitlines()
        assert table[0].startswith("| claim |") and len(table) == 2 + len(verdicts)
        assert table[2] == "| diff | +1 pp | - | - | 0 | error: a\\|b |"  # a | in a cell escaped
        assert table[4] == ("| cost | 2x | 1.50 x | [1.50, 1.50] | 3 | "
                            "**holds (below the paper's number)** |")
        assert claims_markdown(verdicts) == "\n".join(table) + "\n"

    def test_an_unfinished_run_makes_an_error_not_a_number(self, tmp_path: Path) -> None:
        p = plan(self.claims()[:1], [1, 2, 3], tmp_path / "out", {}, quick_mode=False,
                 scenarios=self.scenario(tmp_path))
        (verdict,) = judge(self.claims()[:1], p, [1, 2, 3])
        assert verdict.effect is None and not verdict.holds and "did not finish" in \
            verdict.error
        assert json.loads(claims_json([verdict]))["claims"][0]["measured"] is None


class TestCatalog:
    def test_every_claim_names_a_scenario_with_its_arms(self) -> None:
        from testbed.claims.runner import SCENARIOS

        for claim in CLAIMS:
            text = (SCENARIOS / claim.scenario).read_text()
            assert f"[sweep.variant.{claim.method}]" in text, claim.id
            assert claim.baseline is None or f"[sweep.variant.{claim.baseline}]" in text

    def test_ids_are_unique_and_selection_refuses_unknown_ones(self) -> None:
        ids = [c.id for c in CLAIMS]
        assert len(ids) == len(set(ids))
        with pytest.raises(KeyError, match="unknown claims"):
            Catalog().select(["no-such-claim"])
