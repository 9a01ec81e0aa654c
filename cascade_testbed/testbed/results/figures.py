"""PNG figures of a run or a sweep (matplotlib, no display needed). The data come from
`testbed.results.series`; this module only draws."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server; set before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from cascade_testbed.common.events import read_events
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.common.records import SampleRecord, iter_record_files, read_records
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.palette import tier_order, tier_style
from cascade_testbed.testbed.results.collect import model_accuracies
from cascade_testbed.testbed.results.series import (
    Series,
    cdf,
    fault_marks,
    gear_series,
    heavy_model_series,
    per_second,
    running_mean_per_second,
    serving_cost_ms,
    sweep_series,
    threshold_series,
    tradeoff_series,
)

SWEEP_METRICS = {
    "slo_satisfaction": ("SLO satisfaction", True),
    "accuracy": ("accuracy", True),
    "throughput_sps": ("throughput (answers/s)", False),
    "forward_rate": ("forward rate", True),
    "latency_ms.p95": ("p95 latency (ms)", False),
    "latency_ms.mean": ("mean latency (ms)", False),
    "energy.device_j_per_sample": ("device energy per sample (J)", False),
}
"""metric -> (axis label, is a fraction shown in %)."""
FIG_DPI = 110


def clear(out: Path) -> None:
    """Figures of an earlier report go: a figure that no longer applies must not linger."""
    for pattern in ("*.png", "*.svg"):
        for old in out.glob(pattern):
            old.unlink()


def _save(fig: Any, path: Path) -> Path:
    """The PNG at `path` (what report.md shows) and an SVG beside it (for papers: scales
    without blur, and its text can be edited)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path


def _records(run_dir: Path) -> list[SampleRecord]:
    return [r for p in iter_record_files(run_dir) for r in read_records(p)[0]]


def _run_start(run_dir: Path) -> float | None:
    for e in read_events(run_dir / "events.jsonl"):
        if e.get("kind") == "run_clock":
            return float(e["start_at"])
    return None


def _panels(n: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=True)
    return fig, list(axes[0])


def _lines(ax: Any, series: list[Series], percent: bool) -> None:
    """One line per series; a share on a whole 0-100 % axis (a zoomed one makes a 1 % change
    look like a collapse), whole-number x values as integer ticks (devices)."""
    scale = 100.0 if percent else 1.0
    for s in sorted(series, key=lambda s: s.label):
        y = np.asarray(s.y) * scale
        line, = ax.plot(s.x, y, marker="o", label=s.label)
        if any(lo != hi for lo, hi in zip(s.lo, s.hi, strict=True)):
            ax.fill_between(s.x, np.asarray(s.lo) * scale, np.asarray(s.hi) * scale,
                            alpha=0.15, color=line.get_color())
    if percent:
        ax.set_ylim(-1.5, 101.5)  # 0-100 %, with room for the markers at either end
    xs = sorted({float(x) for s in series for x in s.x})
    if xs and all(x.is_integer() for x in xs):
        if len(xs) <= 12:
            ax.set_xticks(xs, [f"{x:.0f}" for x in xs])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _fault_lines(ax: Any, marks: list[tuple[float, str]]) -> None:
    """A dotted vertical line at each injected fault, labelled once in the legend."""
    for k, (t, _) in enumerate(marks):
        ax.axvline(t, color="tab:red", linestyle=":", linewidth=1,
                   label="fault" if k == 0 else None)


def tier_line(tier: str) -> dict[str, Any]:
    """The tier's colour, dashes and width (`testbed.palette`, the live view's too). Drawn in
    `tier_order`, the weakest tier solid and widest, each stronger one narrower and dashed on
    top: tiers that hold the same value stay visible, none is moved."""
    style = tier_style(tier)
    return {"color": style.color, "linewidth": style.width,
            "linestyle": (0, style.dash) if style.dash else "-"}


# --- sweeps -------------------------------------------------------------------------------


