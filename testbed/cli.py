"""The `testbed` command. Thin: options -> ScenarioConfig -> orchestrator/report -> exit code."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.text import Text

from common.config import PolicyConfig, ScenarioConfig, ScenarioError
from common.files import TOKEN_ENV, InputFileError, resolve_token
from common.names import is_policy_spec
from common.scenario_file import load_scenario
from testbed.console import (
    LiveProgress,
    SweepProgress,
    claims_table,
    compare_table,
    power_table,
    print_plan,
    print_summary,
    tuning_table,
)
from testbed.orchestrator import TOKEN_FILE, RunError, default_run_dir, run_scenario
from testbed.results.collect import collect
from testbed.results.expect import Expectation, ExpectError, parse_all, unmet, with_expectations
from testbed.verdict import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    exit_code,
    last_line,
    partial_reasons,
    stopped_line,
)

app = typer.Typer(help="Emulated edge devices + one shared batching server + cascade schedulers.",
                  no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None)  # help texts are plain: `[sweep]` stays as written
console = Console(emoji=False)  # `a:b:c` stays as written (`:b:` is an emoji code)

POLICY_HELP = ("scheduler: static | multitasc | multitasc++ | gears | uniform-aimd | "
               "server-only | device-only, an installed one, or package.module:Class "
               "(testbed policies lists them)")
Policy = Annotated[str | None, typer.Option(help=POLICY_HELP,
                                            envvar="TESTBED_POLICY")]
Duration = Annotated[float | None, typer.Option("--duration", help="seconds of arrivals")]
SloMs = Annotated[float | None, typer.Option("--slo-ms", help="end-to-end latency SLO (ms)")]
Mix = Annotated[str | None, typer.Option(help="ratio of low:mid:high devices, e.g. 1:1:1")]
Seed = Annotated[int | None, typer.Option(help="seed of arrivals, data order and jitter")]
Out = Annotated[Path | None, typer.Option(help="run folder (default runs/<time>-<name>...)")]
Token = Annotated[str | None, typer.Option(
    envvar=TOKEN_ENV, help=f"the token devices present (or set {TOKEN_ENV})")]
TokenFile = Annotated[Path | None, typer.Option(help="read the token from this file")]
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
AsJson = Annotated[bool, typer.Option(
    "--json", help="print the summary (summary.json's content) as JSON on stdout, last; "
                   "everything else goes to stderr")]
ReuseAny = Annotated[bool, typer.Option(
    "--reuse-any", help="keep every finished run, even one made by other code or another "
                        "scenario than today's (the output lists them)")]
Expect = Annotated[list[str] | None, typer.Option(
    "--expect", metavar="CHECK",
    help="a check the run must pass, METRIC OP NUMBER (OP: >= <= > < ==), e.g. "
         "\"slo_satisfaction>=0.9\" or \"latency_ms.p95<=150\"; repeatable; a failed one "
         "makes the command exit 1")]


def _print_reuse(stale: dict[str, str], reused_other: dict[str, str]) -> None:
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


@contextlib.contextmanager
def _human_output(to_stderr: bool) -> Iterator[None]:
    """With --json, tables and progress go to stderr so that stdout is the JSON alone."""
    before = console.stderr
    console.stderr = to_stderr or before
    try:
        yield
    finally:
        console.stderr = before


def _expectations(texts: list[str] | None) -> list[Expectation]:
    """Parsed before anything starts: a typo must not cost a run."""
    try:
        return parse_all(texts or [])
    except ExpectError as exc:
        console.print(f"[red]bad option:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2), flush=True)


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


def _ray_address(cfg: ScenarioConfig, ray: str | None) -> str:
    """`--ray`, else the scenario's `[cluster] ray`; "" runs on this host."""
    from common.config import check_ray_address

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
    from testbed.cluster.driver import run_on_cluster

    return run_on_cluster(cfg, run_dir, address, progress, checked=checked,
                          on_listening=on_listening)


