"""How many emulated devices this host holds at 10 Hz each while the emulation stays faithful.

Runs scenarios/density.toml (the heterogeneous mix, Poisson arrivals at 10 Hz per device, one
real server) once per device count, 20 s each, and right after it the host's floor for the same
count (`bench_wakeup_floor --work`: as many bare processes sleeping Poisson gaps at the same
rate and running the light model once per wake-up), and reports per count: start-up time of
the run (spawn to all devices registered), compute overrun fraction, event-loop lag p99 (how
late every device timer fired), unique memory (USS) per device, samples lost, the CPU the
devices and the server used while running, the devices' CPU per generated sample
(`/proc/<pid>/schedstat` run time over the samples scheduled in the same window) and both
against the floor's. Fidelity holds when overrun < 1 %, nothing is lost, the devices generated
their rate and loop-lag p99 <= 2x the floor's p99 measured in the same invocation (the host's
own lateness is not the emulation's fault; `--lag-bar-ms` sets an absolute bar instead). With
--search it goes on upward (--step) until fidelity fails, --max or the time budget. Prints a
table and, as its last line, one JSON object with the named figures:

    flock /tmp/bench.lock .venv/bin/python scripts/bench_density.py
    flock /tmp/bench.lock .venv/bin/python scripts/bench_density.py --counts 40 100 200 \
        --search --step 100 --max 600 --budget-min 15
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from cascade_testbed.common.events import read_events
from cascade_testbed.common.records import iter_record_files
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.orchestrator import run_scenario

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_wakeup_floor  # a sibling script: the floor is measured in the same run

ROOT = Path(__file__).resolve().parents[1]
MAX_OVERRUN = 0.01
MAX_LAG_VS_FLOOR = 2.0
"""Loop-lag p99 may be at most this multiple of the host's floor p99 (same count, same run)."""
MIN_RATE_FRACTION = 0.97
"""Generated samples over the 10 Hz x devices x duration the scenario asks for (Poisson noise
over 20 s of 40 devices is under 1 %)."""
CPU_SKIP_S = 2.0
"""CPU is measured from this far into the run to its end: start-up and drain are not steady."""


@dataclass
class CpuMeter:
    """A `Progress` for `run_scenario` that reads the CPU time of the server and device processes
    (their pids are in the harness's event file) over the steady part of the run."""

    run_dir: Path
    console: Console
    pids: dict[int, str] = field(default_factory=dict)
    start: tuple[float, dict[int, float]] | None = None
    end: tuple[float, dict[int, float]] | None = None
    wall: tuple[float, float] | None = None
    slices_start: dict[int, int] = field(default_factory=dict)
    slices_end: dict[int, int] = field(default_factory=dict)
    """Wall-clock start and end of the window: the samples scheduled in it are counted."""

    def phase(self, text: str) -> None:
        self.console.log(text)

    def registered(self, done: int, total: int) -> None:
        pass

    def running(self, elapsed_s: float, duration_s: float, live: dict[str, Any]) -> None:
        if self.start is None and elapsed_s >= CPU_SKIP_S:
            self.pids = self._read_pids()
            self.start = (time.monotonic(), self._cpu())
            self.wall = (time.time(), 0.0)
        elif self.start is not None and self.end is None and elapsed_s >= duration_s - 0.5:
            self.end = (time.monotonic(), self._cpu())
            assert self.wall is not None
            self.wall = (self.wall[0], time.time())

    def device_cpu_s(self) -> float | None:
        """CPU seconds all device processes ran in the window."""
        if self.start is None or self.end is None:
            return None
        return sum(self.end[1][p] - self.start[1][p] for p, role in self.pids.items()
                   if role == "devices" and p in self.start[1] and p in self.end[1])

    def cores(self) -> dict[str, float | None]:
        """Cores used by the devices together and by the server, over the measured window."""
        if self.start is None or self.end is None:
            return {"devices": None, "server": None}
        wall = self.end[0] - self.start[0]
        used = {"devices": 0.0, "server": 0.0}
        for pid, role in self.pids.items():
            if pid in self.start[1] and pid in self.end[1]:
                used[role] += self.end[1][pid] - self.start[1][pid]
        return {k: round(v / wall, 3) for k, v in used.items()}

    def _read_pids(self) -> dict[int, str]:
        pids: dict[int, str] = {}
        for e in read_events(self.run_dir / "events.harness.jsonl"):
            if e.get("kind") == "server_listening":
                pids[int(e["pid"])] = "server"
            elif e.get("kind") == "devices_spawned":
                pids.update({int(p): "devices" for p in e["pids"].values()})
        return pids

    def device_slices(self) -> int | None:
        """Time slices all device processes ran in the window (schedstat): about one per
        wake-up for a process that sleeps in between."""
        if not self.slices_start or not self.slices_end:
            return None
        return sum(self.slices_end[p] - self.slices_start[p] for p, role in self.pids.items()
                   if role == "devices" and p in self.slices_start and p in self.slices_end)

    def _cpu(self) -> dict[int, float]:
        """Run time per process: /proc/<pid>/schedstat (exact, ns), else psutil (ticks)."""
        out = {}
        slices = self.slices_start if self.start is None else self.slices_end
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/schedstat") as f:
                    run_ns, _, n = f.read().split()[:3]
                out[pid] = int(run_ns) / 1e9
                slices[pid] = int(n)
                continue
            except (OSError, ValueError, IndexError):
                pass
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            out[pid] = t.user + t.system
        return out


