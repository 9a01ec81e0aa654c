"""CascadeServe gears and agreement cascades with the real harness, server and devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cascade_testbed.common.events import read_events
from cascade_testbed.common.gear_plan import read_plan
from cascade_testbed.common.records import iter_record_files, read_records
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed.orchestrator import run_scenario
from tests.integration.test_faults_overload import check_accounting

HEAVIES = ["heavy-cnn-lite", "heavy-cnn", "heavy-cnn-xl"]


@pytest.mark.slow
def test_testbed_plan_writes_a_plan_the_cli_can_print(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "p"\n[devices]\ncount = 20\n'
                        f'[server]\nheavy_models = {json.dumps(HEAVIES)}\n')
    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "cascade_testbed", "plan", str(scenario),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    plan = read_plan(out)
    assert len(plan.table) == 251  # 20 devices x 10 Hz x 1.25, levels 0..250
    assert {g.heavy_model for g in plan.gears} >= {"heavy-cnn-xl"}
    assert plan.gears[plan.table[0]].accuracy > plan.gears[plan.table[-1]].accuracy
    assert "gear plan" in done.stdout


@pytest.mark.slow
def test_gears_follow_the_load_and_apply_thresholds_and_models(tmp_path: Path) -> None:
    """4 then 24 devices: the run plans for itself, starts on the cheapest gear, moves up to
    an accurate one for 4 devices and down again when the load rises; the devices use the
    gears' thresholds."""
    cfg = scenario_from_dict({
        "name": "gears", "duration_s": 10,
        "policy": {"name": "gears"},
        "devices": {"count": 24, "report_interval_s": 0.25,
                    "phases": [{"at_s": 0, "count": 4}, {"at_s": 4, "count": 24}]},
        "server": {"heavy_model": "heavy-cnn", "heavy_models": HEAVIES,
                   "control_interval_s": 0.1}})
    result = run_scenario(cfg, tmp_path / "run")
    run_dir, s = result.run_dir, result.summary
    check_accounting(run_dir, s)
    plan = read_plan(run_dir / "gear_plan.json")
    events = read_events(run_dir / "events.jsonl")
    start = next(e["start_at"] for e in events if e["kind"] == "run_clock")
    switches = [e for e in events if e["kind"] == "gear_switch"]
    assert switches and switches[0]["previous"] is None
    assert switches[0]["gear"] == plan.table[-1]  # the cheapest, until reports arrive
    level = {g: plan.table.index(g) for g in set(plan.table)}  # load where a gear starts
    light = [e["gear"] for e in switches if e["t"] - start < 4.0]
    assert level[light[-1]] < level[switches[0]["gear"]]  # moved up for 4 devices
    assert level[switches[-1]["gear"]] > level[light[-1]]  # and down again for 24
    planned = {(t, v) for g in plan.gears for t, v in g.thresholds.items()}
    used = {(r.tier, round(r.threshold, 4)) for f in iter_record_files(run_dir)
            for r in read_records(f)[0]}
    assert used <= {(t, round(v, 4)) for t, v in planned}
    step = s["server"]["policy_step_us"]
    assert step["count"] >= 50 and step["p50"] > 0  # measured; its size is for the report


@pytest.mark.slow
def test_agreement_ensembles_forward_on_disagreement_and_count_traffic(tmp_path: Path) -> None:
    members = ["light-low", "light-low-b", "light-low-c"]
    cfg = scenario_from_dict({
        "name": "coe", "duration_s": 5, "slo_ms": 400, "policy": {"name": "static"},
        "devices": {"count": 3, "rate_hz": 5, "mix": "1:0:1"},
        "tiers": {"low": {"ensemble": members, "rule": "agreement", "compute_ms": 60.0,
                          "threshold": 1.0}}})
    result = run_scenario(cfg, tmp_path / "run")
    run_dir, s = result.run_dir, result.summary
    check_accounting(run_dir, s)
    records = [r for f in iter_record_files(run_dir) for r in read_records(f)[0]]
    low = [r for r in records if r.tier == "low"]
    assert low and {round(r.light_conf, 3) for r in low} <= {0.333, 0.667, 1.0}
    assert all(r.forwarded == (r.light_conf < 0.999) for r in low)  # unanimity or send
    assert any(r.forwarded for r in low) and not all(r.forwarded for r in low)
    comm = s["communication"]
    sent = sum(r.forwarded for r in records)
    assert comm["requests"] == sent
    assert comm["bytes_sent"] >= 64 * sent  # each request carries 64 pixel bytes
    assert comm["requests_per_sample"] == round(sent / s["samples"]["generated"], 5)


