"""Measure the testbed's figures in one run: start-up, fidelity, memory, MultiTASC vs static.

Runs the heterogeneous scenario (40 devices by default) once per policy and seed, prints a
table, and ends with one JSON line of named figures so runs can be compared by a script:

    python scripts/bench_testbed.py                      # 40 devices, 30 s, seed 1
    python scripts/bench_testbed.py --seeds 1 2 3 --out runs/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.orchestrator import run_scenario

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "heterogeneous.toml")
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--policies", nargs="+", default=["static", "multitasc"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / f"bench-{int(time.time())}")
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    base = dataclasses.replace(base, duration_s=args.duration,
                               devices=dataclasses.replace(base.devices, count=args.devices))
    console = Console()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for policy in args.policies:
            cfg = dataclasses.replace(base, seed=seed,
                                      policy=dataclasses.replace(base.policy, name=policy))
            console.log(f"running {policy} seed {seed} ({args.devices} devices, "
                        f"{args.duration:.0f} s)")
            s = run_scenario(cfg, args.out / f"{policy}-seed{seed}").summary
            rows.append({
                "policy": policy, "seed": seed,
                "slo_satisfaction": s["slo_satisfaction"], "accuracy": s["accuracy"],
                "forward_rate": s["forward_rate"], "p95_ms": s["latency_ms"]["p95"],
                "generated": s["samples"]["generated"], "lost": s["samples"]["lost"],
                "overrun": s["emulation"]["compute_overrun_fraction"],
                "start_lag_p99_ms": s["emulation"]["start_lag_ms"]["p99"],
                "startup_s": s["run"]["startup_s"],
                "uss_mean_mb": s["resources"]["device_uss_mb"]["mean"],
                "uss_max_mb": s["resources"]["device_uss_mb"]["max"],
                "server_rss_mb": s["resources"]["server_rss_mb"],
            })
    table = Table(title=f"{base.name}: {args.devices} devices, {args.duration:.0f} s, "
                  f"SLO {base.slo_ms:.0f} ms")
    table.add_column("figure")
    for r in rows:
        table.add_column(f"{r['policy']} s{r['seed']}", justify="right")
    for key in rows[0]:
        if key not in ("policy", "seed"):
            table.add_row(key, *(f"{r[key]:.4g}" if isinstance(r[key], float) else str(r[key])
                                 for r in rows))
    console.print(table)

    def mean(policy: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["policy"] == policy)

    figures: dict[str, Any] = {
        "devices": args.devices, "duration_s": args.duration, "seeds": args.seeds,
        "lost_total": sum(r["lost"] for r in rows),
        "generated_total": sum(r["generated"] for r in rows),
        "compute_overrun_fraction_max": max(r["overrun"] for r in rows),
        "startup_s_max": max(r["startup_s"] for r in rows),
        "device_uss_mb_mean": round(statistics.fmean(r["uss_mean_mb"] for r in rows), 2),
        "device_uss_mb_max": max(r["uss_max_mb"] for r in rows),
    }
    for policy in args.policies:
        figures[f"{policy}_slo_satisfaction"] = round(mean(policy, "slo_satisfaction"), 4)
        figures[f"{policy}_accuracy"] = round(mean(policy, "accuracy"), 4)
        figures[f"{policy}_forward_rate"] = round(mean(policy, "forward_rate"), 4)
    if {"static", "multitasc"} <= set(args.policies):
        figures["slo_gain_pp"] = round(100 * (figures["multitasc_slo_satisfaction"]
                                              - figures["static_slo_satisfaction"]), 2)
        figures["accuracy_change_pp"] = round(100 * (figures["multitasc_accuracy"]
                                                     - figures["static_accuracy"]), 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
