"""Whole runs with the real server and real device processes on loopback."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cascade_testbed.common.config import DevicesConfig, PolicyConfig, ScenarioConfig, ServerConfig
from cascade_testbed.common.events import read_events
from cascade_testbed.common.files import file_mode
from cascade_testbed.common.records import iter_record_files, read_records
from cascade_testbed.testbed.orchestrator import run_scenario


def stray_children() -> list[psutil.Process]:
    """Live descendants of this test process other than multiprocessing's helpers."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if p.status() != psutil.STATUS_ZOMBIE and "forkserver" not in cmd \
                    and "resource_tracker" not in cmd:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def scenario(**kw: object) -> ScenarioConfig:
    base = ScenarioConfig(name="it", duration_s=4.0, devices=DevicesConfig(count=6),
                          policy=PolicyConfig("static"))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.slow
def test_run_accounts_for_every_sample(tmp_path: Path) -> None:
    """generated == completed, nothing lost, every record readable, children gone."""
    result = run_scenario(scenario(), tmp_path / "run")
    s = result.summary
    assert s["samples"]["generated"] > 6 * 4 * 10 * 0.6
    assert s["samples"]["generated"] == s["samples"]["completed"]
    assert s["samples"]["lost"] == 0 and not s["run"]["partial"]
    assert sum(s["samples"][k] for k in ("light", "heavy", "fallback", "rejected")) == \
        s["samples"]["completed"]
    assert len(s["per_device"]) == 6 and {d["tier"] for d in s["per_device"]} == \
        {"low", "mid", "high"}
    assert 0 < s["forward_rate"] < 1 and s["accuracy"] > 0.7
    assert s["latency_ms"]["p50"] > 0 and s["throughput_sps"] > 0
    assert s["emulation"]["compute_overrun_fraction"] < 0.05
    assert s["resources"]["device_uss_mb"]["sampled"] == 6
    run_dir = result.run_dir
    for name in ("scenario.toml", "versions.json", "summary.json", "events.jsonl"):
        assert (run_dir / name).is_file(), name
    rows = sum(len(read_records(p)[0]) for p in iter_record_files(run_dir))
    assert rows == s["samples"]["completed"]
    joins = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "join"]
    assert len(joins) == 6
    assert json.loads((run_dir / "summary.json").read_text())["policy"] == "static"
    assert stray_children() == []
    # One mode for every result file (the umask's), so whoever may read the scenario may
    # read the results; only the token is private.
    modes = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in run_dir.rglob("*") if p.is_file()}
    assert modes.pop(".token") == 0o600
    assert set(modes.values()) == {file_mode()}, modes


def _mean_final_threshold(summary: dict[str, object]) -> float:
    values = [d["final_threshold"] for d in summary["per_device"]]  # type: ignore[index]
    return sum(values) / len(values)


@pytest.mark.slow
def test_multitasc_lowers_thresholds_when_the_server_is_overloaded(tmp_path: Path) -> None:
    """Offered load far above the emulated server's capacity: thresholds come down and the
    SLO is met far more often than with the same thresholds held static."""
    cfg = scenario(duration_s=6.0,
                   devices=DevicesConfig(count=6, mix="0:1:0", rate_hz=25.0),
                   server=ServerConfig(batch_base_ms=20.0, batch_per_sample_ms=12.0),
                   policy=PolicyConfig("multitasc"))
    cfg = dataclasses.replace(cfg, tiers={**cfg.tiers, "mid": dataclasses.replace(
        cfg.tiers["mid"], threshold=0.95)})
    adaptive = run_scenario(cfg, tmp_path / "multitasc").summary
    static = run_scenario(dataclasses.replace(cfg, policy=PolicyConfig("static")),
                          tmp_path / "static").summary
    assert _mean_final_threshold(static) == pytest.approx(0.95)
    assert _mean_final_threshold(adaptive) < 0.85
    assert adaptive["forward_rate"] < static["forward_rate"]
    assert adaptive["slo_satisfaction"] > static["slo_satisfaction"] + 0.1
    for s in (adaptive, static):
        assert s["samples"]["lost"] == 0


@pytest.mark.slow
def test_multitasc_raises_thresholds_when_the_server_has_room(tmp_path: Path) -> None:
    cfg = scenario(duration_s=6.0, devices=DevicesConfig(count=4, mix="0:1:0", rate_hz=10.0),
                   server=ServerConfig(batch_base_ms=1.0, batch_per_sample_ms=0.1),
                   policy=PolicyConfig("multitasc"))
    cfg = dataclasses.replace(cfg, tiers={**cfg.tiers, "mid": dataclasses.replace(
        cfg.tiers["mid"], threshold=0.3)})
    s = run_scenario(cfg, tmp_path / "room").summary
    assert _mean_final_threshold(s) > 0.4
    assert s["slo_satisfaction"] > 0.9 and s["samples"]["lost"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig,group,code", [
    (signal.SIGINT, True, 130),  # Ctrl-C: the terminal signals the whole process group
    (signal.SIGTERM, False, 143),  # timeout, systemd, docker stop: the harness alone
    (signal.SIGHUP, True, 129),  # a closed terminal
], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_cleanly_and_keeps_the_records(tmp_path: Path, sig: int,
                                                           group: bool, code: int) -> None:
    """Each stop signal stops a run the way Ctrl-C does: the harness stops devices, every
    generated sample still gets its record, summary.json is written, the last line says what
    stopped it, the exit code says which signal, no process is left behind."""
    out = tmp_path / "run"
    log = tmp_path / "harness.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed", "up", "--devices",
                                 "4", "--duration", "60", "--policy", "static", "--out",
                                 str(out)], start_new_session=True, stdout=sink,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not list((out / "samples").glob("*.csv")) or not (out / "events.harness.jsonl")\
            .read_text().count("all_registered"):
        assert time.monotonic() < deadline, "run did not start"
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    while not any((out / "samples").glob("*.gen")) or \
            sum(f.stat().st_size for f in (out / "samples").glob("*.gen")) < 64:
        assert time.monotonic() < deadline, "no samples generated"
        time.sleep(0.2)  # polling a condition: the devices are generating samples
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 5  # forkserver, server, 4 devices
    if group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, log.read_text()
    name = signal.Signals(sig).name
    assert log.read_text().strip().splitlines()[-1] == (
        f"run stopped by {'Ctrl-C' if sig == signal.SIGINT else name}: the numbers cover the "
        "run until then")
    s = json.loads((out / "summary.json").read_text())
    assert s["run"]["interrupted"] and s["samples"]["lost"] == 0
    assert s["run"]["stopped_by"] == name
    assert s["samples"]["generated"] > 0
    # Throughput is over the seconds samples arrived (until Ctrl-C), not the planned 60.
    assert 0 < s["run"]["arrivals_s"] < 50
    assert s["throughput_sps"] == pytest.approx(s["samples"]["completed"]
                                                / s["run"]["arrivals_s"], rel=1e-3)
    _, alive = psutil.wait_procs(family, timeout=10)
    assert [p for p in alive if _running(p)] == []


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan the container's init has not reaped yet)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
