"""The runs behind claims and their tuning: which to make, which to keep, and every attempt.

A job is one run of one arm (and tuning configuration) at one point and seed, into its own
folder. A finished run is kept when the code and the resolved scenario that made it are
today's (`testbed.provenance`, or any finished run with `reuse_any`). A run whose emulation
was not faithful (the host, not the system, decided its latencies) gets one more attempt: at
most `MAX_ATTEMPTS` per run, the earlier one moved aside as `seed-k.attempt-1` and kept, and
every attempt is listed with its reason wherever the results are. After the last attempt the
run stands as it is: excluding it would let a filter that rises with an arm's own load decide
the result, so the verdicts are given with and without such seeds.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.testbed import provenance
from cascade_testbed.testbed.faithfulness import MAX_LAG_SHARE_OF_SLO, MAX_OVERRUN, doubts
from cascade_testbed.testbed.sweep import Reuse, is_complete

RunFn = Callable[[ScenarioConfig, Path], dict[str, Any]]
Progress = Callable[[int, int, str, float | None], None]
MAX_ATTEMPTS = 2
__all__ = ["MAX_LAG_SHARE_OF_SLO", "MAX_OVERRUN"]  # the bounds live in testbed.faithfulness


@dataclass(frozen=True)
class Job:
    scenario: str
    arm: str
    point: str
    """The point's labels other than the arm ("" when there are none), e.g. devices=100."""
    seed: int
    cfg: ScenarioConfig
    run_dir: Path
    config: str = ""
    """The tuning configuration ("" for a claim's run)."""

    @property
    def label(self) -> str:
        parts = [self.scenario.removesuffix(".toml"), self.arm, self.config, self.point,
                 f"seed {self.seed}"]
        return " ".join(p for p in parts if p)


def unfaithful(summary: dict[str, Any]) -> str | None:
    """Why a finished run's emulation cannot be trusted, or None. A run that carries no
    emulation figures (no device reported its loop lag) cannot show it was faithful. The rule
    is `testbed.faithfulness.doubts`: compute overrun, loop lag and link timing error."""
    emulation = summary.get("emulation") or {}
    overrun = emulation.get("compute_overrun_fraction")
    lag = (emulation.get("loop_lag_ms") or {}).get("p99")
    if overrun is None or lag is None:
        return "no emulation figures (compute overrun and devices' loop lag) in the summary"
    found = doubts(summary)
    return found[0] if found else None


def read_summary(run_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


def earlier_attempts(run_dir: Path) -> list[Path]:
    """Folders of the earlier attempts of the run in `run_dir`, oldest first."""
    return [p for k in range(1, MAX_ATTEMPTS)
            if (p := run_dir.with_name(f"{run_dir.name}.attempt-{k}")).is_dir()]


@dataclass(frozen=True)
class Attempt:
    run: str
    """The attempt's folder, relative to the results folder."""
    attempt: int
    kept: bool
    reason: str
    """"faithful", or why the run could not be trusted (or did not finish)."""
    provenance: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "attempt": self.attempt, "kept": self.kept,
                "reason": self.reason, **self.provenance}


def attempts(job: Job, root: Path) -> list[Attempt]:
    """Every attempt of a job's run, the kept one (its own folder) last."""
    out = []
    folders = [*earlier_attempts(job.run_dir), job.run_dir]
    for k, folder in enumerate(folders, start=1):
        if not folder.is_dir():
            continue
        if is_complete(folder):
            reason = unfaithful(read_summary(folder)) or "faithful"
        else:
            reason = "did not finish"
        out.append(Attempt(_relative(folder, root), k, folder == job.run_dir, reason,
                           provenance.short(provenance.read(folder))))
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass
class Todo:
    job: Job
    action: str
    """"run" (never finished), "retry" (unfaithful, one more attempt) or "stale" (made by
    other code or another scenario: run again from scratch)."""
    why: str = ""


@dataclass
class Outcome:
    failed: dict[Path, str] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)
    reused_other: dict[str, str] = field(default_factory=dict)
    retried: dict[str, str] = field(default_factory=dict)


def todo(jobs: list[Job], reuse: Reuse) -> tuple[list[Todo], Outcome]:
    """What must run, and the finished runs kept only because of `reuse.any`."""
    out: list[Todo] = []
    outcome = Outcome()
    for job in jobs:
        why = reuse.why_not(job.run_dir, job.cfg)
        if why == "not finished":
            out.append(Todo(job, "run"))
            continue
        if why is not None:
            if not reuse.any:
                out.append(Todo(job, "stale", why))
                outcome.stale[str(job.run_dir)] = why
                continue
            outcome.reused_other[str(job.run_dir)] = why
        bad = unfaithful(read_summary(job.run_dir))
        if bad is not None and len(earlier_attempts(job.run_dir)) + 1 < MAX_ATTEMPTS:
            out.append(Todo(job, "retry", bad))
            outcome.retried[str(job.run_dir)] = bad
    return out, outcome


def run_all(jobs: list[Job], run: RunFn, reuse: Reuse,
            progress: Progress = lambda *_: None) -> Outcome:
    """Run what is not done yet, one run at a time; returns what failed, what was run again
    and why."""
    work, outcome = todo(jobs, reuse)
    overheads: list[float] = []
    for k, item in enumerate(work):
        job = item.job
        overhead = sum(overheads) / len(overheads) if overheads else 8.0
        progress(len(jobs) - len(work) + k, len(jobs), job.label,
                 sum(t.job.cfg.duration_s + overhead for t in work[k:]))
        if item.action == "retry":
            n = len(earlier_attempts(job.run_dir)) + 1
            job.run_dir.rename(job.run_dir.with_name(f"{job.run_dir.name}.attempt-{n}"))
        elif item.action == "stale":
            for old in earlier_attempts(job.run_dir):
                shutil.rmtree(old)
        if job.run_dir.exists():
            shutil.rmtree(job.run_dir)  # cut short, or made by other code: start it again
        t0 = time.monotonic()
        try:
            run(job.cfg, job.run_dir)
        except Exception as exc:  # one failed run must not lose the others
            outcome.failed[job.run_dir] = f"{type(exc).__name__}: {exc}"
        overheads.append(max(time.monotonic() - t0 - job.cfg.duration_s, 0.0))
    progress(len(jobs), len(jobs), "done", 0.0)
    return outcome
