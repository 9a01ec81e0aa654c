"""Soak test: many devices for a long run under periodic faults; every sample accounted for.

Runs `scenarios/soak.toml` (40 devices, 10 minutes, devices and the server killed and
restarted, links cut and lossy) while a monitor samples the memory of every process of the
run, then prints a table and, as its last line, one JSON object of named figures:

    python scripts/soak.py                       # the full 10 minutes
    python scripts/soak.py --duration 120        # a shorter soak

Exit status 1 if any generated sample is unaccounted for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.orchestrator import run_scenario

ROOT = Path(__file__).resolve().parents[1]


class MemoryWatch:
    """Memory of the run's processes (server, devices), sampled every `every_s`: the largest
    RSS of any one of them, and the sum of their unique memory (USS), which is what the
    run costs the machine (summed RSS would count the shared runtime pages 40 times)."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.peak_total_mb = 0.0
        self.peak_process_mb = 0.0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        me = psutil.Process()
        t0 = time.monotonic()
        while not self._stop.wait(self.every_s):
            total = 0.0
            for proc in me.children(recursive=True):
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                total += info.uss / 2**20
                self.peak_process_mb = max(self.peak_process_mb, info.rss / 2**20)
            self.peak_total_mb = max(self.peak_total_mb, total)
            self.samples.append((time.monotonic() - t0, total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "soak.toml")
    parser.add_argument("--duration", type=float, default=None, help="override, in seconds")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / f"soak-{int(time.time())}")
    args = parser.parse_args()
    cfg = load_scenario(args.scenario)
    if args.duration is not None:
        cfg = dataclasses.replace(cfg, duration_s=args.duration)
    if args.devices is not None:
        cfg = dataclasses.replace(cfg, devices=dataclasses.replace(cfg.devices,
                                                                   count=args.devices))
    console = Console()
    console.log(f"soak: {cfg.devices.count} devices, {cfg.duration_s:.0f} s, "
                f"{len(cfg.faults)} recurring faults -> {args.out}")
    with MemoryWatch() as mem:
        s = run_scenario(cfg, args.out).summary
    samples, faults = s["samples"], s["faults"]
    accounted = samples["completed"] + samples["aborted"]
    # Growth of the whole run's memory from the first to the last fifth of the run.
    n = len(mem.samples)
    early = [m for _, m in mem.samples[n // 10: max(n // 5, n // 10 + 1)]]
    late = [m for _, m in mem.samples[-max(n // 5, 1):]]
    figures = {
        "devices": cfg.devices.count, "duration_s": cfg.duration_s,
        "faults_injected": faults["injected"],
        "device_kills": faults["device_kill"], "device_restarts": faults["device_restart"],
        "server_kills": faults["server_kill"],
        "server_restarts_survived": faults["server_restart"],
        "link_faults": faults["link_down"],
        "samples_generated": samples["generated"], "samples_accounted": accounted,
        "samples_completed": samples["completed"], "samples_aborted": samples["aborted"],
        "samples_lost": samples["lost"],
        "slo_satisfaction": s["slo_satisfaction"], "accuracy": s["accuracy"],
        "fallback_causes": samples["causes"],
        "peak_uss_total_mb": round(mem.peak_total_mb, 1),
        "peak_rss_process_mb": round(mem.peak_process_mb, 1),
        "uss_total_growth_mb": round(sum(late) / len(late) - sum(early) / len(early), 1)
        if early and late else None,
        "partial": s["run"]["partial"],
    }
    table = Table(title="soak", show_header=False)
    for key, value in figures.items():
        table.add_row(key, str(value))
    console.print(table)
    print(json.dumps(figures))
    if samples["lost"] or accounted != samples["generated"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
