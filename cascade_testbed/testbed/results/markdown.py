"""Markdown reports of a run or a sweep: the tables a paper's evaluation section would show,
with links to the figures drawn beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascade_testbed.testbed.results.series import sent_at_accuracy


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _sort_key(value: str) -> tuple[int, float, str]:
    """Numbers in numeric order (5 before 30), then words."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def sweep_markdown(title: str, axes: list[str],
                   points: list[tuple[dict[str, str], dict[str, Any], Path]],
                   figures: list[Path], out: Path) -> Path:
    lines = [f"# {title}", "", f"{len(points)} runs; axes: {', '.join(axes)}.", ""]
    idn = any("idn" in s for _, s, _ in points)
    energy = any((s.get("energy") or {}).get("device_j_per_sample") is not None
                 for _, s, _ in points)
    header = [*axes, "SLO sat.", "accuracy", "throughput /s", "fwd rate", "mean ms", "p95 ms",
              "sent / sample", *(["IDN cost ms"] if idn else []), "generated", "lost",
              *(["device J / sample", "all J / sample"] if energy else [])]
    rows = []
    for labels, s, _ in sorted(points, key=lambda p: [_sort_key(p[0][a]) for a in axes]):
        comm = s.get("communication", {})
        rows.append([*(labels[a] for a in axes), _pct(s["slo_satisfaction"]),
                     _pct(s["accuracy"]), _num(s["throughput_sps"]), _pct(s["forward_rate"]),
                     _num(s["latency_ms"].get("mean")), _num(s["latency_ms"]["p95"]),
                     _num(comm.get("requests_per_sample"), ".3f"),
                     *([_num(s.get("idn", {}).get("mean_cost_ms"))] if idn else []),
                     str(s["samples"]["generated"]), str(s["samples"]["lost"]),
                     *([_num((s.get("energy") or {}).get("device_j_per_sample"), ".3f"),
                        _num((s.get("energy") or {}).get("total_j_per_sample"), ".3f")]
                       if energy else [])])
    lines += _table(header, rows)
    lines += _equal_accuracy_section(points, axes)
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(out.parent).as_posix()})" for p in figures]
    out.write_text("\n".join(lines) + "\n")
    return out


def run_markdown(summary: dict[str, Any], figures: list[Path], out: Path) -> Path:
    s = summary["samples"]
    lat = summary["latency_ms"]
    lines = [f"# {summary.get('scenario', 'run')}: {summary['policy']}, "
             f"{summary['devices']} devices, {summary['duration_s']:.0f} s, "
             f"SLO {summary['slo_ms']:.0f} ms", ""]
    lines += _table(["SLO sat.", "accuracy", "throughput /s", "fwd rate", "p50 / p95 / p99 ms",
                     "generated", "completed", "aborted", "lost"],
                    [[_pct(summary["slo_satisfaction"]), _pct(summary["accuracy"]),
                      _num(summary["throughput_sps"]), _pct(summary["forward_rate"]),
                      f"{_num(lat['p50'])} / {_num(lat['p95'])} / {_num(lat['p99'])}",
                      str(s["generated"]), str(s["completed"]), str(s.get("aborted", 0)),
                      str(s["lost"])]])
    lines += ["", "## Per tier", ""]
    lines += _table(["tier", "devices", "SLO sat.", "accuracy", "fwd rate", "p95 ms"],
                    [[tier, str(t["devices"]), _pct(t["slo_satisfaction"]),
                      _pct(t["accuracy"]), _pct(t["forward_rate"]),
                      _num(t["latency_ms"]["p95"])]
                     for tier, t in summary["per_tier"].items()])
    if s.get("causes"):
        lines += ["", "Light answers to forwarded samples, by cause: " + ", ".join(
            f"{c} {n}" for c, n in sorted(s["causes"].items())) + "."]
    lines += _energy_section(summary)
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.relative_to(out.parent).as_posix()})" for p in figures]
    out.write_text("\n".join(lines) + "\n")
    return out


def _energy_section(summary: dict[str, Any]) -> list[str]:
    """Modelled energy per tier and the server's (docs/energy.md), and a trace-driven run's
    achieved rate against the trace's."""
    energy = summary.get("energy") or {}
    lines: list[str] = []
    if energy.get("per_tier"):
        lines += ["", "## Energy (modelled: literature power figures, not measured)", ""]
        rows = [[tier, _num(e.get("compute_radio_j_per_sample"), ".3f"),
                 _num(e.get("device_j_per_sample"), ".3f"),
                 _num(e.get("j_per_device")), _num(e.get("compute_j")), _num(e.get("radio_j")),
                 _num(e.get("idle_j")), _num(e.get("control_radio_j"))]
                for tier, e in energy["per_tier"].items()]
        lines += _table(["tier", "compute + radio J / sample", "device J / sample",
                         "J / device", "compute J", "radio J", "idle J", "control radio J"],
                        rows)
        server = energy.get("server") or {}
        lines += ["", f"Server: {_num(energy.get('server_j'))} J ({_num(server.get('busy_s'))} "
                      f"s busy at {_num(server.get('active_w'))} W, the rest of "
                      f"{_num(server.get('provisioned_s'))} replica-s at "
                      f"{_num(server.get('idle_w'))} W); all energy per sample "
                      f"{_num(energy.get('total_j_per_sample'), '.3f')} J."]
    arrivals = summary.get("arrivals") or {}
    if arrivals.get("mean_abs_rel_error") is not None:
        lines += ["", f"Arrivals ({arrivals['source']}): {arrivals['achieved_samples']} "
                      f"against {_num(arrivals['trace_samples'], '.0f')} asked over "
                      f"{arrivals['periods']} periods, mean absolute relative error "
                      f"{_pct(arrivals['mean_abs_rel_error'])} per period."]
    return lines


def _equal_accuracy_section(points: list[tuple[dict[str, str], dict[str, Any], Path]],
                            axes: list[str]) -> list[str]:
    """With a `confidence-<threshold>` family of runs (the classic cascade): what each other
    run sends to the server against what the confidence cascade would send for the same
    accuracy (interpolated between its runs and its end points, device-only and cloud-only):
    the communication saving."""
    line_axis = next((a for a in axes if a in ("variant", "policy")), None)
    if line_axis is None:
        return []
    base: list[tuple[float, float]] = []
    others: list[tuple[str, float, float]] = []
    cascade = False
    for labels, s, _ in points:
        sent = s.get("communication", {}).get("requests_per_sample")
        acc = s.get("accuracy")
        if sent is None or acc is None:
            continue
        label = labels.get(line_axis, "")
        if label.startswith("confidence-") or label in ("device-only", "cloud-only"):
            base.append((float(sent), float(acc)))
            cascade = cascade or label.startswith("confidence-")
        else:
            others.append((label, float(sent), float(acc)))
    if not cascade or len(base) < 2:
        return []
    rows = []
    for label, sent, acc in sorted(others):
        same = sent_at_accuracy([b[0] for b in base], [b[1] for b in base], acc)
        rows.append([label, _pct(acc), _pct(sent), _pct(same),
                     "-" if same is None or sent <= 0 else f"{same / sent:.2f}x"])
    return ["", "## Samples sent at equal accuracy", "",
            "Against the confidence cascade (one light model, a top-1 threshold), interpolated "
            "between its runs, device-only (threshold 0) and cloud-only (threshold 1).", "",
            *_table(["run", "accuracy", "sent", "confidence cascade sends", "saving"], rows)]
