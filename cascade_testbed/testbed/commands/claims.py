"""`testbed claims`: the papers' headline claims, run (or tuned, or joined from finished
tables) and judged by testbed/claims/ (docs/claims.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cascade_testbed.common.config import ScenarioConfig, ScenarioError
from cascade_testbed.testbed.commands.parts import check_policy
from cascade_testbed.testbed.commands.shared import ReuseAny, console, print_reuse
from cascade_testbed.testbed.console import SweepProgress, claims_table, power_table, tuning_table
from cascade_testbed.testbed.orchestrator import run_scenario
from cascade_testbed.testbed.verdict import EXIT_BAD_INPUT, EXIT_FAILED


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
    from cascade_testbed.testbed.claims.catalog import QUICK_SEEDS, Catalog
    from cascade_testbed.testbed.claims.runner import judge, plan, write_results
    from cascade_testbed.testbed.claims.tuning import TuningError

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
    from cascade_testbed.testbed.claims.join import JoinError, join, read_table
    from cascade_testbed.testbed.claims.runner import write_results

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
    from cascade_testbed.testbed.claims.jobs import run_all, todo
    from cascade_testbed.testbed.sweep import Reuse

    for job in jobs:
        check_policy(job.cfg.policy)
    reuse = Reuse(any=reuse_any)
    work, planned = todo(jobs, reuse)
    console.print(f"{what}, {len(jobs)} runs ({len(work)} to do, "
                  f"{sum(t.job.cfg.duration_s for t in work) / 60:.1f} min of arrivals) -> "
                  f"{escape(str(folder))}")
    print_reuse(planned.stale, planned.reused_other)
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
    from cascade_testbed.testbed.claims import tuning as t

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