def _preflight(cfg: ScenarioConfig, force: bool) -> Any:
    """Policy, host memory, zoo, models and data: everything found before a process starts
    (exit 2 with one line)."""
    from testbed.orchestrator import check_host_memory
    from testbed.preflight import CheckFailed, check_scenario

    _check_policy(cfg.policy)
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
    view = _start_dashboard(dashboard_port, cfg.name) if dashboard_port is not None else None
    console.print(f"run folder: {escape(str(run_dir))}")

    def listening(url: str) -> None:
        """The URLs to scrape or watch the run; the token stays in its file."""
        console.print(f"server: {url}  metrics: {url}/metrics  "
                      f"(token: {escape(str(run_dir / TOKEN_FILE))})", soft_wrap=True)
        if view is not None:
            from testbed.dashboard.app import Target

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
    if result.interrupted and not problems:
        console.print(f"[yellow]{escape(stopped_line(result.stopped_by))}[/yellow]")
    if problems:
        console.print(f"[red]{escape(last_line(problems))}[/red]", soft_wrap=True)
    if as_json:
        _print_json(summary)
    raise typer.Exit(code)


def _start_dashboard(port: int, title: str) -> Any:
    """The live view, listening before the run starts so its URL is printed first."""
    from testbed.dashboard.app import Dashboard

    view = Dashboard(port, title)
    try:
        url = view.start()
    except OSError as exc:
        console.print(f"[red]cannot serve the dashboard on 127.0.0.1:{port}:[/red] "
                      f"{escape(str(exc.strerror or exc))}; --dashboard-port 0 picks a free port")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"dashboard: {url}", soft_wrap=True)
    return view


def _check_policy(policy: PolicyConfig) -> None:
    """The policy resolves (built-in, entry point or `module:Class`) and its params have known
    names and kinds, before any process starts; else one line and exit 2. Like `python -m`, a
    spec's module is also looked for in the current folder (last, so nothing is shadowed); the
    server process inherits this search path."""
    from server.scheduling import PolicyError, check_policy  # pure lookup, no aiohttp

    _search_cwd(policy.name)
    try:
        check_policy(policy.name, policy.params)
    except PolicyError as exc:
        console.print(f"[red]bad policy:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _search_cwd(policy: str) -> None:
    if is_policy_spec(policy) and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


@app.command()
def policies() -> None:
    """List every policy a scenario may name: the built-ins and those installed packages
    declare (entry point group `cascade_testbed.policies`), with their parameters and
    defaults (`[policy] params`). Any `package.module:Class` subclassing `Policy` works too
    (docs/policies.md)."""
    from server.scheduling.plugins import available

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


@app.command()
def up(devices: Annotated[int, typer.Option(help="number of device processes")] = 40,
       policy: Policy = None, duration: Duration = None, slo_ms: SloMs = None, mix: Mix = None,
       seed: Seed = None, out: Out = None, max_fault_fallback: MaxFaultFallback = None,
       force: Force = False, dashboard: Dashboard = False,
       dashboard_port: DashboardPort = 8089, expect: Expect = None,
       as_json: AsJson = False, ray: Ray = None) -> None:
    """Start the server and N devices on the default heterogeneous scenario, run, summarise.
    Exits 0 when the run did what was asked, 1 when it did not (the reason is the last line),
    2 on a bad option, 130 on Ctrl-C."""
    with _human_output(as_json):
        try:
            cfg = apply_overrides(ScenarioConfig(), devices=devices, policy=policy,
                                  duration=duration, slo_ms=slo_ms, mix=mix, seed=seed,
                                  max_fault_fallback=max_fault_fallback)
        except ScenarioError as exc:
            console.print(f"[red]bad option:[/red] {escape(str(exc))}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        _execute(cfg, out, force, dashboard_port if dashboard else None,
                 _expectations(expect), as_json, ray)


@app.command()
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
    with _human_output(as_json):
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
                 _expectations(expect), as_json, ray)


