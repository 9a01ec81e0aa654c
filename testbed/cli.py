"""The `testbed` command. Thin: options -> ScenarioConfig -> orchestrator/report -> exit code."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from testbed.collect import collect
from testbed.config import ScenarioConfig, ScenarioError, load_scenario
from testbed.orchestrator import RunError, default_run_dir, run_scenario
from testbed.report import LiveProgress, print_summary

app = typer.Typer(help="Emulated edge devices + one shared batching server + cascade schedulers.",
                  no_args_is_help=True, add_completion=False)
console = Console()

Policy = Annotated[str | None, typer.Option(help="scheduler: static | multitasc",
                                            envvar="TESTBED_POLICY")]
Duration = Annotated[float | None, typer.Option("--duration", help="seconds of arrivals")]
SloMs = Annotated[float | None, typer.Option("--slo-ms", help="end-to-end latency SLO (ms)")]
Mix = Annotated[str | None, typer.Option(help="ratio of low:mid:high devices, e.g. 1:1:1")]
Seed = Annotated[int | None, typer.Option(help="seed of arrivals, data order and jitter")]
Out = Annotated[Path | None, typer.Option(help="run folder (default runs/<time>-<name>...)")]


def apply_overrides(cfg: ScenarioConfig, *, devices: int | None = None,
                    policy: str | None = None, duration: float | None = None,
                    slo_ms: float | None = None, mix: str | None = None,
                    seed: int | None = None) -> ScenarioConfig:
    """Command-line options over a scenario; re-validated as a whole."""
    dev = cfg.devices
    if devices is not None:
        dev = dataclasses.replace(dev, count=devices)
    if mix is not None:
        dev = dataclasses.replace(dev, mix=mix)
    changes: dict[str, object] = {"devices": dev}
    if policy is not None:
        changes["policy"] = dataclasses.replace(cfg.policy, name=policy,
                                                params=cfg.policy.params
                                                if policy == cfg.policy.name else {})
    if duration is not None:
        changes["duration_s"] = duration
    if slo_ms is not None:
        changes["slo_ms"] = slo_ms
    if seed is not None:
        changes["seed"] = seed
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def _execute(cfg: ScenarioConfig, out: Path | None) -> None:
    _check_policy(cfg.policy.name)
    run_dir = out or default_run_dir(cfg)
    try:
        with LiveProgress(console) as progress:
            result = run_scenario(cfg, run_dir, progress)
    except RunError as exc:
        console.print(f"[red]run failed:[/red] {exc}")
        raise typer.Exit(2) from None
    print_summary(result.summary, console)
    console.print(f"run folder: {result.run_dir}")
    if result.summary["samples"]["lost"]:
        console.print(f"[red]{result.summary['samples']['lost']} samples lost[/red]")
        raise typer.Exit(1)
    if result.interrupted:
        raise typer.Exit(130)


def _check_policy(name: str) -> None:
    # Imported by name: the harness does not load the server package for its own use.
    policies = importlib.import_module("server.scheduling").POLICIES
    if name not in policies:
        console.print(f"[red]unknown policy {name!r}[/red]; known: {', '.join(sorted(policies))}")
        raise typer.Exit(2)


@app.command()
def up(devices: Annotated[int, typer.Option(help="number of device processes")] = 40,
       policy: Policy = None, duration: Duration = None, slo_ms: SloMs = None, mix: Mix = None,
       seed: Seed = None, out: Out = None) -> None:
    """Start the server and N devices on the default heterogeneous scenario, run, summarise."""
    try:
        cfg = apply_overrides(ScenarioConfig(), devices=devices, policy=policy,
                              duration=duration, slo_ms=slo_ms, mix=mix, seed=seed)
    except ScenarioError as exc:
        console.print(f"[red]bad option:[/red] {exc}")
        raise typer.Exit(2) from None
    _execute(cfg, out)


@app.command()
def run(scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
        devices: Annotated[int | None, typer.Option(help="override the device count")] = None,
        policy: Policy = None, duration: Duration = None, slo_ms: SloMs = None,
        mix: Mix = None, seed: Seed = None, out: Out = None) -> None:
    """Run a scenario file (options override its values)."""
    try:
        cfg = apply_overrides(load_scenario(scenario), devices=devices, policy=policy,
                              duration=duration, slo_ms=slo_ms, mix=mix, seed=seed)
    except ScenarioError as exc:
        console.print(f"[red]bad scenario:[/red] {exc}")
        raise typer.Exit(2) from None
    _execute(cfg, out)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")],
           devices: Annotated[bool, typer.Option("--devices",
                                                 help="also list every device")] = False
           ) -> None:
    """Print a run's summary; rebuilds it from the records if the run was cut short."""
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    elif (run_dir / "scenario.toml").is_file():
        summary = collect(run_dir)
    else:
        console.print(f"[red]{run_dir} is not a run folder[/red]")
        raise typer.Exit(2)
    print_summary(summary, console, per_device=devices)
    run = summary.get("run", {})
    if run.get("partial"):
        why = []
        if not run.get("harness_ended", True):
            why.append("the harness did not finish")
        if run.get("interrupted"):
            why.append("it was interrupted")
        if run.get("devices_without_outcome"):
            why.append(f"{len(run['devices_without_outcome'])} device processes left no "
                       "outcome")
        if run.get("torn_rows"):
            why.append(f"{run['torn_rows']} torn rows")
        console.print(f"[yellow]partial run:[/yellow] {'; '.join(why)}. The numbers cover "
                      "the records that were written.")


@app.command()
def server(host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
           port: Annotated[int, typer.Option(help="port (0 picks a free one)")] = 8470,
           policy: Annotated[str, typer.Option(help="static | multitasc")] = "multitasc",
           slo_ms: SloMs = None,
           scenario: Annotated[Path | None, typer.Option(help="server settings from a file")]
           = None,
           token: Annotated[str, typer.Option(envvar="TESTBED_TOKEN",
                                              help="token devices must present")] = "") -> None:
    """Run the server alone; it prints the URL it listens on."""
    argv = ["--host", host, "--port", str(port), "--policy", policy, "--token", token]
    if slo_ms is not None:
        argv += ["--slo-ms", str(slo_ms)]
    if scenario is not None:
        argv += ["--scenario", str(scenario)]
    importlib.import_module("server.main").main(argv)


@app.command()
def device(server: Annotated[str, typer.Option("--server", help="server URL")],
           tier: Annotated[str, typer.Option(help="low | mid | high")] = "mid",
           device_id: Annotated[str | None, typer.Option(help="defaults to <tier>-manual-N")]
           = None,
           index: Annotated[int, typer.Option(help="seeds this device's streams")] = 0,
           duration: Duration = None,
           rate_hz: Annotated[float | None, typer.Option(help="samples per second")] = None,
           token: Annotated[str, typer.Option(envvar="TESTBED_TOKEN")] = "",
           out: Annotated[Path | None, typer.Option(help="write records here")] = None,
           scenario: Annotated[Path | None, typer.Option(help="tiers from a file")] = None,
           ) -> None:
    """Run one device by hand against a running server."""
    argv = ["--server", server, "--tier", tier, "--index", str(index), "--token", token]
    for flag, value in (("--device-id", device_id), ("--duration", duration),
                        ("--rate-hz", rate_hz), ("--out", out), ("--scenario", scenario)):
        if value is not None:
            argv += [flag, str(value)]
    importlib.import_module("emulated_devices.main").main(argv)
