"""`testbed trace convert`: a `[seconds, Mbit/s]` throughput log as a Mahimahi link trace
(`common.link_trace`, docs/emulation.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cascade_testbed.common.files import InputFileError, read_text
from cascade_testbed.common.link_trace import (
    MAX_LINK_TRACE_BYTES,
    PACKET_BYTES,
    LinkTraceError,
    format_trace,
    parse_throughput_csv,
    throughput_to_trace,
)
from cascade_testbed.testbed.commands.shared import console
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT

app = typer.Typer(help="Link traces in Mahimahi's format (docs/emulation.md).",
                  no_args_is_help=True)


@app.command("convert")
def convert(source: Annotated[Path, typer.Argument(
                help="CSV of seconds, Mbit/s (a header line and # comments are skipped)")],
            out: Annotated[Path, typer.Argument(help="the trace file to write")],
            scale: Annotated[float, typer.Option(
                help="multiply every rate (e.g. 0.5 for a weaker device)")] = 1.0) -> None:
    """Turn a throughput log into mm-link's format: one line per 1,500-byte delivery
    opportunity, in milliseconds from the log's first row. Name the file in a scenario as
    `[tiers.NAME.uplink] trace = "OUT"` (or downlink)."""
    try:
        if not 0 < scale <= 1000:
            raise LinkTraceError(f"--scale must be in (0, 1000] (got {scale:g})")
        rows = parse_throughput_csv(read_text(source, MAX_LINK_TRACE_BYTES, "throughput log"),
                                    str(source))
        times = throughput_to_trace([(t, r * scale) for t, r in rows])
    except (InputFileError, LinkTraceError) as exc:
        console.print(f"[red]bad input:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        out.write_text(format_trace(times))
    except OSError as exc:
        console.print(f"[red]cannot write {escape(str(out))}:[/red] {exc.strerror or exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    mean = len(times) * PACKET_BYTES * 8 / times[-1] / 1e3
    console.print(f"{escape(str(out))}: {len(times)} opportunities over {times[-1] / 1e3:g} s "
                  f"(mean {mean:.2f} Mbit/s)", soft_wrap=True)
