"""Series and tables for figures, computed from run folders. Pure data: no drawing here
(`testbed.results.figures` draws), so every curve can be checked by a test."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade_testbed.common.records import SampleRecord


@dataclass
class Series:
    label: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    """Spread over repetitions (seeds): min and max of y at each x."""
    hi: list[float] = field(default_factory=list)


def sweep_series(points: Iterable[tuple[dict[str, str], dict[str, Any]]], metric: str,
                 x_axis: str = "devices", line_axis: str = "policy",
                 panel_axis: str | None = "mix") -> dict[str, list[Series]]:
    """For each panel (e.g. each mix), one line per `line_axis` value (e.g. policy) of
    `metric` (a summary key, or `latency_ms.p95`) against `x_axis`, averaged over the other
    axes (seeds); lo/hi give their spread."""
    cells: dict[str, dict[str, dict[float, list[float]]]] = \
        defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for labels, summary in points:
        value = _metric(summary, metric)
        if value is None:
            continue
        panel = labels.get(panel_axis, "") if panel_axis else ""
        line = labels.get(line_axis, str(summary.get(line_axis, "")))
        x = float(labels[x_axis]) if x_axis in labels else float(summary[x_axis])
        cells[panel][line][x].append(float(value))
    out: dict[str, list[Series]] = {}
    for panel, lines in cells.items():
        out[panel] = []
        for line, by_x in lines.items():
            s = Series(line)
            for x in sorted(by_x):
                ys = by_x[x]
                s.x.append(x)
                s.y.append(float(np.mean(ys)))
                s.lo.append(min(ys))
                s.hi.append(max(ys))
            out[panel].append(s)
    return out


def _metric(summary: dict[str, Any], metric: str) -> float | None:
    node: Any = summary
    for key in metric.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def cdf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the fraction of values <= each (an empirical CDF)."""
    arr = np.sort(np.asarray([v for v in values if v == v], dtype=np.float64))
    return arr, np.arange(1, arr.size + 1) / max(arr.size, 1)


def threshold_series(events: Iterable[dict[str, Any]], run_start: float,
                     by: str = "tier") -> dict[str, Series]:
    """Mean threshold of the connected devices of each tier over run time, from the server's
    `join` / `thresholds` / `leave` events (step changes, so a point per change)."""
    tier_of: dict[str, str] = {}
    current: dict[str, float] = {}
    out: dict[str, Series] = {}

    def sample(t: float) -> None:
        groups: dict[str, list[float]] = defaultdict(list)
        for dev, thr in current.items():
            groups[tier_of[dev] if by == "tier" else dev].append(thr)
        for group, values in groups.items():
            s = out.setdefault(group, Series(group))
            s.x.append(t)
            s.y.append(float(np.mean(values)))

    for e in sorted(events, key=lambda e: e.get("t", 0.0)):
        kind, t = e.get("kind"), float(e.get("t", 0.0)) - run_start
        if kind == "join":
            tier_of[e["device"]] = e.get("tier", "?")
            current[e["device"]] = float(e["threshold"])
        elif kind == "thresholds":
            current.update({d: float(v) for d, v in e["values"].items() if d in tier_of})
        elif kind == "leave":
            current.pop(e["device"], None)
        else:
            continue
        sample(t)
    return out


def per_second(records: Iterable[SampleRecord], run_start: float, duration_s: float,
               slo_ms: float) -> dict[str, np.ndarray]:
    """Per second of run time (by scheduled arrival): samples, heavy answers, forwarded,
    SLO met. `run_start` is the wall-clock time of run time 0 (the `run_clock` event)."""
    n = max(int(np.ceil(duration_s)), 1)
    out = {k: np.zeros(n) for k in ("samples", "heavy", "forwarded", "slo_met")}
    for r in records:
        k = int(r.wall_epoch_s - run_start)
        if 0 <= k < n:
            out["samples"][k] += 1
            out["heavy"][k] += r.source == "heavy"
            out["forwarded"][k] += r.forwarded
            out["slo_met"][k] += r.latency_ms <= slo_ms
    return out


def fault_marks(events: Iterable[dict[str, Any]], run_start: float
                ) -> list[tuple[float, str]]:
    """(run time, what) of every injected fault (`fault` events): where figures over time
    draw a vertical line, so a dip can be told from a fault."""
    out = []
    for e in events:
        if e.get("kind") == "fault":
            what = str(e.get("fault", "fault"))
            target = e.get("device")
            out.append((float(e["t"]) - run_start, f"{what} {target}" if target else what))
    return sorted(out)


def tradeoff_series(points: Iterable[tuple[dict[str, str], dict[str, Any]]], x_metric: str,
                    y_metric: str, line_axis: str = "policy") -> list[Series]:
    """One line per `line_axis` value through the (x_metric, y_metric) points of its runs,
    sorted by x: accuracy vs p95 latency across loads, accuracy vs fraction sent, ...
    Values named `<family>-<number>` (confidence-0.9) are points of one line (confidence)."""
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, summary in points:
        x, y = _metric(summary, x_metric), _metric(summary, y_metric)
        if x is not None and y is not None:
            label = labels.get(line_axis, str(summary.get(line_axis, "")))
            lines[re.sub(r"-[0-9][0-9.]*$", "", label)].append((x, y))
    out = []
    for label, xy in lines.items():
        s = Series(label)
        for x, y in sorted(xy):
            s.x.append(x)
            s.y.append(y)
            s.lo.append(y)
            s.hi.append(y)
        out.append(s)
    return out


