"""The `testbed` command (the console script, and `python -m cascade_testbed`): the typer app,
built from testbed/commands/, one module per group of commands, each thin over the library."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from cascade_testbed.testbed.commands import (
    claims,
    dashboard,
    parts,
    plan,
    results,
    runs,
    trace,
    zoo,
)

app = typer.Typer(help="Emulated edge devices + one shared batching server + cascade schedulers.",
                  no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None)  # help texts are plain: `[sweep]` stays as written


def _version(show: bool) -> None:
    if show:
        try:
            print(f"testbed {version('cascade-testbed')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("testbed (not installed)")
        raise typer.Exit()


@app.callback()
def main(show_version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")]
         = False) -> None:
    """Emulated edge devices + one shared batching server + cascade schedulers."""


# In the order `testbed --help` lists them (a group, zoo, comes after the commands).
for command in (parts.policies, runs.up, runs.run, runs.sweep, claims.claims, plan.plan,
                results.report, results.compare, parts.server, parts.device, dashboard.watch):
    app.command()(command)
app.add_typer(zoo.app, name="zoo")
app.add_typer(trace.app, name="trace")
