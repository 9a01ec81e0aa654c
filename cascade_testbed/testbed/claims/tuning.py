"""Tuning as code: every tuned value of every arm comes from a committed tuning sweep.

Each claim scenario `scenarios/claims/X.toml` has a tuning file `scenarios/claims/tuning/X.toml`
that lists, per arm, the configurations tried (tables merged over the arm's variant), the
tuning seeds (which no claim uses), the objective that picks the winner and the requirements a
winner must meet, and, for an arm with nothing to tune, why (`[untuned]`). A method's design
iterations made while looking at results count against its budget (`[design]`): both arms of
a claim get the same number of configurations plus iterations.

`testbed claims --tune` runs every configuration on every tuning seed, picks each arm's best
by mean objective over the seeds (ties go to the configuration listed first), and writes the
winners to `tuning/chosen.toml` with their scores, the commit and a digest of what they were
chosen from. A claim run merges those values into its arms and refuses an arm whose entry is
missing or stale, or whose scenario sets a tuned value to something else.

    scenario = "multitasc-40.toml"       # the claim scenario tuned
    seeds = [101, 102, 103]
    duration_s = 20                      # optional: shorter runs than the claim's
    point = "devices=100"                # optional: the one point of other axes to tune at
    objective = "accuracy_at_slo"        # a summary field or a name of catalog.OBJECTIVES
    better = "higher"                    # or "lower"
    require = ["latency_ms.p95 <= 150", "accuracy >= gears - 0.005"]   # on the mean; an arm
                                         # name stands for that arm's chosen mean
    [untuned]
    static = "the paper's baseline as defined"
    [design]
    multitasc = { iterations = 1, what = "the on-time weight" }
    [arms.multitasc.default]
    [arms.multitasc.down010]
    policy = { params = { down_step = 0.10 } }
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.files import MIB, InputFileError, read_text, write_whole
from cascade_testbed.common.names import BadName, check_name
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed import provenance
from cascade_testbed.testbed.claims.catalog import SCENARIOS, Claim, Summary, metric_named
from cascade_testbed.testbed.claims.jobs import Job, read_summary
from cascade_testbed.testbed.claims.stats import Power, paired_effects, seeds_needed
from cascade_testbed.testbed.sweep import deep_merge, expand, is_complete, parse_axes

UNTUNED = "as-defined"
"""The one configuration of an arm with nothing to tune."""
KEYS = {"scenario", "seeds", "duration_s", "point", "objective", "better", "require",
        "untuned", "design", "arms"}
_REQUIRE = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(>=|<=|>|<)\s*([A-Za-z0-9_.+-]+?)"
                      r"(?:\s*([+-])\s*([0-9.eE+-]+))?\s*$")


class TuningError(ValueError):
    """A tuning file, or the chosen values, that a claim cannot run with."""


@dataclass(frozen=True)
class Requirement:
    text: str
    metric: str
    op: str
    arm: str | None
    """None: `number` alone is the bound; else that arm's chosen mean plus `number`."""
    number: float

    def bound(self, chosen_means: Mapping[str, Mapping[str, float]]) -> float:
        if self.arm is None:
            return self.number
        return chosen_means[self.arm][self.metric] + self.number

    def holds(self, value: float, bound: float) -> bool:
        return {">=": value >= bound, "<=": value <= bound, ">": value > bound,
                "<": value < bound}[self.op]


@dataclass(frozen=True)
class Tuning:
    file: Path
    scenario: str
    seeds: tuple[int, ...]
    objective: str
    better: str
    arms: dict[str, dict[str, dict[str, Any]]]
    """arm -> configuration name -> the table merged over the arm's variant."""
    untuned: dict[str, str] = field(default_factory=dict)
    design: dict[str, tuple[int, str]] = field(default_factory=dict)
    require: tuple[Requirement, ...] = ()
    duration_s: float | None = None
    point: str | None = None
    claim_scenario: dict[str, Any] = field(default_factory=dict)
    """The claim scenario as written (its TOML, parsed): what a choice was made for."""

    @property
    def name(self) -> str:
        return self.file.stem

    def configs(self, arm: str) -> dict[str, dict[str, Any]]:
        return self.arms.get(arm) or {UNTUNED: {}}

    def budget(self, arm: str) -> int:
        """Configurations tried plus design iterations (0 for an untuned arm)."""
        if arm not in self.arms:
            return 0
        return len(self.arms[arm]) + self.design.get(arm, (0, ""))[0]

    def digest(self, arm: str) -> str:
        """What the arm's choice depends on: its configurations, the objective, requirements,
        seeds and duration, and the claim scenario as written: its fields (but the other arms)
        and the arm's variant. A change of the code, or a field a new version adds with its
        default, leaves it alone; a change of the experiment's design does not."""
        raw = dict(self.claim_scenario)
        sweep = dict(raw.pop("sweep", {}))
        variants = sweep.pop("variant", {})
        data = {"configs": self.arms.get(arm), "objective": self.objective,
                "better": self.better, "require": [r.text for r in self.require],
                "seeds": list(self.seeds), "duration_s": self.duration_s, "point": self.point,
                "scenario": raw, "axes": sweep, "variant": variants.get(arm, {})}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def tuning_path(scenario: str, scenarios: Path = SCENARIOS) -> Path:
    return scenarios / "tuning" / scenario


