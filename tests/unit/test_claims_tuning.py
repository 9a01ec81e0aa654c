"""Tuning as code: the tuning files' checks, the choice by objective and requirements, the
chosen values merged into the claim scenarios (and refused when missing, stale or
contradicted), equal budgets, and the committed files agreeing with each other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cascade_testbed.testbed.claims import tuning as t
from cascade_testbed.testbed.claims.catalog import CLAIMS, Claim, field_at
from cascade_testbed.testbed.claims.runner import plan
from cascade_testbed.testbed.claims.stats import SEED_BUDGET

SCENARIO = """name = "two"
duration_s = 30
slo_ms = 150
[devices]
count = 6
[sweep.variant.fast]
policy = { name = "multitasc" }
[sweep.variant.slow]
policy = { name = "static" }
[sweep.variant.plain]
policy = { name = "static" }
"""
TUNING = """scenario = "two.toml"
seeds = [101, 102]
duration_s = 5
objective = "accuracy"
require = ["slo_satisfaction >= 0.9", "accuracy >= plain - 0.01"]
[untuned]
plain = "defined by the paper"
[design]
fast = { iterations = 1, what = "a rewrite" }
[arms.fast.a]
[arms.fast.b]
policy = { params = { down_step = 0.1 } }
[arms.slow.x]
policy = { params = { threshold = 0.5 } }
[arms.slow.y]
policy = { params = { threshold = 0.6 } }
[arms.slow.z]
policy = { params = { threshold = 0.7 } }
"""


def folder(tmp_path: Path, tuning: str = TUNING, scenario: str = SCENARIO) -> Path:
    root = tmp_path / "claims"
    (root / "tuning").mkdir(parents=True)
    (root / "two.toml").write_text(scenario)
    (root / "tuning" / "two.toml").write_text(tuning)
    return root


def claim(**over: Any) -> Claim:
    fields: dict[str, Any] = dict(
        id="c", statement="", paper=None, paper_text="", unit="pt", kind="difference",
        direction="higher", scenario="two.toml", method="fast", baseline="slow",
        metric=field_at("accuracy"), scale=100.0, no_check="test")
    fields.update(over)
    return Claim(**fields)


def fake_runs(jobs: list[Any], values: dict[tuple[str, str], tuple[float, float]]) -> None:
    """Each (arm, configuration) gets (accuracy, slo_satisfaction) plus a seed's wobble."""
    for job in jobs:
        acc, slo = values[(job.arm, job.config)]
        job.run_dir.mkdir(parents=True)
        (job.run_dir / "summary.json").write_text(json.dumps({
            "accuracy": acc + 0.001 * (job.seed - 101), "slo_satisfaction": slo,
            "run": {"harness_ended": True}}))


class TestTuningFiles:
    def test_a_tuning_file_covers_every_arm_of_its_scenario(self, tmp_path: Path) -> None:
        root = folder(tmp_path)
        tuning, _base = t.tuning_for("two.toml", root)
        assert tuning.budget("fast") == 3 and tuning.budget("slow") == 3
        assert tuning.budget("plain") == 0 and list(tuning.configs("plain")) == [t.UNTUNED]
        (root / "tuning" / "two.toml").write_text(
            TUNING.replace('[untuned]\nplain = "defined by the paper"\n', "")
            .replace(', "accuracy >= plain - 0.01"', ""))
        with pytest.raises(t.TuningError, match=r"plain.*neither tuned nor listed"):
            t.tuning_for("two.toml", root)

    @pytest.mark.parametrize("change,error", [
        (("seeds = [101, 102]", "seeds = [1, 2]"), "above 100"),
        (("seeds = [101, 102]", "seeds = [101]"), "at least 2"),
        (('objective = "accuracy"', 'objective = "accuracy"\nbogus = 1'), "unknown keys"),
        (('plain = "defined by the paper"', 'plain = ""'), "needs its reason"),
        (("[arms.slow.z]", "[arms.slow.\"../z\"]"), "must be a name"),
        (('"accuracy >= plain - 0.01"', '"accuracy >= nobody"'), "neither a number nor"),
        (('"slo_satisfaction >= 0.9"', '"slo_satisfaction ~ 0.9"'), "METRIC OP"),
        (("fast = { iterations = 1", "plain = { iterations = 1"), "design.plain"),
    ])
    def test_bad_tuning_files_are_refused_with_the_reason(self, tmp_path: Path,
                                                          change: tuple[str, str],
                                                          error: str) -> None:
        root = folder(tmp_path, TUNING.replace(*change))
        with pytest.raises(t.TuningError, match=error):
            t.tuning_for("two.toml", root)

    def test_a_scenario_without_a_tuning_file_is_refused(self, tmp_path: Path) -> None:
        root = folder(tmp_path)
        (root / "tuning" / "two.toml").unlink()
        with pytest.raises(t.TuningError, match="no tuning file"):
            t.tuning_for("two.toml", root)

    def test_unequal_budgets_are_found(self, tmp_path: Path) -> None:
        tuning, _ = t.tuning_for("two.toml", folder(tmp_path))
        assert t.check_budgets(tuning, [claim()]) == []
        lopsided, _ = t.tuning_for("two.toml", folder(tmp_path / "b", TUNING.replace(
            "[arms.slow.z]\npolicy = { params = { threshold = 0.7 } }\n", "")))
        assert t.check_budgets(lopsided, [claim()]) == [
            "c: fast has 3 configurations and design iterations, slow 2"]

    def test_the_chosen_claims_scenarios_are_planned_once_and_unequal_budgets_refused(
            self, tmp_path: Path) -> None:
        root = folder(tmp_path)
        planned = t.plan_tunings([claim(), claim(id="d")], [claim()], tmp_path / "runs", root)
        [(tuning, jobs)] = planned
        assert tuning.scenario == "two.toml" and len(jobs) == (2 + 3 + 1) * 2
        (root / "tuning" / "two.toml").write_text(TUNING.replace(
            "[arms.slow.z]\npolicy = { params = { threshold = 0.7 } }\n", ""))
        with pytest.raises(t.TuningError, match="unequal tuning budgets: c: fast has 3"):
            t.plan_tunings([claim(id="d")], [claim()], tmp_path / "runs", root)


