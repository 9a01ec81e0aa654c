"""Everything the harness shows a person: the live progress view and the summary tables.

The only module that prints or draws; metrics are computed elsewhere (`testbed.results.metrics`).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, ConsoleDimensions, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from cascade_testbed.common.gear_plan import GearPlan
from cascade_testbed.testbed.claims.runner import Verdict, verdict_cells
from cascade_testbed.testbed.claims.tuning import TuningResult
from cascade_testbed.testbed.results.compare import Comparison
from cascade_testbed.testbed.results.headline import FRACTIONS, LABELS
from cascade_testbed.testbed.sweep import SweepPoint

PIPE_WIDTH = 240  # columns when the output is a pipe or a file: no table wraps at 80
PLAIN_EVERY_S = 5.0  # how often a pipe or a file gets a progress line


class HarnessConsole(Console):
    """A console that, writing to a pipe or a file, is plain: no source locations on log
    lines, and at least `PIPE_WIDTH` columns wide (rich would wrap tables at 80 columns, or
    at COLUMNS, which a parent process may have set for its own terminal); a `width` given
    holds."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("log_path", False)
        self._width_given = kwargs.get("width") is not None
        super().__init__(**kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width_given:
            return size
        return ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size
        self._width_given = True


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def summary_tables(summary: dict[str, Any]) -> Group:
    s = summary["samples"]
    lat = summary["latency_ms"]
    title = (f"{summary.get('scenario', 'run')}: policy={summary['policy']} "
             f"devices={summary['devices']} mix={summary.get('mix')} "
             f"duration={_duration(summary)} slo={summary['slo_ms']:.0f}ms")
    # as wide as its title, which would otherwise wrap to the width of the numbers
    head = Table(title=title, show_header=False, box=None, padding=(0, 2),
                 min_width=len(title))
    for _ in range(4):
        head.add_column(justify="right")
    head.add_row("SLO satisfaction", _pct(summary["slo_satisfaction"]),
                 "accuracy", _pct(summary["accuracy"]))
    head.add_row("throughput", f"{_num(summary['throughput_sps'])} /s",
                 "forward rate", _pct(summary["forward_rate"]))
    head.add_row("p50 / p95", f"{_num(lat['p50'])} / {_num(lat['p95'])} ms",
                 "p99 / max", f"{_num(lat['p99'])} / {_num(lat['max'])} ms")
    head.add_row("generated", str(s["generated"]), "completed", str(s["completed"]))
    head.add_row("lost", str(s["lost"]), "light", str(s["light"]))
    head.add_row("heavy", str(s["heavy"]), "fallback", str(s["fallback"]))
    head.add_row("rejected", str(s["rejected"]), "aborted", str(s.get("aborted", 0)))
    causes = s.get("causes") or {}
    if causes:
        head.add_row("light answers because", ", ".join(f"{c} {n}" for c, n in
                                                        sorted(causes.items())), "", "")
    tiers = Table(title="per tier", header_style="bold")
    for col in ("tier", "devices", "SLO sat.", "accuracy", "fwd rate", "p95 ms", "mean thr."):
        tiers.add_column(col, justify="right")
    by_tier: dict[str, list[float]] = {}
    for d in summary["per_device"]:
        if d["final_threshold"] is not None:
            by_tier.setdefault(d["tier"], []).append(d["final_threshold"])
    for tier, t in summary["per_tier"].items():
        thr = by_tier.get(tier)
        tiers.add_row(tier, str(t["devices"]), _pct(t["slo_satisfaction"]), _pct(t["accuracy"]),
                      _pct(t["forward_rate"]), _num(t["latency_ms"]["p95"]),
                      _num(sum(thr) / len(thr), ".3f") if thr else "-")
    emu = summary["emulation"]
    res = summary.get("resources") or {}
    uss = (res.get("device_uss_mb") or {})
    run = summary.get("run") or {}
    notes = Table.grid(padding=(0, 2))
    notes.add_row("compute overrun", _pct(emu["compute_overrun_fraction"]),
                  "start lag p99", f"{_num(emu['start_lag_ms']['p99'], '.2f')} ms",
                  "late replies", str(emu["late_replies"]))
    notes.add_row("device USS", f"{_num(uss.get('mean'))} MB mean / {_num(uss.get('max'))} max",
                  "start-up", f"{_num(run.get('startup_s'), '.2f')} s",
                  "partial", str(run.get("partial")))
    lag = emu.get("loop_lag_ms") or {}
    if lag.get("n"):
        notes.add_row("loop lag p99", f"{_num(lag.get('p99'), '.2f')} ms",
                      "loop lag max", f"{_num(lag.get('max'), '.2f')} ms", "", "")
    link = emu.get("link_error_ms") or {}
    if link.get("n"):
        notes.add_row("link error p50", f"{_num(link.get('p50'), '.2f')} ms",
                      "link error p99", f"{_num(link.get('p99'), '.2f')} ms",
                      "messages", str(link.get("n")))
    late = emu.get("reply_late_ms") or {}
    if late.get("n"):
        notes.add_row("reply read late p50", f"{_num(late.get('p50'), '.2f')} ms",
                      "reply read late p99", f"{_num(late.get('p99'), '.2f')} ms",
                      "replies", str(late.get("n")))
    energy = summary.get("energy") or {}
    if energy.get("device_j_per_sample") is not None:
        own = _num(energy.get("compute_radio_j_per_sample"), ".3f")
        notes.add_row("energy / sample", f"{_num(energy['device_j_per_sample'], '.3f')} J device"
                      f" ({own} J compute + radio)",
                      "server", f"{_num(energy.get('server_j'), '.0f')} J",
                      "devices", f"{_num(energy.get('total_j'), '.0f')} J (modelled)")
    arrivals = summary.get("arrivals") or {}
    if arrivals.get("mean_abs_rel_error") is not None:
        notes.add_row("trace rate error", _pct(arrivals["mean_abs_rel_error"]),
                      "achieved / trace", f"{arrivals['achieved_samples']} / "
                      f"{_num(arrivals['trace_samples'], '.0f')} samples",
                      "periods", f"{arrivals['periods']} x {_num(arrivals['period_s'], 'g')} s"
                      if arrivals.get("period_s") else f"{arrivals['periods']} trace steps")
    shed = (summary.get("server") or {}).get("shed") or {}
    if shed:
        notes.add_row("server shed", ", ".join(f"{c} {n:.0f}" for c, n in sorted(shed.items())),
                      "", "", "", "")
    faults = summary.get("faults") or {}
    if faults.get("injected"):
        notes.add_row("faults injected", str(faults.get("injected", 0)),
                      "device kills / restarts",
                      f"{faults.get('device_kill', 0)} / {faults.get('device_restart', 0)}",
                      "server kills / restarts",
                      f"{faults.get('server_kill', 0)} / {faults.get('server_restart', 0)}")
    if faults.get("device_crashes") or faults.get("server_crashes"):
        notes.add_row("[red]unplanned[/red]", "", "device crashes",
                      str(faults.get("device_crashes", 0)), "server deaths",
                      str(faults.get("server_crashes", 0)))
    limited = (summary.get("server") or {}).get("rate_limited") or {}
    if limited:
        worst = sorted(limited.items(), key=lambda kv: -kv[1])[:3]
        notes.add_row("rate limited", ", ".join(f"{escape(d)} {n:.0f}" for d, n in worst),
                      "", "", "", "")
    said = [Text(f"note: {n}", style="yellow") for n in run.get("notes") or ()]
    return Group(head, tiers, notes, *said)


def _duration(summary: dict[str, Any]) -> str:
    """The planned duration, or how long a run stopped early ran of it (and what stopped it)."""
    planned = float(summary["duration_s"])
    run = summary.get("run") or {}
    ran = run.get("arrivals_s")
    if run.get("interrupted"):
        by = run.get("stopped_by") or "SIGINT"
        what = "Ctrl-C" if by == "SIGINT" else by
        return (f"{_num(ran)}s of {planned:.0f}s (stopped by {what})" if ran is not None
                else f"{planned:.0f}s (stopped by {what})")
    if ran is not None and ran < planned - 0.5:
        return f"{ran:.1f}s of {planned:.0f}s (stopped early)"
    return f"{planned:.0f}s"


def print_summary(summary: dict[str, Any], console: Console | None = None,
                  per_device: bool = False) -> None:
    console = console or HarnessConsole()
    console.print(summary_tables(summary))
    if per_device:
        console.print(device_table(summary))


def device_table(summary: dict[str, Any]) -> Table:
    table = Table(title="per device", header_style="bold")
    table.add_column("device", no_wrap=True)
    for col in ("samples", "lost", "SLO sat.", "accuracy", "fwd rate", "p95 ms", "final thr."):
        table.add_column(col, justify="right")
    for d in summary["per_device"]:
        table.add_row(d["device_id"], str(d["samples"]), str(d["lost"]),
                      _pct(d["slo_satisfaction"]), _pct(d["accuracy"]), _pct(d["forward_rate"]),
                      _num(d["latency_ms"]["p95"]), _num(d["final_threshold"], ".3f"))
    return table


class _Line:
    """A line of text below the bar that `Live` redraws as it changes."""

    def __init__(self) -> None:
        self.text = ""

    def __rich__(self) -> RenderableType:
        return Text(self.text, no_wrap=True, overflow="ellipsis")


class LiveProgress:
    """The `Progress` of `testbed.supervisor`, drawn with rich on a terminal. Into a pipe or
    a file nothing is redrawn: phase lines, a plain progress line every `PLAIN_EVERY_S`
    seconds, and the last one (the last poll's numbers) when the run ends."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or HarnessConsole()
        self._bar = Progress(TextColumn("{task.description}",
                                        table_column=Column(no_wrap=True)), BarColumn(),
                             TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                             TimeElapsedColumn(), console=self.console, transient=False)
        self._line = _Line()
        self._live = Live(Group(self._bar, self._line), console=self.console,
                          refresh_per_second=4)
        self._register_task: Any = None
        self._run_task: Any = None
        self._plain = False
        self._said_at = float("-inf")
        self._pending = ""  # the last plain line, not printed yet
        self._peak = 0

    def __enter__(self) -> LiveProgress:
        self._plain = not self.console.is_terminal
        if not self._plain:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._plain:
            self._flush()
        else:
            self._live.__exit__(None, None, None)
            self.console.print()

    def phase(self, text: str) -> None:
        self._flush()
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False,
                           highlight=False, soft_wrap=True)

    def registered(self, done: int, total: int) -> None:
        if self._plain:
            self._say(f"registering devices {done}/{total}", force=done >= total)
            return
        if self._register_task is None:
            self._register_task = self._bar.add_task("registering devices", total=total)
        self._bar.update(self._register_task, completed=done)

    def running(self, elapsed_s: float, duration_s: float, live: dict[str, Any]) -> None:
        connected = live.get("connected")
        if isinstance(connected, int):
            self._peak = max(self._peak, connected)
        text = live_text({**live, "peak": self._peak} if live else live)
        if self._plain:
            self._say(f"running {elapsed_s:.1f}/{duration_s:.0f} s" + (f" · {text}" if text
                                                                         else ""))
            return
        if self._run_task is None:
            self._run_task = self._bar.add_task("running (s)", total=duration_s)
        self._bar.update(self._run_task, completed=elapsed_s)
        self._line.text = text

    def _say(self, line: str, force: bool = False) -> None:
        """Print a plain progress line if the last was `PLAIN_EVERY_S` ago, else keep it for
        later (the next phase or the end prints it)."""
        now = time.monotonic()
        self._pending = line
        if force or now - self._said_at >= PLAIN_EVERY_S:
            self._said_at = now
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.console.print(self._pending, markup=False, highlight=False, soft_wrap=True)
            self._pending = ""


def live_text(live: dict[str, Any]) -> str:
    """The server's live numbers, each with its name (the progress line shows them), and how
    many devices finished."""
    if live.get("server_down"):
        return "server down"
    if "connected" not in live:  # no poll answered yet
        return ""
    thr = live.get("mean_threshold")
    connected, peak = live.get("connected", "?"), live.get("peak")
    # Devices leave the server as they finish: at the end `connected` falls to 0.
    if isinstance(connected, int) and isinstance(peak, int) and peak > connected:
        connected = f"{connected} (peak {peak})"
    done = live.get("done_devices")
    return (f"connected {connected} · " + (f"finished {done} · " if done else "") +
            f"queue {live.get('queue', '?')} · "
            f"served {live.get('throughput_sps', 0):.0f}/s of "
            f"{live.get('arrival_sps', 0):.0f}/s arriving · "
            f"mean threshold {'-' if thr is None else f'{thr:.2f}'}")


class SweepProgress:
    """One bar over a sweep's runs, with the running point and an ETA from the remaining
    runs' durations plus the measured overhead of the finished ones."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or HarnessConsole()
        self._bar = Progress(TextColumn("sweep"), BarColumn(),
                             TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                             TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                             TextColumn("{task.fields[point]}"), console=self.console)
        self._task: Any = None

    def __enter__(self) -> SweepProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def update(self, done: int, total: int, point: SweepPoint | str | None,
               eta_s: float | None) -> None:
        if self._task is None:
            self._task = self._bar.add_task("sweep", total=total, eta="?", point="")
        eta = "-" if eta_s is None else f"{int(eta_s // 60)}:{int(eta_s % 60):02d}"
        label = point if isinstance(point, str) else \
            ", ".join(f"{k}={v}" for k, v in point.labels.items()) if point else "done"
        self._bar.update(self._task, completed=done, eta=eta, point=label)


def print_plan(plan: GearPlan, console: Console | None = None) -> None:
    """The gears of a plan with the load levels each serves."""
    console = console or HarnessConsole()
    spans: dict[int, list[int]] = {}
    for q, index in enumerate(plan.table):
        spans.setdefault(index, []).append(q)
    table = Table(title=f"gear plan: {len(plan.gears)} gears, loads 0..{len(plan.table) - 1} "
                        f"samples/s, server budget {plan.server_budget_ms:.0f} ms of "
                        f"{plan.slo_ms:.0f} ms")
    tiers = "/".join(plan.gears[0].thresholds)
    for col in ("gear", "loads (samples/s)", "heavy model", f"thresholds {tiers}", "batch",
                "fwd rate", "accuracy", "sim. p95 ms"):
        table.add_column(col, justify="right")
    for i, g in enumerate(plan.gears):
        loads = spans.get(i, [])
        table.add_row(str(i), f"{loads[0]}-{loads[-1]}" if loads else "-", g.heavy_model,
                      "/".join(f"{v:.3g}" for v in g.thresholds.values()),
                      str(g.max_batch_size), _pct(g.forward_rate), _pct(g.accuracy),
                      _num(g.p95_server_ms))
    meta = plan.meta
    console.print(table)
    console.print(f"{meta.get('pareto_points', '?')} cascades on the Pareto front, profiles "
                  f"{meta.get('profiled', '?')}, planned in {meta.get('planning_s', '?')} s")


def claims_table(verdicts: list[Verdict]) -> Table:
    """Claim, the paper's number, ours with its 95 % interval over seeds, and the verdict."""
    table = Table(title="the papers' claims (paired over seeds, 95 % t interval)",
                  header_style="bold")
    for col, justify in (("claim", "left"), ("paper", "right"), ("measured", "right"),
                         ("95 % CI", "right"), ("seeds", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for v in verdicts:
        *cells, verdict = verdict_cells(v)
        head = "holds" if v.holds else "does not hold"
        if not verdict.startswith(head):  # an error
            head = ""
        style = "green" if v.holds else "red"
        table.add_row(*(escape(x) for x in cells),
                      f"[{style}]{head}[/{style}]" + escape(verdict[len(head):]))
    return table


def tuning_table(result: TuningResult) -> Table:
    """Each configuration's mean objective over the tuning seeds, and the one chosen per arm."""
    t = result.tuning
    table = Table(title=f"tuning/{t.file.name}: {t.objective} ({t.better} is better), seeds "
                        f"{', '.join(map(str, t.seeds))}", header_style="bold")
    for col in ("arm", "configuration", t.objective, "chosen", "note"):
        table.add_column(col, justify="right" if col == t.objective else "left")
    for arm, choice in result.choices.items():
        for config, score in choice.scores.items():
            mark = "[green]yes[/green]" if config == choice.config else ""
            table.add_row(escape(arm), escape(config), f"{score:.4f}", mark,
                          escape(choice.failing.get(config, "")))
    return table


def power_table(power: dict[str, dict[str, Any]]) -> Table:
    """Per claim, its effect and spread on the tuning seeds and the seeds it needs."""
    table = Table(title="seeds per claim from the tuning seeds' spread (80 % power)",
                  header_style="bold")
    for col in ("claim", "effect (tuning)", "sd", "needed", "suggested"):
        table.add_column(col, justify="left" if col == "claim" else "right")
    for claim, p in power.items():
        table.add_row(escape(claim), str(p.get("effect", "-")), str(p.get("sd", "-")),
                      str(p.get("needed_for_80pct_power", "> cap")), str(p["suggested_seeds"]))
    return table


def compare_table(result: Comparison, a: str, b: str) -> Table:
    """B - A per headline figure; shares in % (their differences in percentage points)."""
    how = (f"paired over {len(result.pairs)} run{'s' if len(result.pairs) != 1 else ''}"
           if result.paired else "unpaired: means of each side, no interval")
    table = Table(title=f"B - A ({how})", caption=f"A = {escape(a)}\nB = {escape(b)}",
                  header_style="bold")
    for col in ("figure", "A", "B", "B - A", "95 % CI", "n"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for d in result.differences:
        pct = d.metric in FRACTIONS
        scale, unit, fmt = (100.0, " pp", ".2f") if pct else (1.0, "", ".4g")

        def show(x: float | None, sign: bool = False, *, scale: float = scale,
                 fmt: str = fmt) -> str:
            return "-" if x is None else format(x * scale, ("+" if sign else "") + fmt)

        ci = "-" if d.low is None else f"[{show(d.low, True)}, {show(d.high, True)}]"
        table.add_row(LABELS.get(d.metric, d.metric) + (" (%)" if pct else ""), show(d.a),
                      show(d.b),
                      show(d.diff, True) + (unit if d.diff is not None else ""),
                      escape(ci), str(d.n))
    return table