def chosen_path(scenarios: Path = SCENARIOS) -> Path:
    return scenarios / "tuning" / "chosen.toml"


def load_tuning(path: Path, base: ScenarioConfig | None = None) -> Tuning:
    """Read and check a tuning file (against its claim scenario's arms when given)."""
    try:
        data = tomllib.loads(read_text(path, MIB, "tuning file"))
    except (InputFileError, tomllib.TOMLDecodeError) as exc:
        raise TuningError(f"{path}: {exc}") from None
    where = path.name
    unknown = set(data) - KEYS
    if unknown:
        raise TuningError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    for key in ("scenario", "seeds", "objective", "arms"):
        if key not in data:
            raise TuningError(f"{where}: missing {key!r}")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or len(seeds) < 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 100 for s in seeds):
        raise TuningError(f"{where}: seeds must be at least 2 integers above 100 (tuning seeds "
                          "that no claim uses)")
    if data.get("better", "higher") not in ("higher", "lower"):
        raise TuningError(f"{where}: better must be 'higher' or 'lower'")
    arms = data["arms"]
    untuned = data.get("untuned", {})
    design = data.get("design", {})
    if not isinstance(arms, dict) or not all(isinstance(c, dict) and c and all(
            isinstance(v, dict) for v in c.values()) for c in arms.values()):
        raise TuningError(f"{where}: [arms.<arm>.<configuration>] tables, at least one per arm")
    try:
        for arm, configs in arms.items():
            check_name(arm, f"{where}: arm")
            for name in configs:
                check_name(name, f"{where}: configuration of {arm}")
        for arm in untuned:
            check_name(arm, f"{where}: untuned arm")
    except BadName as exc:
        raise TuningError(str(exc)) from None
    if set(arms) & set(untuned):
        raise TuningError(f"{where}: arms both tuned and untuned: "
                          f"{sorted(set(arms) & set(untuned))}")
    if not all(isinstance(why, str) and why.strip() for why in untuned.values()):
        raise TuningError(f"{where}: every [untuned] arm needs its reason")
    designs: dict[str, tuple[int, str]] = {}
    for arm, spec in design.items():
        if arm not in arms or not isinstance(spec, dict) or not isinstance(
                spec.get("iterations"), int) or not isinstance(spec.get("what"), str):
            raise TuningError(f"{where}: design.{arm} must be {{ iterations = N, what = \"...\" }}"
                              " of a tuned arm")
        designs[arm] = (spec["iterations"], spec["what"])
    tuning = Tuning(path, str(data["scenario"]), tuple(seeds), str(data["objective"]),
                    str(data.get("better", "higher")), arms, dict(untuned), designs,
                    tuple(_requirement(r, where, set(arms) | set(untuned))
                          for r in data.get("require", [])),
                    float(data["duration_s"]) if "duration_s" in data else None,
                    str(data["point"]) if "point" in data else None)
    if base is not None:
        variants = set(base.sweep.get("variant", {}))
        covered = set(arms) | set(untuned)
        if covered - variants:
            raise TuningError(f"{where}: arms {sorted(covered - variants)} are not variants of "
                              f"{tuning.scenario}")
        if variants - covered:
            raise TuningError(f"{where}: arms {sorted(variants - covered)} of {tuning.scenario} "
                              "are neither tuned nor listed in [untuned] with a reason")
    return tuning