def samples_in(run_dir: Path, wall: tuple[float, float]) -> int:
    """Samples whose scheduled arrival (wall clock, from the records) falls in `wall`."""
    lo, hi = wall
    n = 0
    for path in iter_record_files(run_dir):
        with path.open() as f:
            header = f.readline().rstrip("\n").split(",")
            col = header.index("wall_epoch_s")
            for line in f:
                fields = line.split(",")
                if len(fields) > col and fields[col]:
                    n += lo <= float(fields[col]) < hi
    return n


def measure(base: Any, count: int, duration: float, out: Path, console: Console,
            floor_s: float, lag_bar_ms: float | None) -> dict[str, Any]:
    """One run of `count` devices, then the host's floor for as many bare processes; their
    figures and whether fidelity held."""
    cfg = dataclasses.replace(base, duration_s=duration,
                              devices=dataclasses.replace(base.devices, count=count))
    run_dir = out / f"{count}dev"
    meter = CpuMeter(run_dir, console)
    t0 = time.monotonic()
    s = run_scenario(cfg, run_dir, meter).summary
    wall = time.monotonic() - t0
    console.log(f"floor: {count} bare processes, {floor_s:.0f} s")
    floor = bench_wakeup_floor.measure(count, floor_s, cfg.devices.rate_hz, work=True)
    dev_cpu = meter.device_cpu_s()
    n_window = samples_in(run_dir, meter.wall) if meter.wall else 0
    cpu_per_sample = dev_cpu / n_window * 1e6 if dev_cpu is not None and n_window else None
    slices = meter.device_slices()
    # The second floor: as many processes on the devices' event loop, waking as often per
    # sample as the devices just did (time slices), running the model at arrivals only.
    extra = max((slices / n_window if slices is not None and n_window else 1.0) - 1.0, 0.0)
    console.log(f"event-loop floor: {count} processes, {extra:.2f} empty wake-ups per arrival")
    loop_floor = bench_wakeup_floor.measure(count, floor_s, cfg.devices.rate_hz, work=True,
                                            extra_wakeups=extra)
    emu = s["emulation"]
    lag = emu.get("loop_lag_ms") or {}
    expected = count * cfg.devices.rate_hz * duration
    row: dict[str, Any] = {
        "devices": count,
        "startup_s": s["run"]["startup_s"],
        "overrun": emu["compute_overrun_fraction"],
        "loop_lag_p50_ms": lag.get("p50"),
        "loop_lag_p99_ms": lag.get("p99"),
        "loop_lag_max_ms": lag.get("max"),
        "start_lag_p99_ms": emu["start_lag_ms"]["p99"],
        "rate_fraction": round(s["samples"]["generated"] / expected, 4),
        "generated": s["samples"]["generated"],
        "lost": s["samples"]["lost"],
        "uss_mean_mb": s["resources"]["device_uss_mb"]["mean"],
        "uss_max_mb": s["resources"]["device_uss_mb"]["max"],
        "server_rss_mb": s["resources"]["server_rss_mb"],
        **{f"cpu_{k}_cores": v for k, v in meter.cores().items()},
        "cpu_us_per_sample": _r(cpu_per_sample),
        "slices_per_sample": _ratio(slices, n_window),
        "floor_cpu_us_per_wakeup": _r(floor["cpu_per_wakeup_us"]),
        "cpu_vs_floor": _ratio(cpu_per_sample, floor["cpu_per_wakeup_us"]),
        "floor_lag_p50_ms": _r(floor["p50_ms"]),
        "floor_lag_p99_ms": _r(floor["p99_ms"]),
        "lag_vs_floor": _ratio(lag.get("p99"), floor["p99_ms"]),
        "loop_floor_cpu_us_per_sample": _r(loop_floor["cpu_per_wakeup_us"]),
        "loop_floor_vs_floor": _ratio(loop_floor["cpu_per_wakeup_us"],
                                      floor["cpu_per_wakeup_us"]),
        "cpu_vs_loop_floor": _ratio(cpu_per_sample, loop_floor["cpu_per_wakeup_us"]),
        "loop_floor_lag_p99_ms": _r(loop_floor["p99_ms"]),
        "slo_satisfaction": s["slo_satisfaction"],
        "partial": s["run"]["partial"],
        "wall_s": round(wall, 1),
    }
    row["fidelity"] = holds(row, lag_bar_ms)
    return row


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def holds(row: dict[str, Any], lag_bar_ms: float | None = None) -> bool:
    """Fidelity: overrun < 1 %, nothing lost, the run complete, the rate delivered, and the
    loop-lag p99 within 2x the host's floor measured in the same run (or `lag_bar_ms`)."""
    lag = row["loop_lag_p99_ms"]
    bar = lag_bar_ms if lag_bar_ms is not None else MAX_LAG_VS_FLOOR * row["floor_lag_p99_ms"]
    return (row["overrun"] < MAX_OVERRUN and lag is not None and lag <= bar
            and row["lost"] == 0 and not row["partial"]
            and row["rate_fraction"] >= MIN_RATE_FRACTION)


