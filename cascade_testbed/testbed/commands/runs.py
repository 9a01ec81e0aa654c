"""`testbed up`, `run`, `sweep`: runs of a scenario, on this host or over a Ray cluster. Thin:
options -> ScenarioConfig -> orchestrator -> summary printed -> exit code (`testbed.verdict`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cascade_testbed.common.config import ScenarioConfig, ScenarioError
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.commands.dashboard import start_dashboard
from cascade_testbed.testbed.commands.parts import check_policy
from cascade_testbed.testbed.commands.shared import (
    POLICY_HELP,
    AsJson,
    Duration,
    ReuseAny,
    SloMs,
    console,
    human_output,
    print_json,
    print_reuse,
    read_expectations,
)
from cascade_testbed.testbed.console import LiveProgress, SweepProgress, print_summary
from cascade_testbed.testbed.orchestrator import TOKEN_FILE, RunError, default_run_dir, run_scenario
from cascade_testbed.testbed.results.expect import Expectation, unmet, with_expectations
from cascade_testbed.testbed.verdict import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    exit_code,
    last_line,
    stopped_line,
    unfaithful_line,
)

Policy = Annotated[str | None, typer.Option(help=POLICY_HELP,
                                            envvar="TESTBED_POLICY")]
Mix = Annotated[str | None, typer.Option(help="ratio of low:mid:high devices, e.g. 1:1:1")]
Seed = Annotated[int | None, typer.Option(help="seed of arrivals, data order and jitter")]
Out = Annotated[Path | None, typer.Option(help="run folder (default runs/<time>-<name>...)")]
MaxFaultFallback = Annotated[float | None, typer.Option(
    help="largest share of samples that may fall back for a non-load cause (default 0.05; "
         "no limit when the scenario plans faults)")]
Force = Annotated[bool, typer.Option("--force", help="run even if the host's memory looks "
                                                     "too small for the devices")]
Ray = Annotated[str | None, typer.Option(
    "--ray", help="spread the run over a Ray cluster: auto, ray://host:port, or local:N (a "
                  "throwaway cluster of N nodes on this host); needs the 'ray' extra "
                  "(docs/cluster.md)")]
Dashboard = Annotated[bool, typer.Option(
    "--dashboard", help="serve a live view of the run on 127.0.0.1 (docs/dashboard.md)")]
DashboardPort = Annotated[int, typer.Option(
    help="port of the live view (0 picks a free one)")]
Expect = Annotated[list[str] | None, typer.Option(
    "--expect", metavar="CHECK",
    help="a check the run must pass, METRIC OP NUMBER (OP: >= <= > < ==), e.g. "
         "\"slo_satisfaction>=0.9\" or \"latency_ms.p95<=150\"; repeatable; a failed one "
         "makes the command exit 1")]


def apply_overrides(cfg: ScenarioConfig, *, devices: int | None = None,
                    policy: str | None = None, duration: float | None = None,
                    slo_ms: float | None = None, mix: str | None = None,
                    seed: int | None = None,
                    max_fault_fallback: float | None = None) -> ScenarioConfig:
    """Command-line options over a scenario; re-validated as a whole."""
    dev = cfg.devices
    if devices is not None:
        if devices < 1:
            raise ScenarioError(f"--devices must be at least 1 (got {devices}): a run without "
                                "devices measures nothing")
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
    if max_fault_fallback is not None:
        changes["max_fault_fallback"] = max_fault_fallback
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def up(devices: Annotated[int, typer.Option(help="number of device processes")] = 40,
       policy: Policy = None, duration: Duration = None, slo_ms: SloMs = None, mix: Mix = None,
       seed: Seed = None, out: Out = None, max_fault_fallback: MaxFaultFallback = None,
       force: Force = False, dashboard: Dashboard = False,
       dashboard_port: DashboardPort = 8089, expect: Expect = None,
       as_json: AsJson = False, ray: Ray = None) -> None:
    """Start the server and N devices on the default heterogeneous scenario, run, summarise.
    Exits 0 when the run did what was asked, 1 when it did not (the reason is the last line),
    2 on a bad option, 130 on Ctrl-C."""
    with human_output(as_json):
        try:
            cfg = apply_overrides(ScenarioConfig(), devices=devices, policy=policy,
                                  duration=duration, slo_ms=slo_ms, mix=mix, seed=seed,
                                  max_fault_fallback=max_fault_fallback)
        except ScenarioError as exc:
            console.print(f"[red]bad option:[/red] {escape(str(exc))}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        _execute(cfg, out, force, dashboard_port if dashboard else None,
                 read_expectations(expect), as_json, ray)


def run(scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
        devices: Annotated[int | None, typer.Option(help="override the device count")] = None,
        policy: Policy = None, duration: Duration = None, slo_ms: SloMs = None,
        mix: Mix = None, seed: Seed = None, out: Out = None,
        max_fault_fallback: MaxFaultFallback = None, force: Force = False,
        dashboard: Dashboard = False, dashboard_port: DashboardPort = 8089,
        expect: Expect = None, as_json: AsJson = False, ray: Ray = None,
        check: Annotated[bool, typer.Option(
            "--check", help="only check the scenario, its zoo, models, data and policy (exit "
                            "0 or 2); start nothing, write nothing")] = False) -> None:
    """Run a scenario file (options override its values); exit codes as for `up`."""
    with human_output(as_json):
        try:
            cfg = apply_overrides(load_scenario(scenario), devices=devices, policy=policy,
                                  duration=duration, slo_ms=slo_ms, mix=mix, seed=seed,
                                  max_fault_fallback=max_fault_fallback)
        except ScenarioError as exc:
            console.print(f"[red]bad scenario:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        if check:
            checked = _preflight(cfg, force)
            console.print(f"zoo {escape(str(checked.zoo))}: {escape(str(checked.data))}",
                          soft_wrap=True)
            for line in checked.lines:
                console.print(f"  {escape(str(line))}", soft_wrap=True)
            console.print(f"scenario ok: {escape(str(scenario))} ({cfg.devices.count} devices, "
                          f"policy {escape(cfg.policy.name)})", soft_wrap=True)
            return
        _execute(cfg, out, force, dashboard_port if dashboard else None,
                 read_expectations(expect), as_json, ray)


def _ray_address(cfg: ScenarioConfig, ray: str | None) -> str:
    """`--ray`, else the scenario's `[cluster] ray`; "" runs on this host."""
    from cascade_testbed.common.config import check_ray_address

    address = cfg.cluster.ray if ray is None else ray
    try:
        return check_ray_address(address)
    except ScenarioError as exc:
        console.print(f"[red]bad option:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _run_one(cfg: ScenarioConfig, run_dir: Path, progress: Any = None, force: bool = False,
             address: str = "", on_listening: Any = None, checked: bool = False) -> Any:
    """One run, on this host or (with a Ray address) over a cluster."""
    if not address:
        return run_scenario(cfg, run_dir, progress, force=force, checked=checked,
                            on_listening=on_listening)
    from cascade_testbed.testbed.cluster.driver import run_on_cluster

    return run_on_cluster(cfg, run_dir, address, progress, checked=checked,
                          on_listening=on_listening)