class TestChoosing:
    def test_each_arm_gets_its_best_configuration_that_meets_the_requirements(
            self, tmp_path: Path) -> None:
        root = folder(tmp_path)
        tuning, base = t.tuning_for("two.toml", root)
        jobs = t.plan_tuning(tuning, base, tmp_path / "runs")
        assert len(jobs) == (2 + 3 + 1) * 2 and {j.cfg.duration_s for j in jobs} == {5.0}
        assert {j.cfg.seed for j in jobs} == {101, 102}
        assert jobs[1].run_dir == tmp_path / "runs" / "two" / "fast" / "a" / "seed-102"
        b = next(j for j in jobs if j.config == "b")
        assert b.cfg.policy.name == "multitasc" and b.cfg.policy.params == {"down_step": 0.1}
        fake_runs(jobs, {("fast", "a"): (0.90, 0.95), ("fast", "b"): (0.93, 0.85),
                         ("slow", "x"): (0.85, 0.99), ("slow", "y"): (0.89, 0.99),
                         ("slow", "z"): (0.91, 0.99), ("plain", t.UNTUNED): (0.895, 0.9)})
        result = t.collect(tuning, jobs)
        fast, slow = result.choices["fast"], result.choices["slow"]
        assert fast.config == "a"  # b is more accurate but misses the SLO requirement
        assert fast.failing == {"b": "slo_satisfaction >= 0.9"}
        assert slow.config == "z" and "x" in slow.failing  # 0.85 < plain's 0.8955 - 0.01
        assert slow.scores["z"] == pytest.approx(0.9105)
        assert result.choices["plain"].config == t.UNTUNED

        chosen_file = t.chosen_path(root)
        data = t.write_chosen(chosen_file, [result], [claim()])
        assert data["two"]["slow"]["values"] == {"policy": {"params": {"threshold": 0.7}}}
        assert data["two"]["fast"]["design_iterations"] == 1
        assert data["power"]["c"]["tuning_effects"] == pytest.approx([-1.0, -1.0])
        assert data["power"]["c"]["suggested_seeds"] == SEED_BUDGET  # no effect: the cap
        assert chosen_file.read_text().startswith("# Written by `testbed claims --tune`")

        p = plan([claim()], tmp_path / "out", {}, False, seeds=3, scenarios=root)
        slow_cfgs = {j.cfg.policy.params.get("threshold") for j in p.jobs if j.arm == "slow"}
        assert slow_cfgs == {0.7} and len(p.jobs) == 2 * 3
        assert {j.cfg.duration_s for j in p.jobs} == {30.0}  # the claim's, not the tuning's

    def test_ties_go_to_the_configuration_listed_first(self, tmp_path: Path) -> None:
        tuning, base = t.tuning_for("two.toml", folder(tmp_path))
        jobs = t.plan_tuning(tuning, base, tmp_path / "runs")
        fake_runs(jobs, {k: (0.9, 0.95) for k in [("fast", "a"), ("fast", "b"), ("slow", "x"),
                                                   ("slow", "y"), ("slow", "z"),
                                                   ("plain", t.UNTUNED)]})
        result = t.collect(tuning, jobs)
        assert (result.choices["fast"].config, result.choices["slow"].config) == ("a", "x")

    def test_missing_runs_are_reported_and_nothing_is_chosen_from_them(
            self, tmp_path: Path) -> None:
        tuning, base = t.tuning_for("two.toml", folder(tmp_path))
        jobs = t.plan_tuning(tuning, base, tmp_path / "runs")
        result = t.collect(tuning, jobs)
        assert len(result.missing) == len(jobs) and result.choices == {}


