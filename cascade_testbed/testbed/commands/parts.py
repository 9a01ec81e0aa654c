"""`testbed policies`, `testbed server`, `testbed device`: the parts of the system under test one
at a time, and the check of a run's policy before anything starts. The one command module that
imports `server` and `emulated_devices`, and only inside functions, so that the harness stays
light (tests/unit/test_layering.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from cascade_testbed.common.config import PolicyConfig
from cascade_testbed.common.files import TOKEN_ENV
from cascade_testbed.common.names import is_policy_spec
from cascade_testbed.testbed.commands.shared import (
    POLICY_HELP,
    Duration,
    SloMs,
    Token,
    TokenFile,
    console,
)
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT


def check_policy(policy: PolicyConfig) -> None:
    """The policy resolves (built-in, entry point or `module:Class`) and its params have known
    names and kinds, before any process starts; else one line and exit 2. Like `python -m`, a
    spec's module is also looked for in the current folder (last, so nothing is shadowed); the
    server process inherits this search path."""
    from cascade_testbed.server import scheduling  # pure lookup, no aiohttp

    search_cwd(policy.name)
    try:
        scheduling.check_policy(policy.name, policy.params)
    except scheduling.PolicyError as exc:
        console.print(f"[red]bad policy:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def search_cwd(policy: str) -> None:
    if is_policy_spec(policy) and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def policies() -> None:
    """List every policy a scenario may name: the built-ins and those installed packages
    declare (entry point group `cascade_testbed.policies`), with their parameters and
    defaults (`[policy] params`). Any `package.module:Class` subclassing `Policy` works too
    (docs/policies.md)."""
    from cascade_testbed.server.scheduling.plugins import available

    for entry in available():
        console.print(f"[bold]{escape(entry.name)}[/bold]  ({entry.source}, "
                      f"{escape(entry.target)})", highlight=False)
        if entry.error:
            console.print(f"  [red]cannot be used:[/red] {escape(entry.error)}")
            continue
        params = ", ".join(f"{k} = {_toml_value(v)}" for k, v in entry.params.items())
        for line in (entry.doc, f"params: {params or 'none'}"):
            if line:
                console.print(Padding(Text(line), (0, 0, 0, 2)))


def _toml_value(value: Any) -> str:
    """A default as it is written in a scenario file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def server(host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
           port: Annotated[int, typer.Option(help="port (0 picks a free one)")] = 8470,
           policy: Annotated[str, typer.Option(help=POLICY_HELP)] = "multitasc",
           slo_ms: SloMs = None,
           scenario: Annotated[Path | None, typer.Option(help="server settings from a file")]
           = None,
           token: Token = None, token_file: TokenFile = None,
           public_metrics: Annotated[bool, typer.Option(
               "--public-metrics", help="serve /v1/status and /metrics without the token")]
           = False) -> None:
    """Run the server alone; it prints the URL it listens on."""
    search_cwd(policy)
    argv = ["--host", host, "--port", str(port), "--policy", policy]
    argv += _token_args(token, token_file)
    if slo_ms is not None:
        argv += ["--slo-ms", str(slo_ms)]
    if scenario is not None:
        argv += ["--scenario", str(scenario)]
    if public_metrics:
        argv.append("--public-metrics")
    from cascade_testbed.server.main import main

    main(argv)


def _token_args(token: str | None, token_file: Path | None) -> list[str]:
    """The token for `python -m cascade_testbed.server`/`.emulated_devices`, passed in-process
    (not through this process's command line, which `ps` shows)."""
    if token and not token_file and os.environ.get(TOKEN_ENV) != token:
        console.print("[yellow]warning:[/yellow] --token is visible to other users of this "
                      f"host (ps); prefer {TOKEN_ENV} or --token-file")
    if token_file is not None:
        return ["--token-file", str(token_file)]
    return ["--token", token] if token else []


def device(server: Annotated[str, typer.Option("--server", help="server URL")],
           tier: Annotated[str, typer.Option(help="low | mid | high")] = "mid",
           device_id: Annotated[str | None, typer.Option(help="defaults to <tier>-manual-N")]
           = None,
           index: Annotated[int, typer.Option(help="seeds this device's streams")] = 0,
           duration: Duration = None,
           rate_hz: Annotated[float | None, typer.Option(help="samples per second")] = None,
           token: Token = None, token_file: TokenFile = None,
           out: Annotated[Path | None, typer.Option(help="write records here")] = None,
           scenario: Annotated[Path | None, typer.Option(help="tiers from a file")] = None,
           ) -> None:
    """Run one device by hand against a running server."""
    argv = ["--server", server, "--tier", tier, "--index", str(index),
            *_token_args(token, token_file)]
    for flag, value in (("--device-id", device_id), ("--duration", duration),
                        ("--rate-hz", rate_hz), ("--out", out), ("--scenario", scenario)):
        if value is not None:
            argv += [flag, str(value)]
    from cascade_testbed.emulated_devices.main import main

    main(argv)