@pytest.mark.slow
def test_agreement_threshold_is_calibrated_when_the_scenario_sets_none(tmp_path: Path) -> None:
    cfg = scenario_from_dict({
        "name": "coe-cal", "duration_s": 2, "policy": {"name": "static"},
        "devices": {"count": 1, "mix": "0:1:0"},
        "tiers": {"mid": {"ensemble": ["light-mid", "light-mid-b", "light-mid-c"],
                          "rule": "agreement", "compute_ms": 30.0}}})
    result = run_scenario(cfg, tmp_path / "run")
    ran = (result.run_dir / "scenario.toml").read_text()
    assert "threshold = 1.0" in ran or "threshold = 0.666667" in ran
    check_accounting(result.run_dir, result.summary)


@pytest.mark.slow
def test_server_ensemble_tier_before_the_final_model(tmp_path: Path) -> None:
    """Three levels: device ensembles -> server ensemble (lite + base, unanimity) -> XL."""
    cfg = scenario_from_dict({
        "name": "coe-3", "duration_s": 4, "slo_ms": 400, "policy": {"name": "server-only"},
        "devices": {"count": 3},
        "server": {"heavy_model": "heavy-cnn-xl", "ensemble": ["heavy-cnn-lite", "heavy-cnn"]}})
    result = run_scenario(cfg, tmp_path / "run")
    check_accounting(result.run_dir, result.summary)
    answered = {r.heavy_model for f in iter_record_files(result.run_dir)
                for r in read_records(f)[0] if r.source == "heavy"}
    assert answered == {"agreement(heavy-cnn-lite+heavy-cnn)", "heavy-cnn-xl"}


@pytest.mark.slow
def test_early_exit_mode_answers_at_every_exit_and_loses_nothing(tmp_path: Path) -> None:
    for scheduler in ("slack", "fcfs"):
        cfg = scenario_from_dict({
            "name": f"ee-{scheduler}", "duration_s": 4, "policy": {"name": "server-only"},
            "devices": {"count": 6, "arrival": "onoff", "burst_on_s": 0.5, "burst_off_s": 0.5},
            "server": {"heavy_model": "heavy-ee", "mode": "early-exit",
                       "stage_scheduler": scheduler, "exit_threshold": 0.9}})
        result = run_scenario(cfg, tmp_path / scheduler)
        check_accounting(result.run_dir, result.summary)
        records = [r for f in iter_record_files(result.run_dir) for r in read_records(f)[0]]
        exits = {r.heavy_model for r in records if r.source == "heavy"}
        assert exits == {"heavy-ee@exit1", "heavy-ee@exit2", "heavy-ee@exit3"}
        early = [r for r in records if r.heavy_model in ("heavy-ee@exit1", "heavy-ee@exit2")]
        assert all(r.source == "heavy" for r in early)


@pytest.mark.slow
def test_whole_network_mode_runs_every_stage(tmp_path: Path) -> None:
    cfg = scenario_from_dict({
        "name": "ee-whole", "duration_s": 3, "policy": {"name": "server-only"},
        "devices": {"count": 3}, "server": {"heavy_model": "heavy-ee", "mode": "whole"}})
    result = run_scenario(cfg, tmp_path / "run")
    check_accounting(result.run_dir, result.summary)
    served = {r.heavy_model for f in iter_record_files(result.run_dir)
              for r in read_records(f)[0] if r.source == "heavy"}
    assert served == {"heavy-ee"}


def idn_scenario(policy: str) -> dict[str, object]:
    return {
        "name": f"idn-{policy}", "duration_s": 8, "slo_ms": 300,
        "policy": {"name": "server-only"}, "devices": {"count": 4, "rate_hz": 10},
        "idn": {"policy": policy, "alpha_ms": 0.0, "slot_s": 1.0, "load_s": 0.2, "nodes": [
            {"name": "cloud", "tier": "cloud", "memory_kb": 10000},
            {"name": "edge", "parent": "cloud", "link_ms": 20.0, "memory_kb": 800},
            {"name": "access", "parent": "edge", "link_ms": 5.0, "memory_kb": 400,
             "devices": 1}]}}


@pytest.mark.slow
def test_idn_nodes_learn_to_serve_close_to_the_devices(tmp_path: Path) -> None:
    """Three real server processes; with latency all that counts (alpha 0) the small model
    fits at the access node and serving there is cheapest, so the access node takes over."""
    result = run_scenario(scenario_from_dict(idn_scenario("idn")), tmp_path / "idn")
    run_dir, s = result.run_dir, result.summary
    check_accounting(run_dir, s)
    served = s["idn"]["served_by_node"]
    assert served.get("access", 0) > served.get("cloud", 0) > 0
    assert s["idn"]["served_by_model"].keys() <= {"heavy-cnn-lite", "heavy-cnn",
                                                  "heavy-cnn-xl"}
    slots = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "idn_slot"
             and e["node"] == "access"]
    assert slots and slots[-1]["held"] == ["heavy-cnn-lite"]
    assert all(sum(e["y"][m] * size for m, size in (
        ("heavy-cnn-lite", 347.3), ("heavy-cnn", 753.1), ("heavy-cnn-xl", 980.7))) <= 401
        for e in slots)  # the fractional allocation stays within the 400 kB budget
    assert set(s["server"]["idn_nodes"]) == {"edge", "access"}