def sweep_figures(points: list[tuple[dict[str, str], dict[str, Any], Path]], axes: list[str],
                  out: Path) -> list[Path]:
    """Metric-vs-x figures (one panel per mix, one line per policy), latency CDFs and
    thresholds over time of the largest configuration."""
    clear(out)
    x_axis = "devices" if "devices" in axes else next(
        (a for a in axes if a != "seed" and _numeric([p[0][a] for p in points])), None)
    line_axis = "policy" if "policy" in axes else next(
        (a for a in axes if a not in (x_axis, "seed")), "policy")
    pairs = [(labels, summary) for labels, summary, _ in points]
    if x_axis is None:  # no numeric axis (e.g. variants only): one run per line, trade-offs
        return (_largest_point_figures(points, None, line_axis, None, out)
                + _tradeoff_figures(pairs, line_axis, out)
                + idn_gain_figure(points, line_axis, out))
    panel_axis = "mix" if "mix" in axes and line_axis != "mix" else None
    paths = []
    for metric, (label, percent) in SWEEP_METRICS.items():
        by_panel = sweep_series(pairs, metric, x_axis, line_axis, panel_axis)
        if not by_panel:  # no run has it (summaries from before the metric existed)
            continue
        fig, panels = _panels(len(by_panel))
        for ax, (panel, series) in zip(panels, sorted(by_panel.items()), strict=True):
            _lines(ax, series, percent)
            ax.set_title(f"{panel_axis} = {panel}" if panel_axis else label)
            ax.set_xlabel(x_axis)
        panels[0].set_ylabel(label + (" (%)" if percent else ""))
        panels[-1].legend(title=line_axis, fontsize=8)
        paths.append(_save(fig, out / f"{metric.replace('.', '_')}_vs_{x_axis}.png"))
    paths += _largest_point_figures(points, x_axis, line_axis, panel_axis, out)
    paths += _tradeoff_figures(pairs, line_axis, out)
    paths += idn_gain_figure(points, line_axis, out)
    return paths


TRADEOFFS = {
    "accuracy_vs_p95": ("latency_ms.p95", "p95 end-to-end latency (ms)", False,
                        "accuracy", "accuracy (%)", True),
    "accuracy_vs_sent": ("communication.requests_per_sample", "samples sent to the server (%)",
                         True, "accuracy", "accuracy (%)", True),
    "latency_vs_inaccuracy": ("idn.expected_inaccuracy", "expected inaccuracy (%)", True,
                              "latency_ms.mean", "mean latency (ms)", False),
    "accuracy_vs_energy": ("energy.device_j_per_sample", "device energy per sample (J)",
                           False, "accuracy", "accuracy (%)", True),
}
"""name -> (x metric, x label, x in %, y metric, y label, y in %): one line per policy
through its runs (CascadeServe's accuracy vs p95 across loads; ABC's accuracy vs samples sent;
an IDN's latency vs inaccuracy as alpha varies)."""


