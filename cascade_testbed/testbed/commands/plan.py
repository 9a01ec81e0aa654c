"""`testbed plan`: CascadeServe's offline phase (testbed/plan/, docs/cascadeserve.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cascade_testbed.common.config import ScenarioError
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.commands.shared import console
from cascade_testbed.testbed.console import print_plan


def plan(scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
         out: Annotated[Path, typer.Option(help="where to write the plan (JSON)")]
         = Path("gear_plan.json"),
         max_load: Annotated[int | None, typer.Option(
             help="largest load level to plan (samples/s over all devices; default: the "
                  "scenario's peak x 1.25)")] = None,
         no_cascade: Annotated[bool, typer.Option(
             "--no-cascade", help="single models only: every sample goes to the server")]
         = False) -> None:
    """CascadeServe's offline phase: profile the scenario's models, find the accuracy/cost
    Pareto front of cascades, and choose a gear for every load level. Use the plan with
    `[policy] name = "gears"`, `params.plan = "PLAN.json"` (a gears run without a plan makes
    its own)."""
    from cascade_testbed.common.gear_plan import write_plan
    from cascade_testbed.testbed.plan.build import PlanOptions, build_plan

    try:
        cfg = load_scenario(scenario)
        result = build_plan(cfg, PlanOptions(max_rps=max_load, no_cascade=no_cascade))
    except (ScenarioError, ValueError, LookupError) as exc:
        console.print(f"[red]cannot plan:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    write_plan(result, out)
    print_plan(result, console)
    console.print(f"plan: {escape(str(out))}")
