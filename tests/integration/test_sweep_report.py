"""Sweeps, reports and changing workloads, with the real harness, server and devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cascade_testbed.common.events import read_events
from cascade_testbed.common.records import iter_record_files, read_records
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed.orchestrator import run_scenario
from tests.integration.test_faults_overload import check_accounting


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cascade_testbed", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sweep_resumes_and_the_report_draws_every_figure(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "mini"\nduration_s = 1\n[devices]\nmix = "1:1:1"\n'
                        '[sweep]\ndevices = [3, 6]\npolicy = ["static", "multitasc"]\n')
    out = tmp_path / "sweep"
    first = cli("sweep", str(scenario), "--out", str(out))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ran 4, skipped 0" in first.stdout
    index = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in index["runs"]] == ["done"] * 4
    assert all(r["lost"] == 0 for r in index["runs"])
    again = cli("sweep", str(scenario), "--out", str(out))
    assert "ran 0, skipped 4" in again.stdout
    report = cli("report", str(out))
    assert report.returncode == 0, report.stdout + report.stderr
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"slo_satisfaction_vs_devices.png", "accuracy_vs_devices.png",
            "throughput_sps_vs_devices.png", "forward_rate_vs_devices.png",
            "latency_cdf.png", "thresholds_over_time.png",
            "energy_device_j_per_sample_vs_devices.png", "accuracy_vs_energy.png"} <= figures
    assert all(r["energy_device_j_per_sample"] > 0 for r in index["runs"])
    table = (out / "report.md").read_text()
    assert table.count("| static |") == 2 and table.count("| multitasc |") == 2
    assert all((out / "figures" / f).stat().st_size > 5000 for f in figures)


@pytest.mark.slow
def test_devices_join_and_leave_in_phases(tmp_path: Path) -> None:
    """Phases 2 -> 5 -> 1 devices: the server sees joins and leaves when the phases change,
    a device that comes back is a new process, and every sample is accounted for."""
    cfg = scenario_from_dict({
        "name": "phases", "duration_s": 9, "policy": {"name": "multitasc"},
        "devices": {"count": 5, "arrival": "onoff", "burst_on_s": 0.5, "burst_off_s": 0.5,
                    "phases": [{"at_s": 0, "count": 2}, {"at_s": 3, "count": 5},
                               {"at_s": 5, "count": 1}, {"at_s": 7, "count": 3}]}})
    result = run_scenario(cfg, tmp_path / "run")
    run_dir, s = result.run_dir, result.summary
    check_accounting(run_dir, s)
    assert not s["run"]["partial"]
    ev = read_events(run_dir / "events.jsonl")
    start = next(e["start_at"] for e in ev if e["kind"] == "run_clock")
    joins = sorted((round(e["t"] - start), e["device"]) for e in ev if e["kind"] == "join")
    leaves = sorted((round(e["t"] - start), e["device"]) for e in ev if e["kind"] == "leave")
    late_joins = {d for t, d in joins if t >= 2}
    assert late_joins == {"low-003", "mid-004", "high-002", "mid-001"}
    assert {d for t, d in leaves if 4 <= t <= 6} == {"mid-001", "high-002", "low-003",
                                                      "mid-004"}
    by_device = {d["device_id"]: d for d in s["per_device"]}
    assert by_device["high-002"]["incarnations"] == 2 and by_device["mid-001"]["incarnations"] \
        == 2 and by_device["low-000"]["incarnations"] == 1
    # The first device is there all the time; the last one only between 3 s and 5 s.
    assert by_device["low-000"]["generated"] > by_device["mid-004"]["generated"] > 0


@pytest.mark.slow
def test_run_report_writes_figures(tmp_path: Path) -> None:
    cfg = scenario_from_dict({"name": "one", "duration_s": 3, "devices": {"count": 3}})
    run_scenario(cfg, tmp_path / "run")
    report = cli("report", str(tmp_path / "run"))
    assert report.returncode == 0, report.stdout + report.stderr
    assert {p.name for p in (tmp_path / "run" / "figures").glob("*.png")} == \
        {"thresholds_over_time.png", "latency_cdf.png", "over_time.png"}
    assert "| tier |" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_multitasc_pp_switches_to_the_costlier_model_when_load_is_light(tmp_path: Path) -> None:
    """Four devices leave the server idle: MultiTASC++ moves from the default heavy model to the
    most accurate variant, the server announces it, and later heavy answers name it."""
    cfg = scenario_from_dict({
        "name": "switch", "duration_s": 8,
        "policy": {"name": "multitasc++",
                   "params": {"switch_every_s": 0.5, "patience": 2, "cooldown_s": 1.0}},
        "devices": {"count": 4, "mix": "1:1:1"},
        "server": {"heavy_model": "heavy-cnn",
                   "heavy_models": ["heavy-cnn-lite", "heavy-cnn", "heavy-cnn-xl"]}})
    result = run_scenario(cfg, tmp_path / "run")
    run_dir, s = result.run_dir, result.summary
    check_accounting(run_dir, s)
    switches = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "model_switch"]
    assert switches and switches[0]["previous"] == "heavy-cnn"
    assert switches[0]["model"] == "heavy-cnn-xl", switches
    served = {r.heavy_model for f in iter_record_files(run_dir)
              for r in read_records(f)[0] if r.source == "heavy"}
    assert {"heavy-cnn", "heavy-cnn-xl"} <= served
