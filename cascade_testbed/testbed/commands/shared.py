"""What the command modules share: the console every command prints to, the options several
commands take, and the printing they have in common (--json, --expect, reused runs)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cascade_testbed.common.files import TOKEN_ENV
from cascade_testbed.testbed.console import HarnessConsole
from cascade_testbed.testbed.results.expect import Expectation, ExpectError, parse_all
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT

# `a:b:c` stays as written (`:b:` is an emoji code); plain and wide in a pipe or a file
console = HarnessConsole(emoji=False)

POLICY_HELP = ("scheduler: static | multitasc | multitasc++ | gears | uniform-aimd | "
               "server-only | device-only, an installed one, or package.module:Class "
               "(testbed policies lists them)")
Duration = Annotated[float | None, typer.Option("--duration", help="seconds of arrivals")]
SloMs = Annotated[float | None, typer.Option("--slo-ms", help="end-to-end latency SLO (ms)")]
Token = Annotated[str | None, typer.Option(
    envvar=TOKEN_ENV, help=f"the token devices present (or set {TOKEN_ENV})")]
TokenFile = Annotated[Path | None, typer.Option(help="read the token from this file")]
AsJson = Annotated[bool, typer.Option(
    "--json", help="print the summary (summary.json's content) as JSON on stdout, last; "
                   "everything else goes to stderr")]
ReuseAny = Annotated[bool, typer.Option(
    "--reuse-any", help="keep every finished run, even one made by other code or another "
                        "scenario than today's (the output lists them)")]


@contextlib.contextmanager
def human_output(to_stderr: bool) -> Iterator[None]:
    """With --json, tables and progress go to stderr so that stdout is the JSON alone."""
    before = console.stderr
    console.stderr = to_stderr or before
    try:
        yield
    finally:
        console.stderr = before


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2), flush=True)


def read_expectations(texts: list[str] | None) -> list[Expectation]:
    """Parsed before anything starts: a typo must not cost a run."""
    try:
        return parse_all(texts or [])
    except ExpectError as exc:
        console.print(f"[red]bad option:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def print_reuse(stale: dict[str, str], reused_other: dict[str, str]) -> None:
    """Say which finished runs are run again because other code or another scenario made
    them, and which are kept anyway (--reuse-any)."""
    if stale:
        first, why = next(iter(stale.items()))
        console.print(f"[yellow]{len(stale)} finished runs are run again[/yellow] (e.g. "
                      f"{escape(first)}: {escape(why)}); --reuse-any keeps them")
    if reused_other:
        first, why = next(iter(reused_other.items()))
        console.print(f"[yellow]--reuse-any: keeping {len(reused_other)} runs that other code "
                      f"or another scenario made[/yellow] (e.g. {escape(first)}: "
                      f"{escape(why)})")