def counts_to_run(fixed: list[int], search: bool, step: int, maximum: int) -> list[int]:
    """The fixed counts, then (with search) every `step` above the largest up to `maximum`."""
    counts = sorted(set(fixed))
    if search:
        counts += list(range(counts[-1] + step, maximum + 1, step))
    return counts


def print_table(rows: list[dict[str, Any]], console: Console, title: str) -> None:
    table = Table(title=title)
    table.add_column("figure")
    for r in rows:
        table.add_column(f"{r['devices']} dev", justify="right")
    for key in rows[0]:
        if key != "devices":
            table.add_row(key, *(_fmt(r[key]) for r in rows))
    console.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def figures(rows: list[dict[str, Any]], duration: float, rate_hz: float = 10.0
            ) -> dict[str, Any]:
    """The named figures: the largest count up to which every run held, and per-count values."""
    held = 0
    for r in rows:
        if not r["fidelity"]:
            break
        held = r["devices"]
    out: dict[str, Any] = {f"max_devices_at_{rate_hz:g}hz": held, "rate_hz": rate_hz,
                           "duration_s": duration,
                           "counts": [r["devices"] for r in rows]}
    for r in rows:
        n = r["devices"]
        for key in ("startup_s", "overrun", "loop_lag_p99_ms", "uss_mean_mb", "uss_max_mb",
                    "lost", "cpu_devices_cores", "cpu_server_cores", "fidelity",
                    "cpu_us_per_sample", "floor_cpu_us_per_wakeup", "cpu_vs_floor",
                    "floor_lag_p99_ms", "lag_vs_floor", "loop_floor_cpu_us_per_sample",
                    "loop_floor_vs_floor", "cpu_vs_loop_floor", "loop_floor_lag_p99_ms"):
            out[f"{key}_{n}"] = r[key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "density.toml")
    parser.add_argument("--counts", type=int, nargs="+", default=[40, 100, 200])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per count")
    parser.add_argument("--search", action="store_true",
                        help="go on upward until fidelity fails, --max or the budget")
    parser.add_argument("--rate-hz", type=float, default=None,
                        help="arrivals per device and second (default: the scenario's)")
    parser.add_argument("--report-interval-s", type=float, default=None,
                        help="seconds between a device's reports (default: the scenario's)")
    parser.add_argument("--floor-seconds", type=float, default=10.0,
                        help="seconds of the host's floor (bench_wakeup_floor --work) per count")
    parser.add_argument("--lag-bar-ms", type=float, default=None,
                        help="an absolute loop-lag p99 bar instead of 2x the floor's")
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--max", type=int, default=600, help="largest count to try")
    parser.add_argument("--budget-min", type=float, default=15.0,
                        help="start no further count once this much time has gone")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "runs" / f"density-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    if args.rate_hz is not None:
        base = dataclasses.replace(base, devices=dataclasses.replace(base.devices,
                                                                     rate_hz=args.rate_hz))
    if args.report_interval_s is not None:
        base = dataclasses.replace(base, devices=dataclasses.replace(
            base.devices, report_interval_s=args.report_interval_s))
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    fixed = args.counts
    for count in counts_to_run(args.counts, args.search, args.step, args.max):
        if rows and (time.monotonic() - t0) / 60 > args.budget_min:
            console.log(f"time budget spent; not running {count} devices")
            break
        console.log(f"{count} devices, {args.duration:.0f} s")
        rows.append(measure(base, count, args.duration, args.out, console,
                            args.floor_seconds, args.lag_bar_ms))
        if not rows[-1]["fidelity"] and count >= max(fixed):
            break  # searching upward: the first count that fails ends it
    print_table(rows, Console(), f"{base.name}: {base.devices.rate_hz:g} Hz per device, "
                f"{args.duration:.0f} s per count, {psutil.cpu_count()} cores")
    print(json.dumps(figures(rows, args.duration, base.devices.rate_hz)))


if __name__ == "__main__":
    main()