def _requirement(text: Any, where: str, arms: set[str]) -> Requirement:
    match = _REQUIRE.match(text) if isinstance(text, str) else None
    if not match:
        raise TuningError(f"{where}: requirement {text!r}: write METRIC OP NUMBER or "
                          "METRIC OP ARM [+|- NUMBER]")
    metric, op, right, sign, offset = match.groups()
    try:
        return Requirement(text, metric, op, None, float(right))
    except ValueError:
        pass
    if right not in arms:
        raise TuningError(f"{where}: requirement {text!r}: {right!r} is neither a number nor "
                          "an arm")
    number = float(offset) * (-1.0 if sign == "-" else 1.0) if offset else 0.0
    return Requirement(text, metric, op, right, number)


def tuning_for(scenario: str, scenarios: Path = SCENARIOS) -> tuple[Tuning, ScenarioConfig]:
    """A claim scenario's tuning file, checked against the scenario's arms."""
    base = load_scenario(scenarios / scenario)
    path = tuning_path(scenario, scenarios)
    if not path.is_file():
        raise TuningError(f"{scenario} has no tuning file {path.relative_to(scenarios)}: every "
                          "arm is tuned there or listed as untuned with a reason")
    tuning = load_tuning(path, base)
    if tuning.scenario != scenario:
        raise TuningError(f"{path.name} tunes {tuning.scenario!r}, not {scenario!r}")
    raw = tomllib.loads(read_text(scenarios / scenario, MIB, "scenario"))
    return dataclasses.replace(tuning, claim_scenario=raw), base


# --- the chosen values ---------------------------------------------------------------------

