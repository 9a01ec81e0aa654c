"""Run the claims' experiments and judge them.

For each scenario the selected claims need, every point of its `[sweep]` (arms, and any other
axis) runs once per seed, seeds 1..N, into `<out>/<scenario>/<point>/seed-<k>/`: both arms of
a claim see the same seeds, hence the same arrival schedules and data order. Finished runs are
kept, so an interrupted `testbed claims` resumes, and a claim sharing runs with another (the
same scenario) costs nothing more. Each run folder is an ordinary run (`testbed report` draws
it).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ScenarioConfig, ScenarioError
from common.files import write_whole
from common.scenario_file import load_scenario
from testbed.claims.catalog import Claim
from testbed.claims.stats import Effect, at_paper_number, holds, interval, paired_effects
from testbed.sweep import SweepPoint, expand, is_complete, parse_axes

RunFn = Callable[[ScenarioConfig, Path], dict[str, Any]]
Progress = Callable[[int, int, str, float | None], None]
ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios" / "claims"


@dataclass(frozen=True)
class Job:
    scenario: str
    arm: str
    point: str
    """The point's labels other than the arm ("" when there are none), e.g. devices=100."""
    seed: int
    cfg: ScenarioConfig
    run_dir: Path


@dataclass
class Verdict:
    claim: Claim
    effect: Effect | None = None
    holds: bool = False
    at_paper: bool | None = None
    error: str = ""
    invalid: list[str] = field(default_factory=list)
    """Seeds where the comparison the paper makes is not valid (e.g. unequal accuracy)."""
    method_values: tuple[float, ...] = ()
    baseline_values: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        c, e = self.claim, self.effect
        out: dict[str, Any] = {
            "id": c.id, "paper": c.paper, "measured": round(e.measured, 4) if e else None,
            "ci95": [round(e.low, 4), round(e.high, 4)] if e else None, "unit": c.unit,
            "direction": c.direction, "holds": self.holds, "seeds": e.n if e else 0,
            "per_seed": [round(v, 4) for v in e.per_seed] if e else [],
            "at_paper_number": self.at_paper,
        }
        if self.error:
            out["error"] = self.error
        if self.invalid:
            out["invalid"] = self.invalid
        return out


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)

    @property
    def todo(self) -> list[Job]:
        return [j for j in self.jobs if not is_complete(j.run_dir)]


def plan(claims: list[Claim], seeds: list[int], out: Path, quick: dict[str, dict[str, Any]],
         quick_mode: bool, scenarios: Path = SCENARIOS) -> Plan:
    """Every run the claims need, once each (claims on one scenario share its runs; points no
    claim reads are left out)."""
    jobs: list[Job] = []
    for name in dict.fromkeys(c.scenario for c in claims):
        readers = [c for c in claims if c.scenario == name]
        base = load_scenario(scenarios / name)
        if quick_mode:
            base = dataclasses.replace(base, **quick.get(name, {}))
        axes = parse_axes(base.sweep)
        if not any(a.name == "variant" for a in axes):
            raise ScenarioError(f"{name}: a claim scenario needs [sweep.variant.<arm>] tables")
        if any(a.name == "seed" for a in axes):
            raise ScenarioError(f"{name}: seeds come from `testbed claims --seeds`")
        stem = name.removesuffix(".toml")
        for point in expand(base, axes):
            arm, rest = _arm_and_rest(point)
            if not any(arm in (c.method, c.baseline) and (c.points is None or rest in c.points)
                       for c in readers):
                continue
            for seed in seeds:
                cfg = dataclasses.replace(point.cfg, seed=seed, sweep={})
                run_dir = out / stem / (f"{arm}_{rest}" if rest else arm) / f"seed-{seed}"
                jobs.append(Job(name, arm, rest, seed, cfg, run_dir))
    return Plan(jobs)


def _arm_and_rest(point: SweepPoint) -> tuple[str, str]:
    arm = point.labels["variant"]
    rest = ",".join(f"{k}={v}" for k, v in point.labels.items() if k != "variant")
    return arm, rest


