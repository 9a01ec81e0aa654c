"""Sweeps: the cartesian product of a scenario's `[sweep]` axes, one run folder per point.

    [sweep]
    devices = [10, 20, 30, 40, 50]
    policy = ["static", "multitasc", "multitasc++"]
    mix = { homogeneous = "0:1:0", heterogeneous = "1:1:1" }   # a table names its values
    seed = [1, 2]

A `variant` axis names tables merged into the scenario, for configurations that differ in
several fields at once (e.g. a device ensemble with its rule vs a single model and a policy):
`[sweep.variant.unanimous] tiers.low = { ensemble = [...], rule = "agreement" }`.
A `policy` axis may name variants as whole `[policy]` tables, e.g.
`policy = { gears = { name = "gears" }, pinned = { name = "gears", params = { pin_load = 300 } } }`.

Axes are scenario fields by dotted path (`server.max_batch_size`, `policy.params.target`) or
one of the short names in `ALIASES`. Runs go one after another (so they do not disturb each
other's timing), each into `<sweep dir>/<point name>/`, and `sweep.json` / `index.csv` list
them. A sweep is resumable: a point whose folder holds a complete summary made from the same
resolved scenario by the same code (`testbed.provenance`) is not run again; one made by other
code or another scenario is run again, unless the caller reuses any finished run (`reuse_any`).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.config import ScenarioConfig, ScenarioError
from cascade_testbed.common.scenario_file import scenario_from_dict, scenario_to_dict
from cascade_testbed.testbed import provenance

ALIASES = {
    "devices": "devices.count", "mix": "devices.mix", "rate_hz": "devices.rate_hz",
    "arrival": "devices.arrival", "policy": "policy.name", "heavy_model": "server.heavy_model",
    "admission": "server.admission", "max_batch_size": "server.max_batch_size",
    "reply_timeout": "devices.reply_timeout_ms",
    "idn_policy": "idn.policy", "alpha_ms": "idn.alpha_ms",
    "accuracy_target": "policy.params.min_accuracy",
}
INDEX_FIELDS = ("slo_satisfaction", "accuracy", "throughput_sps", "forward_rate")
LATENCY_FIELDS = ("p50", "p95", "p99")
ENERGY_FIELDS = ("device_j_per_sample", "compute_radio_j_per_sample", "total_j_per_sample")
"""summary.json `energy` figures in index.csv, as `energy_<name>`."""


@dataclass(frozen=True)
class Axis:
    name: str
    path: str
    labels: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepPoint:
    index: int
    labels: dict[str, str]
    """Axis name -> the label of its value at this point."""
    cfg: ScenarioConfig

    @property
    def name(self) -> str:
        parts = [f"{axis}={label}" for axis, label in self.labels.items()]
        return f"{self.index:03d}-" + _slug("_".join(parts))


@dataclass
class SweepOutcome:
    sweep_dir: Path
    points: list[SweepPoint]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)
    """Finished points run again, and why their old run could not stand (other code...)."""
    reused_other: dict[str, str] = field(default_factory=dict)
    """Finished points kept under `reuse_any` although they could not stand, and why."""


def parse_axes(sweep: dict[str, Any]) -> list[Axis]:
    """`[sweep]` table -> axes, in the order written; refuses empty or malformed axes."""
    axes = []
    for name, spec in sweep.items():
        path = ALIASES.get(name, name)
        if isinstance(spec, dict):
            labels, values = tuple(str(k) for k in spec), tuple(spec.values())
        elif isinstance(spec, list):
            labels, values = tuple(_label(v) for v in spec), tuple(spec)
        else:
            raise ScenarioError(f"sweep.{name} must be a list or a table of named values")
        if not values:
            raise ScenarioError(f"sweep.{name} has no values")
        axes.append(Axis(name, path, labels, values))
    return axes


def expand(base: ScenarioConfig, axes: list[Axis]) -> list[SweepPoint]:
    """Every combination of axis values as a checked scenario (errors name the point)."""
    base_dict = scenario_to_dict(dataclasses.replace(base, sweep={}))
    points = []
    combos = itertools.product(*(range(len(a.values)) for a in axes))
    for i, combo in enumerate(combos):
        data = json.loads(json.dumps(base_dict))  # a deep copy of plain data
        labels = {}
        whole_policy = False
        for axis, k in zip(axes, combo, strict=True):
            value = axis.values[k]
            if axis.name == "variant":
                _check_variant(value, axis)
                deep_merge(data, value)
                if "policy" in value:
                    whole_policy = True
            elif axis.path == "policy.name" and isinstance(value, dict):
                data["policy"] = {"params": {}, **value}  # a variant: name and params
                whole_policy = True
            else:
                _set(data, axis.path, value)
            labels[axis.name] = axis.labels[k]
        if "policy.name" in {a.path for a in axes} and not whole_policy and \
                data["policy"]["name"] != base.policy.name:
            data["policy"]["params"] = {}  # a policy's params belong to that policy only
        try:
            cfg = scenario_from_dict(data)
        except ScenarioError as exc:
            raise ScenarioError(f"sweep point {labels}: {exc}") from None
        points.append(SweepPoint(i, labels, cfg))
    return points


def _check_variant(value: Any, axis: Axis) -> None:
    if not isinstance(value, dict):
        raise ScenarioError(f"sweep.{axis.name} values must be tables of scenario fields")


def deep_merge(data: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            deep_merge(data[key], value)
        else:
            data[key] = value


def is_complete(run_dir: Path) -> bool:
    """A run that finished: its summary exists and says the harness ended, not cut short."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return False
    try:
        run = json.loads(path.read_text()).get("run", {})
    except json.JSONDecodeError:
        return False
    return bool(run.get("harness_ended")) and not run.get("interrupted")