def _tradeoff_figures(pairs: list[tuple[dict[str, str], dict[str, Any]]], line_axis: str,
                      out: Path) -> list[Path]:
    paths = []
    for name, (x_metric, x_label, x_pct, y_metric, y_label, y_pct) in TRADEOFFS.items():
        series = tradeoff_series(pairs, x_metric, y_metric, line_axis)
        if not any(len(s.x) for s in series):
            continue
        fig, (ax,) = _panels(1, width=6)
        for s in sorted(series, key=lambda s: s.label):
            ax.plot(np.asarray(s.x) * (100 if x_pct else 1),
                    np.asarray(s.y) * (100 if y_pct else 1), marker="o", label=s.label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(title=line_axis, fontsize=8)
        paths.append(_save(fig, out / f"{name}.png"))
    return paths


def idn_gain_figure(points: list[tuple[dict[str, str], dict[str, Any], Path]], line_axis: str,
                    out: Path) -> list[Path]:
    """Time-averaged gain over time of each IDN policy: the cloud-only run's time-averaged
    cost minus the policy's (cost = latency + alpha * inaccuracy); without a cloud-only run,
    the time-averaged cost itself."""
    runs = [(labels, summary, run_dir) for labels, summary, run_dir in points
            if "idn" in summary]
    lines = [labels.get(line_axis, "?") for labels, _, _ in runs]
    if not runs or len(set(lines)) != len(lines):
        return []  # one run per policy, or the curves would mix other axes' values
    curves: dict[str, np.ndarray] = {}
    for labels, summary, run_dir in runs:
        start = _run_start(run_dir)
        if start is None:
            continue
        cfg = load_scenario(run_dir / "scenario.toml")
        heavy, light = model_accuracies(cfg)
        records = _records(run_dir)
        costs = [serving_cost_ms(r, cfg.idn.alpha_ms, heavy, light) for r in records]
        label = labels.get(line_axis, summary["idn"].get("policy", "?"))
        curves[label] = running_mean_per_second(records, costs, start, summary["duration_s"])
    reference = curves.pop("cloud-only", None)
    fig, (ax,) = _panels(1, width=7)
    for label, curve in sorted(curves.items()):
        y = reference[:len(curve)] - curve[:len(reference)] if reference is not None else curve
        ax.plot(np.arange(len(y)), y, label=label)
    ax.set_xlabel("run time (s)")
    ax.set_ylabel("gain over cloud-only (ms/request)" if reference is not None
                  else "cost (ms/request)")
    ax.set_title("time-averaged since the start of the run", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title=line_axis, fontsize=8)
    return [_save(fig, out / "idn_gain_over_time.png")]


def _numeric(values: Iterable[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def _largest_point_figures(points: list[tuple[dict[str, str], dict[str, Any], Path]],
                           x_axis: str | None, line_axis: str, panel_axis: str | None,
                           out: Path) -> list[Path]:
    """For the largest x of each panel (every run without an x axis), one run per line:
    latency CDFs, and thresholds and heavy models over time where they change."""
    chosen: dict[str, dict[str, Path]] = {}
    top: dict[str, float] = {}
    for labels, _, _ in points:
        panel = labels.get(panel_axis, "") if panel_axis else ""
        top[panel] = max(top.get(panel, -np.inf), float(labels[x_axis]) if x_axis else 0.0)
    for labels, _, run_dir in points:
        panel = labels.get(panel_axis, "") if panel_axis else ""
        if (float(labels[x_axis]) if x_axis else 0.0) == top[panel]:
            chosen.setdefault(panel, {}).setdefault(labels.get(line_axis, "?"), run_dir)
    paths = []
    fig, panels = _panels(len(chosen))
    for ax, (panel, by_line) in zip(panels, sorted(chosen.items()), strict=True):
        for line, run_dir in sorted(by_line.items()):
            lat, frac = cdf([r.latency_ms for r in _records(run_dir)])
            ax.plot(lat, frac * 100, label=line)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_title((f"{x_axis} = {top[panel]:g}" if x_axis else "every run")
                     + (f", {panel_axis} = {panel}" if panel_axis else ""))
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("samples (%)")
    panels[-1].legend(title=line_axis, fontsize=8)
    paths.append(_save(fig, out / "latency_cdf.png"))
    runs = [(panel, line, run_dir) for panel, lines in sorted(chosen.items())
            for line, run_dir in sorted(lines.items())]
    if len(runs) > 8:
        return paths  # too many panels to read; the run folders have their own figures
    kinds = {e.get("kind") for _, _, d in runs for e in read_events(d / "events.jsonl")}
    if "thresholds" in kinds:
        paths.append(_per_run(runs, _thresholds, "mean threshold",
                              out / "thresholds_over_time.png"))
    if "model_switch" in kinds:
        paths.append(_per_run(runs, _heavy_models, "", out / "heavy_model_over_time.png"))
    return paths


def _per_run(runs: list[tuple[str, str, Path]], draw: Any, ylabel: str, path: Path) -> Path:
    """One panel per run, drawn by `draw(ax, run_dir)`, titled by its line (and panel)."""
    fig, cells = _panels(len(runs), width=4.2)
    for ax, (panel, line, run_dir) in zip(cells, runs, strict=True):
        draw(ax, run_dir)
        ax.set_title(f"{line}" + (f" ({panel})" if panel else ""), fontsize=9)
    cells[0].set_ylabel(ylabel)
    return _save(fig, path)


def _heavy_models(ax: Any, run_dir: Path) -> None:
    """The heavy model the server ran over run time, from `server_start` and `model_switch`."""
    start = _run_start(run_dir) or 0.0
    series = heavy_model_series(read_events(run_dir / "events.jsonl"), start)
    cheapest_first = open_zoo().index.get("heavy_variants", [])
    names = sorted(dict.fromkeys(series.labels),
                   key=lambda n: (cheapest_first.index(n) if n in cheapest_first else 99, n))
    ax.step(series.x, [names.index(n) for n in series.labels], where="post")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("run time (s)")
    ax.grid(alpha=0.3)


def _thresholds(ax: Any, run_dir: Path) -> None:
    start = _run_start(run_dir) or 0.0
    series = threshold_series(read_events(run_dir / "events.jsonl"), start)
    for tier in tier_order(series):
        s = series[tier]
        ax.step(s.x, s.y, where="post", label=tier, **tier_line(tier))
    ax.set_xlabel("run time (s)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(title="tier", fontsize=8)


# --- one run ------------------------------------------------------------------------------


def run_figures(run_dir: Path, summary: dict[str, Any], out: Path) -> list[Path]:
    """Thresholds over time per tier, latency CDF per tier, and per-second throughput, forward
    rate and SLO satisfaction of one run."""
    clear(out)
    records = _records(run_dir)
    paths = []
    fig, (ax,) = _panels(1, width=7)
    _thresholds(ax, run_dir)
    ax.set_ylabel("mean threshold")
    ax.set_title(f"{summary.get('policy')}: thresholds per tier")
    paths.append(_save(fig, out / "thresholds_over_time.png"))
    fig, (ax,) = _panels(1, width=7)
    for tier in tier_order({r.tier for r in records}):
        x, y = cdf([r.latency_ms for r in records if r.tier == tier])
        ax.plot(x, y * 100, label=tier, **tier_line(tier))
    ax.axvline(summary["slo_ms"], color="grey", linestyle="--", label="SLO")
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("samples (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "latency_cdf.png"))
    start = _run_start(run_dir)
    events = read_events(run_dir / "events.jsonl")
    if start is not None and any(e.get("kind") == "gear_switch" for e in events):
        paths.append(_gear_figure(events, start, summary, out))
    if any(e.get("kind") == "model_switch" for e in events):
        fig, (ax,) = _panels(1, width=7)
        _heavy_models(ax, run_dir)
        ax.set_title(f"{summary.get('policy')}: heavy model over time")
        paths.append(_save(fig, out / "heavy_model_over_time.png"))
    if start is not None:
        sec = per_second(records, start, summary["duration_s"], summary["slo_ms"])
        t = np.arange(len(sec["samples"]))
        marks = fault_marks(events, start)
        fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        axes[0].plot(t, sec["samples"], label="all answers")
        axes[0].plot(t, sec["heavy"], label="heavy answers")
        axes[0].set_ylabel("answers per second")
        axes[0].set_ylim(bottom=0)
        axes[0].set_title(f"{summary.get('policy')}, {summary.get('devices')} devices: "
                          "per second of run time (by arrival)", fontsize=10)
        with np.errstate(invalid="ignore", divide="ignore"):
            axes[1].plot(t, 100 * sec["slo_met"] / sec["samples"], label="SLO satisfaction")
            axes[1].plot(t, 100 * sec["forwarded"] / sec["samples"], label="forward rate")
        axes[1].set_ylabel("share of the second's\nsamples (%)")
        axes[1].set_ylim(0, 102)
        axes[1].set_xlabel("run time (s)")
        for ax in axes:
            _fault_lines(ax, marks)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        paths.append(_save(fig, out / "over_time.png"))
    return paths


def _gear_figure(events: list[dict[str, Any]], start: float, summary: dict[str, Any],
                 out: Path) -> Path:
    gear, load = gear_series(events, start)
    fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    end = float(summary.get("duration_s", gear.x[-1] if gear.x else 0.0))
    axes[0].step([*gear.x, end], [*gear.y, gear.y[-1]], where="post")
    axes[0].set_ylabel("gear (0 = most accurate)")
    axes[0].invert_yaxis()
    axes[0].grid(alpha=0.3)
    axes[1].step(load.x, load.y, where="post", marker=".")
    axes[1].set_ylabel("load measured at each switch\n(samples/s)")
    axes[1].set_xlabel("run time (s)")
    axes[1].grid(alpha=0.3)
    axes[0].set_title(f"{summary.get('policy')}: gear chosen over time")
    return _save(fig, out / "gear_over_time.png")