def _preflight(cfg: ScenarioConfig, force: bool) -> Any:
    """Policy, host memory, zoo, models and data: everything found before a process starts
    (exit 2 with one line)."""
    from cascade_testbed.testbed.orchestrator import check_host_memory
    from cascade_testbed.testbed.preflight import CheckFailed, check_scenario

    check_policy(cfg.policy)
    try:
        if not force:
            check_host_memory(cfg.devices.count)
        return check_scenario(cfg)
    except (CheckFailed, RunError) as exc:
        console.print(f"[red]bad scenario:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _execute(cfg: ScenarioConfig, out: Path | None, force: bool = False,
             dashboard_port: int | None = None,
             expectations: list[Expectation] | None = None, as_json: bool = False,
             ray: str | None = None) -> None:
    address = _ray_address(cfg, ray)
    # On a real cluster the devices' memory is the nodes', not this host's.
    _preflight(cfg, force or (bool(address) and not address.startswith("local:")))
    run_dir = out or default_run_dir(cfg)
    view = start_dashboard(dashboard_port, cfg.name) if dashboard_port is not None else None
    console.print(f"run folder: {escape(str(run_dir))}")

    def listening(url: str) -> None:
        """The URLs to scrape or watch the run; the token stays in its file."""
        console.print(f"server: {url}  metrics: {url}/metrics  "
                      f"(token: {escape(str(run_dir / TOKEN_FILE))})", soft_wrap=True)
        if view is not None:
            from cascade_testbed.testbed.dashboard.app import Target

            view.follow(Target(url, (run_dir / TOKEN_FILE).read_text().strip(),
                               run_dir / "events.harness.jsonl"))

    try:
        with LiveProgress(console) as progress:
            result = _run_one(cfg, run_dir, progress, force, address, listening, checked=True)
    except RunError as exc:
        console.print(f"[red]run failed:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    finally:
        if view is not None:
            view.close()
    summary = with_expectations(result.summary, expectations or [])
    print_summary(summary, console)
    console.print(f"run folder: {escape(str(result.run_dir))}")
    problems = summary["run"].get("problems", [])
    code = exit_code(problems, result.interrupted, result.stopped_by)
    doubts = list((summary.get("emulation") or {}).get("unfaithful") or [])
    if result.interrupted and not problems:
        if doubts:
            console.print(f"[yellow]{escape(unfaithful_line(doubts))}[/yellow]", soft_wrap=True)
        console.print(f"[yellow]{escape(stopped_line(result.stopped_by))}[/yellow]")
    if problems:
        console.print(f"[red]{escape(last_line(problems, doubts))}[/red]", soft_wrap=True)
    elif doubts and not result.interrupted:
        console.print(f"[yellow]{escape(unfaithful_line(doubts))}[/yellow]", soft_wrap=True)
    if as_json:
        print_json(summary)
    raise typer.Exit(code)


def sweep(scenario: Annotated[Path, typer.Argument(help="scenario TOML file with a [sweep] table")],
          out: Annotated[Path | None, typer.Option(
              help="sweep folder (default runs/sweep-<name>); reused to resume")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs only")]
          = False, expect: Expect = None, ray: Ray = None, reuse_any: ReuseAny = False) -> None:
    """Run every combination of the scenario's [sweep] axes, one after another. Resumable:
    run it again with the same --out and finished runs are skipped, unless other code or
    another scenario made them (--reuse-any keeps them anyway, and says so). With --expect,
    every finished run (resumed ones too) must pass the checks."""
    from cascade_testbed.testbed.sweep import (
        Reuse,
        expand,
        parse_axes,
        partition,
        run_sweep,
        summaries,
    )

    try:
        base = load_scenario(scenario)
        axes = parse_axes(base.sweep)
        points = expand(base, axes)
    except ScenarioError as exc:
        console.print(f"[red]bad sweep:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not axes:
        console.print(f"[red]{escape(str(scenario))} has no {escape('[sweep]')} table[/red]",
                      soft_wrap=True)
        raise typer.Exit(2)
    expectations = read_expectations(expect)
    for point in points:
        check_policy(point.cfg.policy)
    address = _ray_address(base, ray)
    sweep_dir = out or Path("runs") / f"sweep-{base.name}"
    total_s = sum(p.cfg.duration_s for p in points)
    console.print(f"{len(points)} runs ({' x '.join(f'{a.name}[{len(a.values)}]' for a in axes)})"
                  f", {total_s / 60:.1f} min of arrivals -> {escape(str(sweep_dir))}")
    reuse = Reuse(any=reuse_any)
    todo, planned = partition(points, sweep_dir, reuse)
    print_reuse(planned.stale, planned.reused_other)
    if dry_run:
        for point in todo:
            console.print(f"  {point.name}")
        return
    with SweepProgress(console) as progress:
        troubled: dict[str, list[str]] = {}

        def run_one(cfg: ScenarioConfig, run_dir: Path) -> dict[str, Any]:
            summary: dict[str, Any] = _run_one(cfg, run_dir, address=address).summary
            if summary["run"].get("problems"):
                troubled[run_dir.name] = summary["run"]["problems"]
            return summary

        outcome = run_sweep(points, axes, sweep_dir, run_one, progress.update, reuse)
    for _, summary, run_dir in summaries(sweep_dir) if expectations else ():
        missed = unmet(summary, expectations)
        if missed:
            troubled.setdefault(run_dir.name, []).extend(missed)
    console.print(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)} already done, "
                  f"failed {len(outcome.failed)}; index: {escape(str(sweep_dir / 'index.csv'))}")
    for name, error in outcome.failed.items():
        console.print(f"[red]{escape(name)}:[/red] {escape(error)}")
    for name, problems in troubled.items():
        console.print(f"[red]{escape(name)}:[/red] {escape('; '.join(problems))}")
    console.print(f"figures: testbed report {escape(str(sweep_dir))}")
    if outcome.failed or troubled:
        console.print(f"[red]sweep failed: {len(outcome.failed)} runs could not run, "
                      f"{len(troubled)} runs did not do what their scenario asked"
                      f"{' or --expect required' if expectations else ''}[/red]")
        raise typer.Exit(EXIT_FAILED)
