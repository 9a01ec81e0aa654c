"""`testbed watch`, and the live view `up`/`run --dashboard` serve: testbed/dashboard/ on
127.0.0.1 (docs/dashboard.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cascade_testbed.common.files import InputFileError, resolve_token
from cascade_testbed.testbed.commands.shared import Token, TokenFile, console
from cascade_testbed.testbed.orchestrator import TOKEN_FILE
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT


def start_dashboard(port: int, title: str) -> Any:
    """The live view, listening before the run starts so its URL is printed first."""
    from cascade_testbed.testbed.dashboard.app import Dashboard

    view = Dashboard(port, title)
    try:
        url = view.start()
    except OSError as exc:
        console.print(f"[red]cannot serve the dashboard on 127.0.0.1:{port}:[/red] "
                      f"{escape(str(exc.strerror or exc))}; --dashboard-port 0 picks a free port")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"dashboard: {url}", soft_wrap=True)
    return view


def watch(url: Annotated[str, typer.Argument(
              help="the run's server URL, printed at the start of `up`/`run`")],
          port: Annotated[int, typer.Option(help="port of the page (0 picks a free one)")]
          = 8089,
          token: Token = None, token_file: TokenFile = None,
          run_dir: Annotated[Path | None, typer.Option(
              help="the run's folder: its .token (unless given otherwise) and its events "
                   "(faults as markers)")] = None) -> None:
    """Serve a live view of a run already going, on 127.0.0.1, until the run ends (its events
    say so, with --run-dir; else its server has been silent for 10 s) or Ctrl-C. The token
    stays in this process."""
    import asyncio
    from urllib.parse import urlsplit

    from cascade_testbed.testbed.dashboard.app import Target, WatchError
    from cascade_testbed.testbed.dashboard.app import watch as serve_view

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        console.print(f"[red]bad URL {url[:80]!r}:[/red] give the server's URL, "
                      "e.g. http://127.0.0.1:40123")
        raise typer.Exit(EXIT_BAD_INPUT)
    if token_file is None and not token and run_dir is not None:
        token_file = run_dir / TOKEN_FILE
    try:
        secret = resolve_token(token, token_file)
    except InputFileError as exc:
        console.print(f"[red]bad token file:[/red] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    target = Target(url.rstrip("/"), secret,
                    run_dir / "events.harness.jsonl" if run_dir is not None else None)
    try:
        why = asyncio.run(serve_view(target, port, lambda page: console.print(
            f"dashboard: {page}  (watching {target.server_url}; Ctrl-C stops)",
            soft_wrap=True)))
    except WatchError as exc:
        console.print(f"[red]cannot watch:[/red] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        console.print("[yellow]stopped[/yellow]")
        raise typer.Exit(130) from None
    console.print(why)