@app.command()
def sweep(scenario: Annotated[Path, typer.Argument(help="scenario TOML file with a [sweep] table")],
          out: Annotated[Path | None, typer.Option(
              help="sweep folder (default runs/sweep-<name>); reused to resume")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs only")]
          = False, expect: Expect = None, ray: Ray = None, reuse_any: ReuseAny = False) -> None:
    """Run every combination of the scenario's [sweep] axes, one after another. Resumable:
    run it again with the same --out and finished runs are skipped, unless other code or
    another scenario made them (--reuse-any keeps them anyway, and says so). With --expect,
    every finished run (resumed ones too) must pass the checks."""
    from testbed.sweep import Reuse, expand, parse_axes, partition, run_sweep, summaries

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
    expectations = _expectations(expect)
    for point in points:
        _check_policy(point.cfg.policy)
    address = _ray_address(base, ray)
    sweep_dir = out or Path("runs") / f"sweep-{base.name}"
    total_s = sum(p.cfg.duration_s for p in points)
    console.print(f"{len(points)} runs ({' x '.join(f'{a.name}[{len(a.values)}]' for a in axes)})"
                  f", {total_s / 60:.1f} min of arrivals -> {escape(str(sweep_dir))}")
    reuse = Reuse(any=reuse_any)
    todo, planned = partition(points, sweep_dir, reuse)
    _print_reuse(planned.stale, planned.reused_other)
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


@app.command()
def claims(quick: Annotated[bool, typer.Option(
               "--quick", help="shorter runs and 3 seeds (81 runs, 20 min of arrivals: about "
                               "half an hour on 2 cores): a smoke test of every design, not a "
                               "result")] = False,
           seeds: Annotated[int | None, typer.Option(
               help="seeds 1..N for both arms of every claim (at least 3), instead of each "
                    "claim's own count fixed in the catalog: for exploring, not for results")]
           = None,
           only: Annotated[list[str] | None, typer.Option(
               help="run only these claims (repeat the option, or a comma list)")] = None,
           out: Annotated[Path | None, typer.Option(
               help="runs go here (default runs/claims/quick, runs/claims/full or, with "
                    "--tune, runs/claims/tuning); finished runs of today's code are reused")]
           = None,
           tune: Annotated[bool, typer.Option(
               "--tune", help="run the claims' tuning sweeps (scenarios/claims/tuning/) on the "
                              "tuning seeds and write the chosen values to "
                              "scenarios/claims/tuning/chosen.toml")] = False,
           from_dir: Annotated[Path | None, typer.Option(
               "--from", help="judge the runs already in this results folder; run nothing")]
           = None,
           join: Annotated[list[Path] | None, typer.Option(
               "--join", help="join the verdicts in these claims.json files (a later file wins "
                              "for a claim it has) into one table, Holm's adjustment across "
                              "it, written to --out (default runs/claims/joined); run nothing")]
           = None,
           reuse_any: ReuseAny = False,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs only")]
           = False) -> None:
    """Run each paper's headline claim the way the paper tests it: both arms on the same seeds,
    a paired 95 % interval, the paper's number beside ours and a verdict (docs/claims.md). The
    last line is one JSON object: {"commit", "claims": [{"id", "ci95", "unit", "direction",
    "null", "holds", "holds_holm", "seeds", "attempts", ...}]}."""
    from testbed.claims.catalog import QUICK_SEEDS, Catalog
    from testbed.claims.runner import judge, plan, write_results
    from testbed.claims.tuning import TuningError

    if seeds is not None and seeds < 3:
        console.print("[red]--seeds must be at least 3[/red]: an effect is claimed only over "
                      ">= 3 seeds")
        raise typer.Exit(EXIT_BAD_INPUT)
    if from_dir is not None and (tune or out is not None):
        console.print("[red]--from judges a results folder: it takes no --tune or --out[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    if join and (tune or from_dir is not None or quick or seeds is not None):
        console.print("[red]--join joins finished tables: it takes no --tune, --from, --quick "
                      "or --seeds[/red]")
        raise typer.Exit(EXIT_BAD_INPUT)
    catalog = Catalog()
    try:
        chosen = catalog.select([i for o in only or [] for i in o.split(",") if i])
        if join:
            _join_claims(chosen, join, out or Path("runs") / "claims" / "joined")
            return
        if tune:
            _tune(catalog, chosen, out or Path("runs") / "claims" / "tuning", reuse_any,
                  dry_run)
            return
        folder = from_dir or out or Path("runs") / "claims" / ("quick" if quick else "full")
        jobs = plan(chosen, folder, catalog.quick, quick,
                    seeds if seeds is not None else QUICK_SEEDS if quick else None,
                    catalog.scenarios, tuned=from_dir is None)
    except (KeyError, ScenarioError, TuningError) as exc:
        console.print(f"[red]bad claims:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if from_dir is None:
        failed = _run_claim_jobs(jobs.jobs, folder, f"{len(chosen)} claims", reuse_any, dry_run)
        if failed is None:
            return
    else:
        failed = {}
    verdicts = judge(chosen, jobs)
    console.print(claims_table(verdicts))
    write_results(folder, verdicts)
    console.print(f"verdicts written to {folder / 'claims.md'} and {folder / 'claims.json'}")
    for run_dir, error in failed.items():
        console.print(f"[red]{escape(str(run_dir))}:[/red] {escape(error)}")
    print((folder / "claims.json").read_text().strip(), flush=True)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _join_claims(chosen: list[Any], files: list[Path], folder: Path) -> None:
    from testbed.claims.join import JoinError, join, read_table
    from testbed.claims.runner import write_results

    try:
        tables = [read_table(f) for f in files]
    except JoinError as exc:
        console.print(f"[red]bad claims table:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    verdicts, meta = join(chosen, tables)
    console.print(claims_table(verdicts))
    missing = [c.id for c in chosen if c.id not in {v.claim.id for v in verdicts}]
    write_results(folder, verdicts, meta)
    console.print(f"verdicts written to {folder / 'claims.md'} and {folder / 'claims.json'}")
    print((folder / "claims.json").read_text().strip(), flush=True)
    if missing:
        console.print(f"[red]no table has {len(missing)} claims: {', '.join(missing)}[/red]")
        raise typer.Exit(EXIT_FAILED)


def _run_claim_jobs(jobs: list[Any], folder: Path, what: str, reuse_any: bool,
                    dry_run: bool) -> dict[Path, str] | None:
    """Run the jobs not done yet (None after a dry run); Ctrl-C stops the set (exit 130)."""
    from testbed.claims.jobs import run_all, todo
    from testbed.sweep import Reuse

    for job in jobs:
        _check_policy(job.cfg.policy)
    reuse = Reuse(any=reuse_any)
    work, planned = todo(jobs, reuse)
    console.print(f"{what}, {len(jobs)} runs ({len(work)} to do, "
                  f"{sum(t.job.cfg.duration_s for t in work) / 60:.1f} min of arrivals) -> "
                  f"{escape(str(folder))}")
    _print_reuse(planned.stale, planned.reused_other)
    for run_dir, why in planned.retried.items():
        console.print(f"[yellow]second attempt[/yellow] of {escape(run_dir)}: {escape(why)}")
    if dry_run:
        for item in work:
            console.print(f"  {escape(str(item.job.run_dir))} ({item.action})")
        return None

    def run_one(cfg: ScenarioConfig, run_dir: Path) -> dict[str, Any]:
        result = run_scenario(cfg, run_dir)
        if result.interrupted:  # Ctrl-C stopped this run cleanly: stop the claims too
            raise KeyboardInterrupt
        return result.summary

    try:
        with SweepProgress(console) as progress:
            outcome = run_all(jobs, run_one, reuse, lambda done, total, what, eta:
                              progress.update(done, total, what, eta))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished runs are kept; run the same "
                      "command again to go on")
        raise typer.Exit(130) from None
    return outcome.failed


def _tune(catalog: Any, chosen: list[Any], out: Path, reuse_any: bool, dry_run: bool) -> None:
    """`testbed claims --tune`: run the tuning sweeps of the chosen claims' scenarios, choose
    each tuned arm's configuration, write them to chosen.toml, say how many seeds each claim
    needs."""
    from testbed.claims import tuning as t

    everything = catalog.claims
    planned = t.plan_tunings(chosen, everything, out, catalog.scenarios)
    every = [j for _, js in planned for j in js]
    failed = _run_claim_jobs(every, out, f"tuning of {len(planned)} claim scenarios",
                             reuse_any, dry_run)
    if failed is None:
        return
    results = [t.collect(tuning, js) for tuning, js in planned]
    for result in results:
        console.print(tuning_table(result))
    where = t.chosen_path(catalog.scenarios)
    data = t.write_chosen(where, [r for r in results if not r.missing], everything)
    tuned = {c.scenario for c in chosen}
    console.print(power_table({c.id: data["power"][c.id] for c in everything
                               if c.id in data.get("power", {}) and c.scenario in tuned}))
    console.print(f"chosen values written to {escape(str(where))}")
    for run_dir, error in failed.items():
        console.print(f"[red]{escape(str(run_dir))}:[/red] {escape(error)}")
    missing = [m for r in results for m in r.missing]
    if failed or missing:
        console.print(f"[red]tuning failed: {len(missing)} runs missing; their scenarios' "
                      "values were not written[/red]")
        raise typer.Exit(EXIT_FAILED)


@app.command()
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
    from common.gear_plan import write_plan
    from testbed.plan.build import PlanOptions, build_plan

    try:
        cfg = load_scenario(scenario)
        result = build_plan(cfg, PlanOptions(max_rps=max_load, no_cascade=no_cascade))
    except (ScenarioError, ValueError, LookupError) as exc:
        console.print(f"[red]cannot plan:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    write_plan(result, out)
    print_plan(result, console)
    console.print(f"plan: {escape(str(out))}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder or a sweep folder")],
           devices: Annotated[bool, typer.Option("--devices",
                                                 help="also list every device")] = False,
           figures: Annotated[bool, typer.Option(help="write PNG figures and report.md")]
           = True, as_json: AsJson = False) -> None:
    """Print a run's summary and write its figures; for a sweep, write the sweep's figures
    (SLO satisfaction, accuracy, throughput, forward rate vs devices, latency CDFs,
    thresholds over time) and a Markdown table. Rebuilds a cut-short run's summary. With
    --json, the summary (of a sweep: its index) goes to stdout as JSON."""
    with _human_output(as_json):
        data = _report(run_dir, devices, figures)
    if as_json:
        _print_json(data)


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
        from testbed.results.figures import run_figures
        from testbed.results.markdown import run_markdown

        paths = run_figures(run_dir, summary, run_dir / "figures")
        md = run_markdown(summary, paths, run_dir / "report.md")
        console.print(f"figures: {escape(str(run_dir / 'figures'))}; table: "
                      f"{escape(str(md))}")
    problems = run.get("problems") or []
    if problems:
        console.print(f"[red]{escape(last_line(problems))}[/red]", soft_wrap=True)
    return summary


def _report_sweep(sweep_dir: Path) -> dict[str, Any]:
    from testbed.results.figures import sweep_figures
    from testbed.results.markdown import sweep_markdown
    from testbed.sweep import load_index, summaries

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


@app.command()
def compare(run_a: Annotated[Path, typer.Argument(
                help="A: a run folder, or a folder of runs (a sweep, a claim arm's seed-k)")],
            run_b: Annotated[Path, typer.Argument(help="B: the same")],
            as_json: Annotated[bool, typer.Option(
                "--json", help="print the comparison as JSON on stdout")] = False) -> None:
    """How B's headline figures differ from A's (B - A). Runs are paired by seed (or by
    sweep point); with two or more pairs each difference has a paired 95 % t interval, with
    one run per side it is just the difference."""
    from testbed.results.compare import compare as compare_runs
    from testbed.results.folders import runs_in

    with _human_output(as_json):
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
        _print_json({"a": str(run_a), "b": str(run_b), **result.to_json()})


zoo_app = typer.Typer(help="Model zoos: your own models and data (docs/zoo.md).",
                      no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("init")
def zoo_init(folder: Annotated[Path, typer.Argument(help="the new zoo's folder (new or empty)")],
             light: Annotated[list[str], typer.Option(
                 help="a light (device) model: PATH.onnx or NAME=PATH.onnx; repeat")],
             heavy: Annotated[list[str], typer.Option(
                 help="a heavy (server) model, the first is the default; repeat")],
             data: Annotated[Path, typer.Option(
                 help=".npz with x_val, y_val, x_test, y_test (uint8 pixels or float32)")],
             ) -> None:
    """Build a zoo from your ONNX models and dataset: copies them, measures accuracy, the
    threshold curves and latency on this host, and writes zoo.json and a card per model. Use
    it with `zoo = "FOLDER"` in a scenario: each light model becomes a tier of its name."""
    from testbed.zoo_init import ZooInitError, build_zoo

    try:
        index = build_zoo(folder, light, heavy, data)
    except ZooInitError as exc:
        console.print(f"[red]cannot build the zoo:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"zoo {folder}: tiers {', '.join(index['tiers'])}; heavy {index['heavy']}; "
                  f"data {index['dataset']['dtype']} ({index['dataset']['classes']} classes). "
                  f"Use it with zoo = \"{folder.resolve()}\" in a scenario.", soft_wrap=True)


@app.command()
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
    _search_cwd(policy)
    argv = ["--host", host, "--port", str(port), "--policy", policy]
    argv += _token_args(token, token_file)
    if slo_ms is not None:
        argv += ["--slo-ms", str(slo_ms)]
    if scenario is not None:
        argv += ["--scenario", str(scenario)]
    if public_metrics:
        argv.append("--public-metrics")
    from server.main import main

    main(argv)


def _token_args(token: str | None, token_file: Path | None) -> list[str]:
    """The token for `python -m server`/`emulated_devices`, passed in-process (not through
    this process's command line, which `ps` shows)."""
    if token and not token_file and os.environ.get(TOKEN_ENV) != token:
        console.print("[yellow]warning:[/yellow] --token is visible to other users of this "
                      f"host (ps); prefer {TOKEN_ENV} or --token-file")
    if token_file is not None:
        return ["--token-file", str(token_file)]
    return ["--token", token] if token else []


@app.command()
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
    from emulated_devices.main import main

    main(argv)


@app.command()
def watch(url: Annotated[str, typer.Argument(
              help="the run's server URL, printed at the start of `up`/`run`")],
          port: Annotated[int, typer.Option(help="port of the page (0 picks a free one)")]
          = 8089,
          token: Token = None, token_file: TokenFile = None,
          run_dir: Annotated[Path | None, typer.Option(
              help="the run's folder: its .token (unless given otherwise) and its events "
                   "(faults as markers)")] = None) -> None:
    """Serve a live view of a run already going, on 127.0.0.1, until its server has been
    silent for 10 s (the run ended) or Ctrl-C. The token stays in this process."""
    import asyncio
    from urllib.parse import urlsplit

    from testbed.dashboard.app import Target, WatchError
    from testbed.dashboard.app import watch as serve_view

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