RunFn = Callable[[ScenarioConfig, Path], dict[str, Any]]


@dataclass
class Reuse:
    """Which finished runs may stand for a run about to be made: those whose provenance
    matches today's code and the scenario about to run, or any finished run (`any`)."""

    any: bool = False
    manifest: dict[str, str] = field(default_factory=provenance.code_manifest)

    def why_not(self, run_dir: Path, cfg: ScenarioConfig) -> str | None:
        """None when `run_dir` holds a finished run that matches `cfg` and today's code."""
        if not is_complete(run_dir):
            return "not finished"
        return provenance.stale(run_dir, cfg, self.manifest)


def partition(points: list[SweepPoint], sweep_dir: Path, reuse: Reuse
              ) -> tuple[list[SweepPoint], SweepOutcome]:
    """The points to run, and an outcome that says which finished ones are kept, kept only
    because of `reuse.any`, or run again because they were made by other code or scenario."""
    outcome = SweepOutcome(sweep_dir, points)
    todo = []
    for p in points:
        why = reuse.why_not(sweep_dir / p.name, p.cfg)
        if why is None:
            outcome.skipped.append(p.name)
        elif why == "not finished":
            todo.append(p)
        elif reuse.any:
            outcome.skipped.append(p.name)
            outcome.reused_other[p.name] = why
        else:
            outcome.stale[p.name] = why
            todo.append(p)
    return todo, outcome


def run_sweep(points: list[SweepPoint], axes: list[Axis], sweep_dir: Path, run: RunFn,
              on_progress: Callable[[int, int, SweepPoint | None, float | None], None]
              = lambda *_: None, reuse: Reuse | None = None) -> SweepOutcome:
    """Run every point not already complete (or made by other code, `Reuse`), one at a time;
    keep the index current.

    `on_progress(done, total, running point, eta_s)` is called before each run and at the end.
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    todo, outcome = partition(points, sweep_dir, reuse or Reuse())
    overheads: list[float] = []
    done = len(outcome.skipped)
    for k, point in enumerate(todo):
        overhead = sum(overheads) / len(overheads) if overheads else 10.0
        eta = sum(p.cfg.duration_s + overhead for p in todo[k:])
        on_progress(done, len(points), point, eta)
        run_dir = sweep_dir / point.name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a run cut short or made by other code: start it again
        t0 = time.monotonic()
        try:
            run(point.cfg, run_dir)
            outcome.ran.append(point.name)
        except Exception as exc:  # one failed point must not lose the others
            outcome.failed[point.name] = f"{type(exc).__name__}: {exc}"
        overheads.append(max(time.monotonic() - t0 - point.cfg.duration_s, 0.0))
        done += 1
        write_index(sweep_dir, points, axes, outcome.failed)
    on_progress(done, len(points), None, 0.0)
    write_index(sweep_dir, points, axes, outcome.failed)
    return outcome


def write_index(sweep_dir: Path, points: list[SweepPoint], axes: list[Axis],
                failed: dict[str, str]) -> None:
    """`sweep.json` (axes, every point, its status and headline numbers) and `index.csv`."""
    rows = []
    for p in points:
        summary = _summary(sweep_dir / p.name)
        status = "done" if is_complete(sweep_dir / p.name) else \
            "failed" if p.name in failed else "pending"
        row: dict[str, Any] = {"name": p.name, "status": status, **p.labels}
        if summary:
            row.update({k: summary.get(k) for k in INDEX_FIELDS})
            row.update({f"latency_{k}_ms": summary["latency_ms"].get(k)
                        for k in LATENCY_FIELDS})
            row.update({"generated": summary["samples"]["generated"],
                        "lost": summary["samples"]["lost"]})
            row.update({f"energy_{k}": (summary.get("energy") or {}).get(k)
                        for k in ENERGY_FIELDS})
        if p.name in failed:
            row["error"] = failed[p.name]
        rows.append(row)
    meta = {"axes": [{"name": a.name, "path": a.path, "labels": list(a.labels)}
                     for a in axes], "runs": rows}
    (sweep_dir / "sweep.json").write_text(json.dumps(meta, indent=2))
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with (sweep_dir / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def load_index(sweep_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sweep_dir / "sweep.json").read_text())
    return data


def summaries(sweep_dir: Path) -> Iterable[tuple[dict[str, str], dict[str, Any], Path]]:
    """(labels, summary, run folder) of every finished point of a sweep."""
    index = load_index(sweep_dir)
    axis_names = [a["name"] for a in index["axes"]]
    for row in index["runs"]:
        summary = _summary(sweep_dir / row["name"])
        if summary is not None:
            yield {a: row[a] for a in axis_names}, summary, sweep_dir / row["name"]


def _summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key, {}), dict):
            raise ScenarioError(f"sweep axis {path!r}: {key!r} is not a table")
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _label(value: Any) -> str:
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=_.+-]+", "-", text).strip("-")[:120]
