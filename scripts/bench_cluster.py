"""What a run over Ray costs the harness, per device: runs `testbed run SCENARIO` (default
scenarios/cluster.toml: `--ray local:4`, 200 devices at 2 Hz, 20 s) and samples, every second,
the CPU time and memory of every process under it, by role: the driver, Ray's own processes
(GCS, raylets, dashboard/runtime-env agents, log monitor), the node agents (Ray workers), the
forkservers, the server, the devices. Prints one JSON object: CPU in cores over the run's
arrivals and RSS/USS per role, and per device.

    flock /tmp/cascade-cpu.lock .venv/bin/python scripts/bench_cluster.py --out /tmp/bench-cluster
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def role(p: psutil.Process, driver: int) -> str:
    if p.pid == driver:
        return "driver"
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    if "forkserver import main" in cmd:
        parent = p.parent()
        return "forkserver" if parent and "forkserver import main" not in \
            " ".join(parent.cmdline()) else "child"  # server or device: told apart below
    if "NodeAgent" in cmd:  # Ray retitles an actor's worker `ray::NodeAgent...`
        return "agent"
    if "default_worker.py" in cmd or "ray::IDLE" in cmd:
        return "ray_idle_workers"
    return "ray"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "cluster.toml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed", "run", args.scenario,
                             "--out", str(args.out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    driver = psutil.Process(proc.pid)
    cpu: dict[int, tuple[str, float]] = {}
    mem: dict[str, list[float]] = {}
    begin_cpu: dict[int, float] = {}
    t_begin = t_end = None
    server_pid = None
    events = args.out / "events.harness.jsonl"
    while proc.poll() is None:
        text = events.read_text() if events.is_file() else ""
        running = "run_clock" in text and "run_end" not in text
        if server_pid is None and '"server_listening"' in text:
            line = next(x for x in text.splitlines() if '"server_listening"' in x)
            server_pid = json.loads(line)["pid"]
        try:
            family = [driver, *driver.children(recursive=True)]
        except psutil.Error:
            break
        sample_mem = running and not mem and t_begin is not None and time.time() - t_begin > 8
        for p in family:
            try:
                r = role(p, driver.pid)
                if r == "child":
                    r = "server" if p.pid == server_pid else "device"
                t = p.cpu_times()
                total = t.user + t.system
                if running and p.pid not in begin_cpu:
                    begin_cpu[p.pid] = total
                cpu[p.pid] = (r, total)
                if sample_mem:
                    info = p.memory_full_info()
                    mem.setdefault(f"{r}_rss_mb", []).append(info.rss / 2**20)
                    mem.setdefault(f"{r}_uss_mb", []).append(info.uss / 2**20)
            except psutil.Error:
                continue
        if running and t_begin is None:
            t_begin = time.time()
        if running:
            t_end = time.time()
        time.sleep(1.0)
    summary = json.loads((args.out / "summary.json").read_text())
    devices = summary["devices"]
    span = (t_end or 0) - (t_begin or 0)
    by_role: dict[str, float] = {}
    for pid, (r, total) in cpu.items():
        by_role[r] = by_role.get(r, 0.0) + total - begin_cpu.get(pid, total)
    harness = sum(v for k, v in by_role.items() if k in ("driver", "ray", "ray_idle_workers",
                                                         "agent", "forkserver", "gone"))
    out = {
        "devices": devices, "nodes": {n: r["devices"] for n, r in summary["nodes"].items()},
        "generated": summary["samples"]["generated"], "lost": summary["samples"]["lost"],
        "slo_satisfaction": summary["slo_satisfaction"], "measured_s": round(span, 1),
        "cores": {k: round(v / span, 3) for k, v in sorted(by_role.items())} if span else {},
        "harness_cores_per_device": round(harness / span / devices, 5) if span else None,
        "device_cores_each": round(by_role.get("device", 0) / span / devices, 5) if span
        else None,
        "memory_mb": {k: {"mean": round(sum(v) / len(v), 1), "n": len(v),
                          "total": round(sum(v), 1)} for k, v in sorted(mem.items())},
        "communication": summary.get("communication"),
        "record_bytes_per_sample": round(sum(
            f.stat().st_size for f in (args.out / "samples").glob("*")) /
            max(1, summary["samples"]["generated"]), 1),
        "exit_code": proc.returncode,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