def read_chosen(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(read_text(path, MIB, "chosen values"))
    except (InputFileError, tomllib.TOMLDecodeError) as exc:
        raise TuningError(f"{path}: {exc}") from None


def apply_chosen(base: ScenarioConfig, tuning: Tuning, chosen: Mapping[str, Any]
                 ) -> ScenarioConfig:
    """The claim scenario with each tuned arm's chosen values merged into its variant;
    `TuningError` for a missing or stale choice, or a variant that disagrees with it."""
    variants = json.loads(json.dumps(base.sweep.get("variant", {})))
    entries = chosen.get(tuning.name, {})
    for arm in tuning.arms:
        entry = entries.get(arm)
        again = f"run `testbed claims --tune --only <a claim on {tuning.scenario}>`"
        if not isinstance(entry, dict) or "values" not in entry:
            raise TuningError(f"{tuning.scenario}: arm {arm!r} has no chosen values in "
                              f"tuning/chosen.toml; {again}")
        if entry.get("digest") != tuning.digest(arm):
            raise TuningError(f"{tuning.scenario}: the chosen values of arm {arm!r} are stale "
                              f"(tuning/{tuning.file.name} or the claim scenario changed since "
                              f"they were chosen); {again}")
        values = entry["values"]
        if entry.get("config") not in tuning.arms[arm] or \
                values != tuning.arms[arm][entry["config"]]:
            raise TuningError(f"{tuning.scenario}: chosen.toml's values for arm {arm!r} are not "
                              f"its configuration {entry.get('config')!r} in "
                              f"tuning/{tuning.file.name}; {again}")
        clash = _disagreements(variants.get(arm, {}), values)
        if clash:
            raise TuningError(f"{tuning.scenario}: variant {arm!r} sets {clash[0]} where "
                              f"tuning/chosen.toml has {clash[1]!r}: tuned values come from "
                              "chosen.toml only")
        merged = json.loads(json.dumps(variants.get(arm, {})))
        deep_merge(merged, values)
        variants[arm] = merged
    return dataclasses.replace(base, sweep={**base.sweep, "variant": variants})


def _disagreements(variant: Mapping[str, Any], values: Mapping[str, Any], path: str = ""
                   ) -> tuple[str, Any] | None:
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if key not in variant:
            continue
        if isinstance(value, dict) and isinstance(variant[key], dict):
            found = _disagreements(variant[key], value, here)
            if found:
                return found
        elif variant[key] != value:
            return f"{here} = {variant[key]!r}", value
    return None


# --- tuning runs and the choice ------------------------------------------------------------

def plan_tuning(tuning: Tuning, base: ScenarioConfig, out: Path) -> list[Job]:
    """Every configuration of every arm (tuned or not) at the tuning point, on every tuning
    seed, into `<out>/<tuning>/<arm>/<configuration>[_<point>]/seed-<k>/`."""
    axes = [a for a in parse_axes(base.sweep) if a.name != "variant"]
    variants = base.sweep.get("variant", {})
    jobs = []
    for arm in [*tuning.arms, *tuning.untuned]:
        for config, values in tuning.configs(arm).items():
            merged = json.loads(json.dumps(variants.get(arm, {})))
            deep_merge(merged, values)
            sweep = {**{a.name: base.sweep[a.name] for a in axes}, "variant": {arm: merged}}
            cfg = dataclasses.replace(base, sweep=sweep)
            for point in expand(cfg, parse_axes(sweep)):
                rest = ",".join(f"{k}={v}" for k, v in point.labels.items() if k != "variant")
                if tuning.point is not None and rest != tuning.point:
                    continue
                for seed in tuning.seeds:
                    run_cfg = dataclasses.replace(point.cfg, seed=seed, sweep={})
                    if tuning.duration_s is not None:
                        run_cfg = dataclasses.replace(run_cfg, duration_s=tuning.duration_s)
                    folder = f"{config}_{rest}" if rest else config
                    jobs.append(Job(tuning.scenario, arm, rest, seed, run_cfg,
                                    out / tuning.name / arm / folder / f"seed-{seed}", config))
    if tuning.point is not None and not jobs:
        raise TuningError(f"{tuning.file.name}: point {tuning.point!r} is not a point of "
                          f"{tuning.scenario}")
    return jobs


def plan_tunings(chosen: Iterable[Claim], claims: list[Claim], out: Path,
                 scenarios: Path = SCENARIOS) -> list[tuple[Tuning, list[Job]]]:
    """The tuning of each scenario the chosen claims name (once, in the order they name them)
    with its runs under `out`; `TuningError` when a tuning gives the two tuned arms of any
    claim (of `claims`, all of them) unequal budgets."""
    planned = []
    for name in dict.fromkeys(c.scenario for c in chosen):
        tuning, base = tuning_for(name, scenarios)
        unequal = check_budgets(tuning, claims)
        if unequal:
            raise TuningError("unequal tuning budgets: " + "; ".join(unequal))
        planned.append((tuning, plan_tuning(tuning, base, out)))
    return planned


@dataclass
class ArmChoice:
    arm: str
    config: str
    values: dict[str, Any]
    scores: dict[str, float]
    """Mean objective over the tuning seeds, per configuration."""
    failing: dict[str, str]
    """Configurations that did not meet a requirement, and which."""
    budget: int


@dataclass
class TuningResult:
    tuning: Tuning
    choices: dict[str, ArmChoice]
    """Tuned and untuned arms alike (an untuned arm's one configuration)."""
    per_seed: dict[tuple[str, str], dict[int, dict[str, Summary]]]
    """(arm, configuration) -> seed -> point -> summary."""
    missing: list[str] = field(default_factory=list)


def collect(tuning: Tuning, jobs: list[Job]) -> TuningResult:
    """Read the tuning runs and choose each arm's configuration."""
    per_seed: dict[tuple[str, str], dict[int, dict[str, Summary]]] = {}
    missing = []
    for job in jobs:
        if not is_complete(job.run_dir):
            missing.append(str(job.run_dir))
            continue
        per_seed.setdefault((job.arm, job.config), {}).setdefault(job.seed, {})[job.point] = \
            read_summary(job.run_dir)
    objective = metric_named(tuning.objective)
    chosen_means: dict[str, dict[str, float]] = {}
    choices: dict[str, ArmChoice] = {}
    referenced = {r.arm for r in tuning.require}
    # Arms others are held against are chosen first (untuned ones have nothing to choose).
    order = sorted([*tuning.untuned, *tuning.arms],
                   key=lambda a: 0 if a in tuning.untuned else 1 if a in referenced else 2)
    for arm in order:
        scores: dict[str, float] = {}
        failing: dict[str, str] = {}
        means: dict[str, dict[str, float]] = {}
        for config in tuning.configs(arm):
            runs = per_seed.get((arm, config), {})
            if len(runs) < len(tuning.seeds):
                failing[config] = "runs missing"
                continue
            scores[config] = _mean(objective(runs[s]) for s in tuning.seeds)
            means[config] = {r.metric: _mean(metric_named(r.metric)(runs[s])
                                             for s in tuning.seeds) for r in tuning.require}
            if arm in tuning.arms:
                unmet = [r.text for r in tuning.require if r.arm != arm and (
                    r.arm is None or r.arm in chosen_means) and not r.holds(
                        means[config][r.metric], r.bound(chosen_means))]
                if unmet:
                    failing[config] = "; ".join(unmet)
        meeting = [c for c in scores if c not in failing] or list(scores)
        if not meeting:
            continue
        sign = 1.0 if tuning.better == "higher" else -1.0
        best = max(meeting, key=lambda c: (sign * scores[c], -list(scores).index(c)))
        chosen_means[arm] = means[best]
        choices[arm] = ArmChoice(arm, best, tuning.configs(arm)[best], scores, failing,
                                 tuning.budget(arm))
    return TuningResult(tuning, choices, per_seed, missing)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


def pilot(claim: Claim, result: TuningResult) -> tuple[tuple[float, ...], Power] | None:
    """A claim's per-seed effects on the tuning seeds with the chosen configurations, and the
    seeds it needs from their spread; None when the tuning runs cannot give them."""
    m = result.choices.get(claim.method)
    b = result.choices.get(claim.baseline) if claim.baseline else None
    if m is None or (claim.baseline and b is None):
        return None
    if claim.compare is not None:
        if any(a not in result.choices for a in claim.arms):
            return None
        try:
            values = [claim.compare({a: result.per_seed[(a, result.choices[a].config)][seed]
                                     for a in claim.arms}) for seed in result.tuning.seeds]
            effects = paired_effects(values, [claim.reference] * len(values), claim.kind,
                                     claim.scale)
        except (KeyError, ValueError, ZeroDivisionError):
            return None
        return effects, seeds_needed(effects, claim.kind, claim.direction, claim.null)
    try:
        mv, bv = [], []
        for seed in result.tuning.seeds:
            mv.append(claim.metric(result.per_seed[(m.arm, m.config)][seed]))
            bv.append(claim.metric(result.per_seed[(b.arm, b.config)][seed]) if b
                      else claim.reference)
        pairs = [claim.effect_inputs(x, y if b else None) for x, y in zip(mv, bv, strict=True)]
        effects = paired_effects([p[0] for p in pairs], [p[1] for p in pairs], claim.kind,
                                 claim.scale)
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return effects, seeds_needed(effects, claim.kind, claim.direction, claim.null)


def write_chosen(path: Path, results: list[TuningResult], claims: list[Claim]
                 ) -> dict[str, Any]:
    """Merge these results into `chosen.toml` (entries of other tuning files stay)."""
    data = read_chosen(path)
    state = provenance.git_state()
    power = data.get("power", {})
    for result in results:
        t = result.tuning
        entries: dict[str, Any] = {}
        for arm in t.arms:
            choice = result.choices.get(arm)
            if choice is None:
                continue
            entries[arm] = {
                "tuning": t.file.name, "config": choice.config, "values": choice.values,
                "objective": t.objective, "better": t.better,
                "scores": {k: round(v, 6) for k, v in choice.scores.items()},
                "failing": choice.failing, "configurations": len(t.arms[arm]),
                "design_iterations": t.design.get(arm, (0, ""))[0],
                "seeds": list(t.seeds), "digest": t.digest(arm),
                "commit": state.commit or "unknown", "dirty": state.dirty}
        data[t.name] = entries
        for claim in claims:
            if claim.scenario != t.scenario:
                continue
            found = pilot(claim, result)
            if found is None:
                power.pop(claim.id, None)
                continue
            effects, p = found
            entry: dict[str, Any] = {
                "tuning_effects": [round(e, 4) for e in effects if math.isfinite(e)],
                "suggested_seeds": p.seeds}
            if math.isfinite(p.effect):
                entry["effect"] = round(p.effect, 4)
            if math.isfinite(p.sd):
                entry["sd"] = round(p.sd, 4)
            if p.needed is not None:
                entry["needed_for_80pct_power"] = p.needed
            power[claim.id] = entry
    data["power"] = dict(sorted(power.items()))
    header = ("# Written by `testbed claims --tune` from the committed tuning sweeps in this "
              "folder; do not edit\n# by hand. Claim scenarios read their tuned values from "
              "here (cascade_testbed/testbed/claims/tuning.py).\n")
    write_whole(path, header + tomli_w.dumps(data))
    return data


def check_budgets(tuning: Tuning, claims: list[Claim]) -> list[str]:
    """Claims whose two tuned arms were not given the same budget."""
    out = []
    for c in claims:
        if c.scenario != tuning.scenario or c.baseline is None:
            continue
        if c.method in tuning.arms and c.baseline in tuning.arms and \
                tuning.budget(c.method) != tuning.budget(c.baseline):
            out.append(f"{c.id}: {c.method} has {tuning.budget(c.method)} configurations and "
                       f"design iterations, {c.baseline} {tuning.budget(c.baseline)}")
    return out

