"""Whole runs under faults and overload, with the real server and real device processes.

After every fault the run still accounts for every generated sample: it has a record, or it
was in flight on a device process that was killed (aborted). Under 10x overload the queue
stays bounded, the excess is shed and counted by cause, and /healthz keeps answering.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from cascade_testbed.common.config import DevicesConfig, PolicyConfig, ScenarioConfig, ServerConfig
from cascade_testbed.common.events import read_events
from cascade_testbed.common.records import iter_record_files, read_journal, read_records
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.orchestrator import RunResult, run_scenario
from tests.integration.test_runs import stray_children

ROOT = Path(__file__).resolve().parents[2]


def check_accounting(run_dir: Path, summary: dict[str, Any]) -> None:
    """Every started sample has exactly one record or is counted as aborted."""
    s = summary["samples"]
    assert s["lost"] == 0
    assert s["generated"] == s["completed"] + s["aborted"]
    rows = [r for p in iter_record_files(run_dir) for r in read_records(p)[0]]
    keys = [(r.device_id, r.incarnation, r.sample_id) for r in rows]
    assert len(keys) == len(set(keys)) == s["completed"]
    started = set()
    for path in (run_dir / "samples").glob("*.gen"):
        device_id, _, k = path.stem.partition("~")
        started |= {(device_id, int(k or 0), i) for i in read_journal(path)}
    assert set(keys) <= started
    assert len(started - set(keys)) == s["aborted"]


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    return read_events(run_dir / "events.jsonl")


@pytest.mark.slow
def test_every_kind_of_fault_keeps_every_sample_accounted_for(tmp_path: Path) -> None:
    cfg = load_scenario(ROOT / "scenarios" / "faults.toml")
    cfg = dataclasses.replace(cfg, duration_s=14.0,
                              devices=dataclasses.replace(cfg.devices, count=9))
    result = run_scenario(cfg, tmp_path / "run")
    s, run_dir = result.summary, result.run_dir
    check_accounting(run_dir, s)
    f = s["faults"]
    assert (f["device_kill"], f["device_restart"], f["server_kill"], f["server_restart"]) == \
        (2, 2, 1, 1)
    assert f["link_down"] == 3 and f["injected"] == 6 and not s["run"]["partial"]
    assert s["samples"]["causes"].get("disconnected", 0) > 0  # the server was away
    assert s["samples"]["causes"].get("timeout", 0) > 0  # the cut link held replies back
    assert sum(d["incarnations"] == 2 for d in s["per_device"]) == 2
    ev = events_of(run_dir)
    restart_t = next(e["t"] for e in ev if e["kind"] == "server_restart")
    rejoined = {e["device"] for e in ev if e["kind"] == "join" and e["t"] > restart_t}
    assert len(rejoined) == 9, "every device reconnects to the restarted server"
    late_heavy = [r for p in iter_record_files(run_dir) for r in read_records(p)[0]
                  if r.source == "heavy" and r.wall_epoch_s > restart_t + 1.0]
    assert late_heavy, "the restarted server answers again"
    assert s["server"]["processes"] == 2
    assert stray_children() == []


def run_in_thread(cfg: ScenarioConfig, run_dir: Path) -> tuple[threading.Thread,
                                                               list[RunResult]]:
    out: list[RunResult] = []
    thread = threading.Thread(target=lambda: out.append(run_scenario(cfg, run_dir)))
    thread.start()
    return thread, out


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def harness_event(run_dir: Path, kind: str) -> dict[str, Any] | None:
    return next((e for e in read_events(run_dir / "events.harness.jsonl")
                 if e["kind"] == kind), None)


@pytest.mark.slow
def test_crashes_are_noticed_and_restarted(tmp_path: Path) -> None:
    """Processes killed from outside the harness (not planned faults) are recorded as crashes
    and restarted when the scenario asks for it."""
    cfg = ScenarioConfig(name="crash", duration_s=9.0, policy=PolicyConfig("static"),
                         devices=DevicesConfig(count=3, restart_dead=True,
                                               restart_delay_s=0.5),
                         server=ServerConfig(restart_on_exit=True))
    run_dir = tmp_path / "run"
    thread, out = run_in_thread(cfg, run_dir)
    try:
        clock = wait_for(lambda: harness_event(run_dir, "run_clock"), 60, "the run to start")
        pids = harness_event(run_dir, "devices_spawned")["pids"]  # type: ignore[index]
        server_pid = harness_event(run_dir, "server_listening")["pid"]  # type: ignore[index]
        time.sleep(max(0.0, clock["start_at"] + 2.0 - time.time()))
        os.kill(pids["mid-001"], signal.SIGKILL)
        time.sleep(2.0)
        os.kill(server_pid, signal.SIGKILL)
    finally:
        thread.join(120)
    s = out[0].summary
    check_accounting(run_dir, s)
    assert s["faults"]["device_crashes"] == 1 and s["faults"]["server_crashes"] == 1
    ev = events_of(run_dir)
    assert any(e["kind"] == "device_restart" and e["device"] == "mid-001" for e in ev)
    assert any(e["kind"] == "server_restart" for e in ev)
    assert next(d for d in s["per_device"] if d["device_id"] == "mid-001")["incarnations"] == 2
    assert not s["run"]["partial"]


@pytest.mark.slow
def test_killed_harness_leaves_readable_partial_records(tmp_path: Path) -> None:
    """SIGKILL to the harness alone: its children stop by themselves (the forkserver sees its
    parent go, devices and server get SIGTERM from the kernel), the records stay readable and
    `testbed report` rebuilds the summary and says it is partial."""
    out = tmp_path / "run"
    log = tmp_path / "harness.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed", "up", "--devices",
                                 "4", "--duration", "60", "--policy", "static", "--out",
                                 str(out)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: harness_event(out, "run_clock"), 60, "the run to start")
        time.sleep(2.0)
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(10)
        _, alive = psutil.wait_procs(family, timeout=20)
        assert alive == [], f"orphans left behind: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "summary.json").exists()
    report = subprocess.run([sys.executable, "-m", "cascade_testbed", "report", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "partial run" in report.stdout and "harness did not finish" in report.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["run"]["partial"] and not s["run"]["harness_ended"]
    assert s["samples"]["generated"] > 40 and s["samples"]["lost"] == 0


class _Monitor:
    """Polls the server while a run goes on: /healthz latency, queue length, memory."""

    def __init__(self, run_dir: Path, until_s: float) -> None:
        self.run_dir = run_dir
        self.until_s = until_s
        self.health_ms: list[float] = []
        self.health_failures: list[str] = []
        self.queue: list[int] = []
        self.rss_mb: list[tuple[float, float]] = []
        self.metrics = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        listening = wait_for(lambda: harness_event(self.run_dir, "server_listening"), 60,
                             "the server")
        url, server = listening["url"], psutil.Process(listening["pid"])
        clock = wait_for(lambda: harness_event(self.run_dir, "run_clock"), 60, "the run")
        auth = {"Authorization": f"Bearer {(self.run_dir / '.token').read_text().strip()}"}
        n = 0
        while not self.stop.is_set() and server.is_running():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    assert r.status == 200
                self.health_ms.append((time.monotonic() - t0) * 1e3)
                if n % 3 == 0:
                    with urllib.request.urlopen(urllib.request.Request(
                            f"{url}/v1/status", headers=auth), timeout=2) as r:
                        self.queue.append(json.load(r)["queue"]["length"])
                    with urllib.request.urlopen(urllib.request.Request(
                            f"{url}/metrics", headers=auth), timeout=2) as r:
                        self.metrics = r.read().decode()
                    self.rss_mb.append((time.time() - clock["start_at"],
                                        server.memory_info().rss / 2**20))
            except (OSError, psutil.Error) as exc:
                t = time.time() - clock["start_at"]
                if t < self.until_s:  # afterwards the server is being stopped on purpose
                    self.health_failures.append(f"{t:.2f}s: {exc!r}")
            n += 1
            time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("admission", ["bound", "deadline"])
def test_ten_times_capacity_is_shed_and_counted(tmp_path: Path, admission: str) -> None:
    # Capacity: batches of 8 take 20 + 8 * 10 = 100 ms, i.e. 80 samples/s. Offered: 8 devices
    # x 100 Hz, every sample forwarded (threshold 1): 800 samples/s.
    cfg = ScenarioConfig(
        name="overload", duration_s=7.0, policy=PolicyConfig("static"),
        devices=DevicesConfig(count=8, mix="0:0:1", rate_hz=100.0, arrival="constant",
                              reply_timeout_ms=500.0),
        server=ServerConfig(max_batch_size=8, max_queue_size=64, batch_base_ms=20.0,
                            batch_per_sample_ms=10.0, admission=admission))  # type: ignore[arg-type]
    cfg = dataclasses.replace(cfg, tiers={**cfg.tiers, "high": dataclasses.replace(
        cfg.tiers["high"], threshold=1.0)})
    run_dir = tmp_path / "run"
    monitor = _Monitor(run_dir, until_s=cfg.duration_s)
    monitor.thread.start()
    thread, out = run_in_thread(cfg, run_dir)
    thread.join(180)
    monitor.stop.set()
    monitor.thread.join(10)
    s = out[0].summary
    check_accounting(run_dir, s)
    assert s["samples"]["generated"] > 8 * 100 * 7 * 0.8
    assert monitor.health_failures == [] and len(monitor.health_ms) > 30
    assert max(monitor.health_ms) < 1000, "the server kept answering /healthz"
    assert monitor.queue and max(monitor.queue) <= 64
    shed = s["server"]["shed"]
    served = s["server"]["totals"]["completed"]
    assert served < 0.2 * s["samples"]["generated"], "most of the load was shed"
    if admission == "bound":
        assert shed.get("queue_full", 0) > 0
        assert 'testbed_server_rejected_total{reason="queue_full"}' in monitor.metrics
    else:
        assert shed.get("admission", 0) > 0
        assert 'testbed_server_rejected_total{reason="admission"}' in monitor.metrics
        assert shed.get("deadline", 0) < shed["admission"] / 10, "shed early, not expired"
    device_causes = s["samples"]["causes"]
    assert device_causes.get("queue_full", 0) + device_causes.get("admission", 0) > 0
    # Memory stays flat: the second half of the run adds (almost) nothing.
    rss = [m for t, m in monitor.rss_mb if t > 1.0]
    assert len(rss) >= 4 and max(rss) - rss[0] < 15.0, monitor.rss_mb