def run_all(p: Plan, run: RunFn, progress: Progress = lambda *_: None) -> dict[Path, str]:
    """Run what is not done yet, one run at a time; returns the failed runs and why."""
    todo = p.todo
    failed: dict[Path, str] = {}
    overheads: list[float] = []
    for k, job in enumerate(todo):
        overhead = sum(overheads) / len(overheads) if overheads else 8.0
        progress(len(p.jobs) - len(todo) + k, len(p.jobs),
                 f"{job.scenario.removesuffix('.toml')} {job.arm} {job.point} seed {job.seed}",
                 sum(j.cfg.duration_s + overhead for j in todo[k:]))
        if job.run_dir.exists():
            shutil.rmtree(job.run_dir)  # cut short before: start it again
        t0 = time.monotonic()
        try:
            run(job.cfg, job.run_dir)
        except Exception as exc:  # one failed run must not lose the others
            failed[job.run_dir] = f"{type(exc).__name__}: {exc}"
        overheads.append(max(time.monotonic() - t0 - job.cfg.duration_s, 0.0))
    progress(len(p.jobs), len(p.jobs), "done", 0.0)
    return failed


def judge(claims: list[Claim], p: Plan, seeds: list[int]) -> list[Verdict]:
    """Each claim's per-seed effects, interval and verdict, from the runs on disk."""
    verdicts = []
    for claim in claims:
        v = Verdict(claim)
        try:
            arms = [(_arm(p, claim.scenario, claim.method, s),
                     _arm(p, claim.scenario, claim.baseline, s) if claim.baseline else None)
                    for s in seeds]
            method = [claim.metric(m) for m, _ in arms]
            baseline = [claim.metric(b) if b is not None else claim.reference for _, b in arms]
            if claim.check is not None:
                v.invalid = [f"seed {s}: {why}" for s, (m, b) in zip(seeds, arms, strict=True)
                             if b is not None and (why := claim.check(m, b))]
            pairs = [claim.effect_inputs(m, b if claim.baseline else None)
                     for m, b in zip(method, baseline, strict=True)]
            effects = paired_effects([a for a, _ in pairs], [b for _, b in pairs],
                                     claim.kind, claim.scale)
            v.effect = interval(effects, claim.kind)
            v.holds = holds(v.effect, claim.kind, claim.direction) and not v.invalid
            v.at_paper = at_paper_number(v.effect, claim.paper, claim.direction)
            v.method_values, v.baseline_values = tuple(method), tuple(baseline)
        except (KeyError, ValueError, OSError) as exc:
            v.error = f"{type(exc).__name__}: {exc}"
        verdicts.append(v)
    return verdicts


def _arm(p: Plan, scenario: str, arm: str, seed: int) -> dict[str, dict[str, Any]]:
    """One arm's summaries at one seed, by point."""
    out = {}
    for job in p.jobs:
        if job.scenario == scenario and job.arm == arm and job.seed == seed:
            if not is_complete(job.run_dir):
                raise ValueError(f"run {job.run_dir} did not finish")
            out[job.point] = json.loads((job.run_dir / "summary.json").read_text())
    if not out:
        raise KeyError(f"{scenario} has no arm {arm!r}")
    return out


def claims_json(verdicts: list[Verdict]) -> str:
    """The one-line result: `{"claims": [...]}`."""
    return json.dumps({"claims": [v.to_json() for v in verdicts]}, separators=(",", ":"))


def verdict_cells(v: Verdict) -> tuple[str, str, str, str, str, str]:
    """(claim, paper, measured, 95 % CI, seeds, verdict) as plain text, for every table."""
    c, e = v.claim, v.effect
    if e is None:
        return c.id, c.paper_text, "-", "-", "0", f"error: {v.error}"
    digits = ".2f" if c.unit == "x" else ".1f"
    verdict = "holds" if v.holds else "does not hold"
    if v.holds and v.at_paper is False:
        verdict += " (below the paper's number)"
    if v.invalid:
        verdict += f" (not comparable at {len(v.invalid)} seeds: {v.invalid[0]})"
    return (c.id, c.paper_text, f"{e.measured:{digits}} {c.unit}",
            f"[{e.low:{digits}}, {e.high:{digits}}]", str(e.n), verdict)


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


def write_results(folder: Path, verdicts: list[Verdict]) -> None:
    """claims.json and claims.md beside the runs, so the verdicts outlive the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / "claims.json", claims_json(verdicts) + "\n")
    write_whole(folder / "claims.md", claims_markdown(verdicts))
