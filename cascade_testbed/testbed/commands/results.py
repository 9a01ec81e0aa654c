"""`testbed report`, `testbed compare`: what finished runs measured, printed, drawn and set
side by side (testbed/results/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cascade_testbed.testbed.commands.shared import AsJson, console, human_output, print_json
from cascade_testbed.testbed.console import compare_table, print_summary
from cascade_testbed.testbed.results.collect import collect
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT, last_line, partial_reasons


def report(run_dir: Annotated[Path, typer.Argument(help="a run folder or a sweep folder")],
           devices: Annotated[bool, typer.Option("--devices",
                                                 help="also list every device")] = False,
           figures: Annotated[bool, typer.Option(help="write PNG figures and report.md")]
           = True, as_json: AsJson = False) -> None:
    """Print a run's summary and write its figures; for a sweep, write the sweep's figures
    (SLO satisfaction, accuracy, throughput, forward rate vs devices, latency CDFs,
    thresholds over time) and a Markdown table. Rebuilds a cut-short run's summary. With
    --json, the summary (of a sweep: its index) goes to stdout as JSON."""
    with human_output(as_json):
        data = _report(run_dir, devices, figures)
    if as_json:
        print_json(data)


def _report(run_dir: Path, devices: bool, figures: bool) -> dict[str, Any]:
    if (run_dir / "sweep.json").is_file():
        return _report_sweep(run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary: dict[str, Any] = json.loads(summary_path.read_text())
    elif (run_dir / "scenario.toml").is_file():
        summary = collect(run_dir)
    else:
        console.print(f"[red]{escape(str(run_dir))} is not a run folder or a sweep folder[/red]")
        raise typer.Exit(2)
    print_summary(summary, console, per_device=devices)
    run = summary.get("run", {})
    if run.get("partial"):
        console.print(f"[yellow]partial run:[/yellow] {'; '.join(partial_reasons(run))}. The "
                      "numbers cover the records that were written.")
    if figures:
        from cascade_testbed.testbed.results.figures import run_figures
        from cascade_testbed.testbed.results.markdown import run_markdown

        paths = run_figures(run_dir, summary, run_dir / "figures")
        md = run_markdown(summary, paths, run_dir / "report.md")
        console.print(f"figures: {escape(str(run_dir / 'figures'))}; table: "
                      f"{escape(str(md))}")
    problems = run.get("problems") or []
    if problems:
        console.print(f"[red]{escape(last_line(problems))}[/red]", soft_wrap=True)
    return summary


def _report_sweep(sweep_dir: Path) -> dict[str, Any]:
    from cascade_testbed.testbed.results.figures import sweep_figures
    from cascade_testbed.testbed.results.markdown import sweep_markdown
    from cascade_testbed.testbed.sweep import load_index, summaries

    index = load_index(sweep_dir)
    axes = [a["name"] for a in index["axes"]]
    points = list(summaries(sweep_dir))
    pending = sum(r["status"] != "done" for r in index["runs"])
    if not points:
        console.print(f"[red]{escape(str(sweep_dir))}: no finished runs yet[/red]")
        raise typer.Exit(2)
    paths = sweep_figures(points, axes, sweep_dir / "figures")
    md = sweep_markdown(f"Sweep {sweep_dir.name}", axes, points, paths,
                        sweep_dir / "report.md")
    console.print(f"{len(points)} runs ({pending} not finished); figures: "
                  f"{escape(str(sweep_dir / 'figures'))}; table: {escape(str(md))}")
    return index


def compare(run_a: Annotated[Path, typer.Argument(
                help="A: a run folder, or a folder of runs (a sweep, a claim arm's seed-k)")],
            run_b: Annotated[Path, typer.Argument(help="B: the same")],
            as_json: Annotated[bool, typer.Option(
                "--json", help="print the comparison as JSON on stdout")] = False) -> None:
    """How B's headline figures differ from A's (B - A). Runs are paired by seed (or by
    sweep point); with two or more pairs each difference has a paired 95 % t interval, with
    one run per side it is just the difference."""
    from cascade_testbed.testbed.results.compare import compare as compare_runs
    from cascade_testbed.testbed.results.folders import runs_in

    with human_output(as_json):
        try:
            side_a, side_b = runs_in(run_a), runs_in(run_b)
        except ValueError as exc:
            console.print(f"[red]cannot compare:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        result = compare_runs(side_a, side_b)
        console.print(compare_table(result, str(run_a), str(run_b)))
        for side, names in (("A", result.unpaired_a), ("B", result.unpaired_b)):
            if result.paired and names:
                console.print(f"[yellow]no partner in the other side[/yellow] ({side}): "
                              f"{escape(', '.join(names))}")
    if as_json:
        print_json({"a": str(run_a), "b": str(run_b), **result.to_json()})