def gear_series(events: Iterable[dict[str, Any]], run_start: float) -> tuple[Series, Series]:
    """The gear in force and the load the policy measured, over run time (`gear_switch`)."""
    gear, load = Series("gear"), Series("measured load (samples/s)")
    for e in sorted(events, key=lambda e: e.get("t", 0.0)):
        if e.get("kind") == "gear_switch":
            t = float(e["t"]) - run_start
            gear.x.append(t)
            gear.y.append(float(e["gear"]))
            load.x.append(t)
            load.y.append(float(e.get("load_sps", np.nan)))
    return gear, load


def serving_cost_ms(record: SampleRecord, alpha_ms: float, accuracy: dict[str, float],
                    light_accuracy: dict[str, float]) -> float:
    """An IDN's cost of one answer: its end-to-end latency plus alpha times the inaccuracy of
    the model that gave it (validation accuracy from the cards; the tier's light model for a
    light or fallback answer)."""
    if record.source == "heavy":
        acc = accuracy.get(record.heavy_model.rsplit("/", 1)[-1], 0.0)
    else:
        acc = light_accuracy.get(record.tier, 0.0)
    return float(record.latency_ms) + alpha_ms * (1.0 - acc)


def running_mean_per_second(records: Iterable[SampleRecord], values: Iterable[float],
                            run_start: float, duration_s: float) -> np.ndarray:
    """Time-averaged value up to each second of run time (by scheduled arrival)."""
    n = max(int(np.ceil(duration_s)), 1)
    total, count = np.zeros(n), np.zeros(n)
    for r, v in zip(records, values, strict=True):
        k = int(r.wall_epoch_s - run_start)
        if 0 <= k < n and v == v:
            total[k] += v
            count[k] += 1
    with np.errstate(invalid="ignore"):
        out: np.ndarray = np.cumsum(total) / np.cumsum(count)
    return out


IDN_WARMUP_S = 5.0
"""Answers to samples scheduled before this run time are left out of `mean_cost_steady_ms`:
the policies start from different allocations (greedy from none, INFIDA from its y0)."""


def idn_summary(records: Sequence[SampleRecord], alpha_ms: float, accuracy: dict[str, float],
                light_accuracy: dict[str, float], run_start: float | None = None,
                warmup_s: float = IDN_WARMUP_S) -> dict[str, Any]:
    by_node: dict[str, int] = defaultdict(int)
    by_model: dict[str, int] = defaultdict(int)
    costs = [serving_cost_ms(r, alpha_ms, accuracy, light_accuracy) for r in records]
    for r in records:
        if r.source == "heavy" and "/" in r.heavy_model:
            node, model = r.heavy_model.rsplit("/", 1)
            by_node[node] += 1
            by_model[model] += 1
    finite = [c for c in costs if c == c]
    expected_acc = [accuracy.get(r.heavy_model.rsplit("/", 1)[-1], 0.0) if r.source == "heavy"
                    else light_accuracy.get(r.tier, 0.0) for r in records]
    steady = [c for r, c in zip(records, costs, strict=True)
              if c == c and run_start is not None and r.wall_epoch_s - run_start >= warmup_s]
    return {"alpha_ms": alpha_ms,
            "mean_cost_ms": round(float(np.mean(finite)), 3) if finite else None,
            "mean_cost_steady_ms": round(float(np.mean(steady)), 3) if steady else None,
            "warmup_s": warmup_s,
            "expected_inaccuracy": round(1 - float(np.mean(expected_acc)), 5)
            if expected_acc else None,
            "served_by_node": dict(sorted(by_node.items())),
            "served_by_model": dict(sorted(by_model.items()))}


def sent_at_accuracy(sent: Sequence[float], accuracy: Sequence[float],
                     target: float) -> float | None:
    """On a curve of (share sent, accuracy) points, the share sent that reaches `target`
    accuracy by linear interpolation between the points around it (sorted by accuracy);
    None outside the curve's range."""
    pts = sorted(zip(accuracy, sent, strict=True))
    for (a0, s0), (a1, s1) in itertools.pairwise(pts):
        if a0 <= target <= a1:
            return s0 if a1 == a0 else s0 + (target - a0) / (a1 - a0) * (s1 - s0)
    return None


@dataclass
class LabelSeries:
    x: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def heavy_model_series(events: Iterable[dict[str, Any]], run_start: float) -> LabelSeries:
    """The heavy model in force over run time: the server's first, then each switch."""
    out = LabelSeries()
    for e in sorted(events, key=lambda e: e.get("t", 0.0)):
        if e.get("kind") == "server_start" and not out.x:
            out.x.append(float(e["t"]) - run_start)
            out.labels.append(str(e.get("heavy_model", "?")))
        elif e.get("kind") == "model_switch":
            out.x.append(float(e["t"]) - run_start)
            out.labels.append(str(e["model"]))
    return out