@pytest.mark.slow
def test_idn_cloud_only_serves_everything_at_the_repository(tmp_path: Path) -> None:
    result = run_scenario(scenario_from_dict(idn_scenario("cloud-only")), tmp_path / "c")
    check_accounting(result.run_dir, result.summary)
    assert set(result.summary["idn"]["served_by_node"]) == {"cloud"}


def test_plan_profiles_a_model_on_this_host_when_the_server_does_not_pad() -> None:
    """`testbed plan` with `pad_compute = false` times the real model (onnxruntime, 1 thread)
    and fits L(b) = base + per_sample * b."""
    from cascade_testbed.common.modelzoo import open_zoo
    from cascade_testbed.testbed.plan.build import measured_profile

    p = measured_profile(open_zoo(), "heavy-cnn-lite")
    assert p.base_ms >= 0 and p.per_sample_ms > 0
    assert p.target_s(32) > p.target_s(1)


@pytest.mark.slow
def test_a_multi_task_network_serves_each_task_with_its_own_models(tmp_path: Path) -> None:
    """Tiers doing three tasks on one tree: every answer comes from a model of the sample's
    task, the devices judge it against that task's labels, and the access node's budget
    holds models of several tasks."""
    cfg = idn_scenario("greedy-online")
    cfg["idn"]["catalog"] = ["heavy-cnn-lite", "heavy-cnn", "parity-s", "parity-m",  # type: ignore[index]
                             "mod3-s", "mod3-m"]
    cfg["tiers"] = {"low": {"task": "digit"}, "mid": {"task": "parity"},
                    "high": {"task": "mod3"}}
    cfg["devices"] = {"count": 6, "rate_hz": 10}
    result = run_scenario(scenario_from_dict(cfg), tmp_path / "tasks")
    run_dir, s = result.run_dir, result.summary
    check_accounting(run_dir, s)
    task_of = {"low": "", "mid": "parity", "high": "mod3"}
    rows = [r for f in iter_record_files(run_dir) for r in read_records(f)[0]]
    for r in rows:
        assert r.label < {"": 10, "parity": 2, "mod3": 3}[task_of[r.tier]]
        if r.source == "heavy":
            model = r.heavy_model.rsplit("/", 1)[-1]
            assert model.startswith(task_of[r.tier] or "heavy-cnn"), (r.tier, model)
    assert s["accuracy"] > 0.85  # answers in the right label space
    held = {m for e in read_events(run_dir / "events.jsonl") if e["kind"] == "idn_slot"
            and e["node"] == "access" for m in e["held"]}
    assert len({m.split("-")[0] for m in held}) >= 2  # more than one task's models


@pytest.mark.slow
def test_a_cascade_of_ensembles_sends_only_what_its_edge_tier_disagrees_on_to_the_cloud(
        tmp_path: Path) -> None:
    """An edge node with the ensemble of the two cheaper heavy models, the cloud behind a
    bandwidth-limited link: the bytes that cross it are the escalations', far fewer than
    when the edge sends everything up."""
    def run(edge_serve: list[str], name: str) -> dict[str, Any]:
        cfg = scenario_from_dict({
            "name": name, "duration_s": 6, "slo_ms": 400,
            "policy": {"name": "server-only"}, "devices": {"count": 3, "rate_hz": 10},
            "idn": {"policy": "coe", "catalog": ["heavy-cnn-xl"], "edge_serve": edge_serve,
                    "nodes": [{"name": "cloud", "tier": "cloud", "memory_kb": 100000},
                              {"name": "edge", "parent": "cloud", "link_ms": 20.0,
                               "link_mbps": 50.0, "memory_kb": 100000, "devices": 1}]}})
        result = run_scenario(cfg, tmp_path / name)
        check_accounting(result.run_dir, result.summary)
        return result.summary

    coe = run(["heavy-cnn-lite", "heavy-cnn"], "coe")
    cloud = run([], "cloud")
    link = {name: s["server"]["idn_nodes"]["edge"]["idn"]["link"]
            for name, s in (("coe", coe), ("cloud", cloud))}
    escalated = coe["idn"]["served_by_node"].get("cloud", 0)
    assert 0 < escalated < coe["samples"]["completed"] / 4
    assert link["coe"]["messages_up"] == escalated
    assert link["cloud"]["messages_up"] == cloud["samples"]["completed"]
    assert link["coe"]["bytes_up"] * 4 < link["cloud"]["bytes_up"]