class TestApplyingChosenValues:
    def chosen(self, tmp_path: Path, scenario: str = SCENARIO) -> tuple[Path, dict[str, Any]]:
        root = folder(tmp_path, scenario=scenario)
        tuning, _ = t.tuning_for("two.toml", root)
        entries = {arm: {"config": next(iter(configs)), "values": next(iter(configs.values())),
                         "digest": tuning.digest(arm)}
                   for arm, configs in tuning.arms.items()}
        return root, {"two": entries}

    def test_tuned_values_are_merged_into_their_arms(self, tmp_path: Path) -> None:
        root, chosen = self.chosen(tmp_path)
        p = plan([claim()], tmp_path / "out", {}, False, seeds=3, scenarios=root,
                 chosen=chosen)
        assert {j.cfg.policy.params.get("threshold") for j in p.jobs if j.arm == "slow"} == \
            {0.5}

    def test_a_missing_or_stale_choice_is_refused(self, tmp_path: Path) -> None:
        root, chosen = self.chosen(tmp_path)
        del chosen["two"]["slow"]
        with pytest.raises(t.TuningError, match="'slow' has no chosen values"):
            plan([claim()], tmp_path / "out", {}, False, scenarios=root, chosen=chosen)
        root, chosen = self.chosen(tmp_path / "b")
        (root / "two.toml").write_text(SCENARIO.replace("slo_ms = 150", "slo_ms = 200"))
        with pytest.raises(t.TuningError, match="stale"):
            plan([claim()], tmp_path / "out", {}, False, scenarios=root, chosen=chosen)
        root, chosen = self.chosen(tmp_path / "c")
        chosen["two"]["slow"]["values"] = {"policy": {"params": {"threshold": 0.55}}}
        with pytest.raises(t.TuningError, match="not its configuration"):
            plan([claim()], tmp_path / "out", {}, False, scenarios=root, chosen=chosen)

    def test_a_claim_scenario_that_contradicts_a_tuned_value_is_refused(
            self, tmp_path: Path) -> None:
        hand_copied = SCENARIO.replace(
            '[sweep.variant.slow]\npolicy = { name = "static" }',
            '[sweep.variant.slow]\npolicy = { name = "static", params = { threshold = 0.6 } }')
        root, chosen = self.chosen(tmp_path, hand_copied)
        with pytest.raises(t.TuningError, match=r"sets policy.params.threshold = 0.6 where "
                                                r"tuning/chosen.toml has 0.5"):
            plan([claim()], tmp_path / "out", {}, False, scenarios=root, chosen=chosen)


class TestTheCommittedFiles:
    """The catalog, the claim scenarios, their tuning files and chosen.toml agree."""

    def test_every_claim_scenario_is_tuned_with_equal_budgets(self) -> None:
        for name in dict.fromkeys(c.scenario for c in CLAIMS):
            tuning, _base = t.tuning_for(name)
            assert t.check_budgets(tuning, list(CLAIMS)) == [], name
            for c in CLAIMS:
                if c.scenario == name:
                    assert c.method in tuning.arms or c.method in tuning.untuned, c.id
            assert set(tuning.seeds).isdisjoint(range(1, max(c.seeds for c in CLAIMS) + 1))

    def test_every_tuning_configuration_is_a_valid_scenario(self, tmp_path: Path) -> None:
        from cascade_testbed.testbed.preflight import check_scenario

        for name in dict.fromkeys(c.scenario for c in CLAIMS):
            tuning, base = t.tuning_for(name)
            for job in t.plan_tuning(tuning, base, tmp_path):
                if job.seed == tuning.seeds[0]:
                    check_scenario(job.cfg)  # raises CheckFailed with the reason

    def test_the_chosen_values_are_current_for_every_claim(self, tmp_path: Path) -> None:
        p = plan(list(CLAIMS), tmp_path / "out", {}, False)  # refuses stale or missing values
        assert {c.id for c in CLAIMS} == set(p.seeds)
        chosen = t.read_chosen(t.chosen_path())
        for claim_ in CLAIMS:
            assert claim_.id in chosen["power"], claim_.id

    def test_seed_counts_follow_the_power_calculation(self) -> None:
        """Fixed in the catalog before the full run: at least what the tuning seeds' spread
        asks for (capped at this host's budget of 10), the same for claims sharing runs."""
        power = t.read_chosen(t.chosen_path())["power"]
        for c in CLAIMS:
            assert c.seeds >= min(power[c.id]["suggested_seeds"], 10), c.id
            assert {o.seeds for o in CLAIMS if o.scenario == c.scenario} == {c.seeds}

    def test_a_copy_of_the_claims_folder_plans_the_same_runs(self, tmp_path: Path) -> None:
        """The digests do not depend on where the checkout is."""
        copy = tmp_path / "claims"
        shutil.copytree(t.SCENARIOS, copy)
        here = plan(list(CLAIMS), tmp_path / "a", {}, False)
        there = plan(list(CLAIMS), tmp_path / "a", {}, False, scenarios=copy)
        assert [j.run_dir for j in here.jobs] == [j.run_dir for j in there.jobs]
