"""Run the claims' experiments and judge them.

For each scenario the selected claims need, every point of its `[sweep]` (arms, and any other
axis) runs once per seed, seeds 1..N (N fixed per claim in the catalog), into
`<out>/<scenario>/<point>/seed-<k>/`: both arms of a claim see the same seeds, hence the same
arrival schedules and data order. Tuned arms run with the values of
`scenarios/claims/tuning/chosen.toml`. Finished runs made by today's code are kept
(`testbed.claims.jobs`), so an interrupted `testbed claims` resumes, and claims sharing a
scenario share its runs. Each run folder is an ordinary run (`testbed report` draws it).

A claim's verdict counts every seed; a seed whose run stayed unfaithful after its last attempt
is *excluded* only in a second verdict, shown when the two differ. Holm's adjustment across
the papers' claims of the table (not the ablations) is given beside the plain verdicts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.config import ScenarioConfig, ScenarioError
from cascade_testbed.common.files import write_whole
from cascade_testbed.testbed import provenance
from cascade_testbed.testbed.claims.catalog import SCENARIOS, Claim
from cascade_testbed.testbed.claims.jobs import Attempt, Job, attempts, read_summary, unfaithful
from cascade_testbed.testbed.claims.stats import (
    Effect,
    at_paper_number,
    holds,
    holm,
    interval,
    p_value,
    paired_effects,
)
from cascade_testbed.testbed.claims.tuning import apply_chosen, chosen_path, read_chosen, tuning_for
from cascade_testbed.testbed.sweep import SweepPoint, expand, is_complete, parse_axes


@dataclass
class Judged:
    """One interval over a set of seeds."""

    effect: Effect
    holds: bool
    p: float


@dataclass
class Verdict:
    claim: Claim
    seeds: list[int] = field(default_factory=list)
    effect: Effect | None = None
    holds: bool = False
    p: float | None = None
    holds_holm: bool | None = None
    """Holm's adjustment across the papers' claims of the table (None: not in that family,
    e.g. an ablation, or not judged)."""
    at_paper: bool | None = None
    error: str = ""
    invalid: list[str] = field(default_factory=list)
    """Seeds where the comparison the paper makes is not valid (e.g. unequal accuracy)."""
    excluded: list[str] = field(default_factory=list)
    """Seeds with a run that stayed unfaithful after its last attempt, and why."""
    without_excluded: Judged | None = None
    """The verdict on the other seeds, when some were excluded."""
    method_values: tuple[float, ...] = ()
    baseline_values: tuple[float, ...] = ()
    secondary: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        c, e = self.claim, self.effect
        out: dict[str, Any] = {
            "id": c.id, "paper": c.paper, "paper_claim": c.paper_claim,
            "measured": _num(e.measured) if e else None,
            "ci95": [_num(e.low), _num(e.high)] if e else None,
            "interval": e.method if e else None, "unit": c.unit, "direction": c.direction,
            "null": c.null_value, "holds": self.holds,
            "p": _num(self.p) if self.p is not None else None, "holds_holm": self.holds_holm,
            "seeds": e.n if e else 0, "seed_list": self.seeds,
            "per_seed": [_num(v) for v in e.per_seed] if e else [],
            "method_values": [_num(v) for v in self.method_values],
            "baseline_values": [_num(v) for v in self.baseline_values],
            "at_paper_number": self.at_paper,
            "check": "none: " + c.no_check if c.check is None else "per seed",
            "attempts": [a.to_json() for a in self.attempts],
        }
        if self.error:
            out["error"] = self.error
        if self.invalid:
            out["invalid"] = self.invalid
        if self.excluded:
            out["excluded"] = self.excluded
        if self.without_excluded is not None:
            w = self.without_excluded
            out["without_excluded"] = {"measured": _num(w.effect.measured),
                                       "ci95": [_num(w.effect.low), _num(w.effect.high)],
                                       "seeds": w.effect.n, "holds": w.holds}
        if self.secondary:
            out["secondary"] = self.secondary
        return out


def _num(value: float) -> float | None:
    """A JSON number (None for an unbounded or undefined end: JSON has no infinity)."""
    return round(value, 4) if math.isfinite(value) else None


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    root: Path = Path(".")
    seeds: dict[str, int] = field(default_factory=dict)
    """Seeds per claim id (the catalog's, or --seeds)."""


def seeds_of(claim: Claim, override: int | None) -> int:
    return override if override is not None else claim.seeds


def plan(claims: list[Claim], out: Path, quick: dict[str, dict[str, Any]], quick_mode: bool,
         seeds: int | None = None, scenarios: Path = SCENARIOS,
         chosen: dict[str, Any] | None = None, tuned: bool = True) -> Plan:
    """Every run the claims need, once each (claims on one scenario share its runs; points no
    claim reads are left out), tuned arms with their chosen values (`tuned`; without, only
    the folders are planned: to judge runs already made). `seeds` overrides the catalog's
    seed counts."""
    chosen = read_chosen(chosen_path(scenarios)) if chosen is None else chosen
    jobs: list[Job] = []
    for name in dict.fromkeys(c.scenario for c in claims):
        readers = [c for c in claims if c.scenario == name]
        tuning, base = tuning_for(name, scenarios)
        if tuned:
            base = apply_chosen(base, tuning, chosen)
        keep: tuple[str, ...] | None = None
        if quick_mode:
            fields = dict(quick.get(name, {}))
            keep = fields.pop("points", None)  # a quick run may take fewer points
            scale = fields.pop("time_scale", None)
            base = dataclasses.replace(base, **fields)
            if scale is not None:
                base = time_scaled(base, float(scale))
        axes = parse_axes(base.sweep)
        if not any(a.name == "variant" for a in axes):
            raise ScenarioError(f"{name}: a claim scenario needs [sweep.variant.<arm>] tables")
        if any(a.name == "seed" for a in axes):
            raise ScenarioError(f"{name}: seeds come from the catalog (or --seeds)")
        stem = name.removesuffix(".toml")
        for point in expand(base, axes):
            arm, rest = _arm_and_rest(point)
            if keep is not None and rest not in keep:
                continue
            wanted = [c for c in readers if arm in c.arms
                      and (c.points is None or rest in c.points)]
            if not wanted:
                continue
            for seed in range(1, max(seeds_of(c, seeds) for c in wanted) + 1):
                cfg = dataclasses.replace(point.cfg, seed=seed, sweep={})
                run_dir = out / stem / (f"{arm}_{rest}" if rest else arm) / f"seed-{seed}"
                jobs.append(Job(name, arm, rest, seed, cfg, run_dir))
    return Plan(jobs, out, {c.id: seeds_of(c, seeds) for c in claims})


def time_scaled(cfg: ScenarioConfig, k: float) -> ScenarioConfig:
    """The same scenario `k` times as long: its duration and every time in it (devices
    joining and leaving, traces of rate and popularity), for a quick run of a design whose
    phases are set in time."""
    d = cfg.devices
    devices = dataclasses.replace(
        d, phases=tuple(dataclasses.replace(ph, at_s=ph.at_s * k) for ph in d.phases),
        trace_points=tuple((t * k, r) for t, r in d.trace_points))
    tiers = {n: dataclasses.replace(t, popularity=tuple((a * k, m) for a, m in t.popularity))
             for n, t in cfg.tiers.items()}
    idn = dataclasses.replace(cfg.idn, nodes=tuple(
        dataclasses.replace(n, trace=tuple((t * k, m) for t, m in n.trace))
        for n in cfg.idn.nodes))
    return dataclasses.replace(cfg, duration_s=cfg.duration_s * k, devices=devices,
                               tiers=tiers, idn=idn)


def _arm_and_rest(point: SweepPoint) -> tuple[str, str]:
    arm = point.labels["variant"]
    rest = ",".join(f"{k}={v}" for k, v in point.labels.items() if k != "variant")
    return arm, rest


def judge(claims: list[Claim], p: Plan) -> list[Verdict]:
    """Each claim's per-seed effects, interval and verdict from the runs on disk, and Holm's
    adjustment across them."""
    verdicts = [_judge_one(claim, p) for claim in claims]
    adjust_holm(verdicts)
    return verdicts


def adjust_holm(verdicts: list[Verdict]) -> None:
    """Holm's step-down across the papers' claims of a table (ablations are not in the
    family), beside each plain verdict."""
    family = [v for v in verdicts if v.p is not None and v.claim.paper_claim]
    for v, rejected in zip(family, holm([v.p for v in family if v.p is not None]),
                           strict=True):
        v.holds_holm = rejected and not v.invalid


def _judge_one(claim: Claim, p: Plan) -> Verdict:
    seeds = list(range(1, p.seeds.get(claim.id, claim.seeds) + 1))
    v = Verdict(claim, seeds)
    try:
        v.attempts = [a for job in _jobs(p, claim, seeds) for a in attempts(job, p.root)]
        arms = [(_arm(p, claim, claim.method, s),
                 _arm(p, claim, claim.baseline, s) if claim.baseline else None)
                for s in seeds]
        every = [{a: _arm(p, claim, a, s) for a in claim.arms} for s in seeds]
        if claim.compare is not None:
            method = [claim.compare(all_arms) for all_arms in every]
        else:
            method = [claim.metric(m) for m, _ in arms]
        baseline = [claim.metric(b) if b is not None else claim.reference for _, b in arms]
        excluded_seeds = []
        for seed, (m, b), all_arms in zip(seeds, arms, every, strict=True):
            summaries = [s for arm in all_arms.values() for s in arm.values()]
            bad = next((why for s in summaries if (why := unfaithful(s))), None)
            if bad is not None:
                v.excluded.append(f"seed {seed}: {bad} after {_tries(p, claim, seed)} attempts")
                excluded_seeds.append(seed)
            lost = sum(int(s["samples"]["lost"]) for s in summaries)
            why = f"{lost} samples lost" if lost else None
            if why is None and b is not None and claim.check is not None:
                why = claim.check(m, b)
            if why:
                v.invalid.append(f"seed {seed}: {why}")
        effects = _effects(claim, method, baseline)
        v.effect = interval(effects, claim.kind)
        v.p = p_value(v.effect, claim.kind, claim.direction, claim.null)
        v.holds = holds(v.effect, claim.kind, claim.direction, claim.null) and not v.invalid
        v.at_paper = at_paper_number(v.effect, claim.paper, claim.direction)
        v.method_values, v.baseline_values = tuple(method), tuple(baseline)
        kept = [i for i, s in enumerate(seeds) if s not in excluded_seeds]
        if excluded_seeds and len(kept) >= 2:
            e = interval([effects[i] for i in kept], claim.kind)
            valid = not any(x.startswith(f"seed {seeds[i]}:") for x in v.invalid for i in kept)
            v.without_excluded = Judged(e, holds(e, claim.kind, claim.direction, claim.null)
                                        and valid, p_value(e, claim.kind, claim.direction,
                                                           claim.null))
        v.secondary = _secondary(claim, arms, every)
    except (KeyError, ValueError, OSError, ScenarioError) as exc:
        v.error = f"{type(exc).__name__}: {exc}"
        v.holds = False
    return v


def _effects(claim: Claim, method: list[float], baseline: list[float]) -> tuple[float, ...]:
    pairs = [claim.effect_inputs(m, b if claim.baseline else None)
             for m, b in zip(method, baseline, strict=True)]
    return paired_effects([a for a, _ in pairs], [b for _, b in pairs], claim.kind,
                          claim.scale)


def _secondary(claim: Claim, arms: list[tuple[dict[str, Any], dict[str, Any] | None]],
               every: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, metric in claim.secondary:
        if claim.compare is not None:  # figures over every arm (e.g. the saving at a point)
            values = [metric(all_arms) for all_arms in every]
            out[name] = {"per_seed": [_num(x) for x in values],
                         "mean": _num(sum(values) / len(values))}
            continue
        m = [metric(a) for a, _ in arms]
        entry: dict[str, Any] = {"method": _num(sum(m) / len(m))}
        if claim.baseline:
            b = [metric(x) for _, x in arms if x is not None]
            entry["baseline"] = _num(sum(b) / len(b))
            e = interval(paired_effects(m, b, "difference", claim.scale), "difference")
            entry["difference"] = _num(e.measured)
            entry["ci95"] = [_num(e.low), _num(e.high)]
        out[name] = entry
    return out


def _jobs(p: Plan, claim: Claim, seeds: list[int]) -> list[Job]:
    return [j for j in p.jobs if j.scenario == claim.scenario and j.seed in seeds
            and j.arm in claim.arms and (claim.points is None or j.point in claim.points)]


def _tries(p: Plan, claim: Claim, seed: int) -> int:
    return max((len(attempts(j, p.root)) for j in _jobs(p, claim, [seed])), default=0)


def _arm(p: Plan, claim: Claim, arm: str, seed: int) -> dict[str, dict[str, Any]]:
    """One arm's summaries at one seed, by point (the points the claim reads)."""
    out = {}
    for job in p.jobs:
        if job.scenario == claim.scenario and job.arm == arm and job.seed == seed and (
                claim.points is None or job.point in claim.points):
            if not is_complete(job.run_dir):
                raise ValueError(f"run {job.run_dir} did not finish")
            out[job.point] = read_summary(job.run_dir)
    if not out:
        raise KeyError(f"{claim.scenario} has no arm {arm!r}")
    return out


def table_provenance(verdicts: list[Verdict]) -> dict[str, Any]:
    """The code that judged the table, and the code that made its runs."""
    made: dict[str, dict[str, Any]] = {}
    counted: set[str] = set()
    for v in verdicts:
        for a in v.attempts:
            if a.kept and a.run not in counted:
                counted.add(a.run)
                key = str(a.provenance.get("code_hash"))
                entry = made.setdefault(key, {"code_hash": a.provenance.get("code_hash"),
                                              "commits": [], "runs": 0})
                entry["runs"] += 1
                commit = a.provenance.get("commit")
                if commit not in entry["commits"]:
                    entry["commits"].append(commit)
    now = provenance.current()
    return {"commit": now["commit"], "dirty": now["dirty"], "code_hash": now["code_hash"],
            "runs_made_by": list(made.values())}


def claims_json(verdicts: list[Verdict], meta: dict[str, Any] | None = None) -> str:
    """The one-line result: `{"commit": ..., "claims": [...]}`."""
    head = meta if meta is not None else table_provenance(verdicts)
    return json.dumps({**head, "claims": [v.to_json() for v in verdicts]},
                      separators=(",", ":"))


def _fmt(value: float, digits: str) -> str:
    return f"{value:{digits}}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def verdict_cells(v: Verdict) -> tuple[str, str, str, str, str, str]:
    """(claim, paper, measured, 95 % CI, seeds, verdict) as plain text, for every table."""
    c, e = v.claim, v.effect
    if e is None:
        return c.id, c.paper_text, "-", "-", "0", f"error: {v.error}"
    digits = ".2f" if c.unit == "x" else ".1f"
    verdict = "holds" if v.holds else "does not hold"
    if v.holds and v.at_paper is False:
        verdict += " (below the paper's number)"
    if v.holds_holm is not None and v.holds != v.holds_holm:
        verdict += "; Holm: " + ("holds" if v.holds_holm else "does not hold")
    if v.invalid:
        verdict += f" (not comparable at {len(v.invalid)} seeds: {v.invalid[0]})"
    w = v.without_excluded
    if w is not None and w.holds != v.holds:
        verdict += (f"; without the {len(v.excluded)} excluded seeds: "
                    f"{'holds' if w.holds else 'does not hold'}")
    elif v.excluded and w is None:
        verdict += f"; {len(v.excluded)} seeds unfaithful"
    null = "" if c.null is None else f" (null {c.null:+g} {c.unit})"
    ci = f"[{_fmt(e.low, digits)}, {_fmt(e.high, digits)}]"
    if e.method == "range":
        ci += " range"
    return (c.id, c.paper_text, f"{_fmt(e.measured, digits)} {c.unit}{null}", ci,
            str(e.n), verdict)


def claims_markdown(verdicts: list[Verdict]) -> str:
    """The table as Markdown, for docs/claims.md and the claims folder."""
    lines = ["| claim | paper | measured | 95 % CI | seeds | verdict |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        cells = [cell.replace("|", "\\|") for cell in verdict_cells(v)]
        if v.holds:
            cells[5] = f"**{cells[5]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(folder: Path, verdicts: list[Verdict], meta: dict[str, Any] | None = None
                  ) -> None:
    """claims.json and claims.md beside the runs, so the verdicts outlive the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / "claims.json", claims_json(verdicts, meta) + "\n")
    write_whole(folder / "claims.md", claims_markdown(verdicts))

