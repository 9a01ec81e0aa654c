"""Replicas, autoscaling, server-side cascades and emulated NPUs with the real harness, server
and devices: what a run provisions is what its summary says it costs, and every sample is
still answered once."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_testbed.common.events import read_events
from cascade_testbed.common.gear_plan import CASCADE_NAME, read_plan
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed.orchestrator import run_scenario
from tests.integration.test_faults_overload import check_accounting

HEAVIES = ["heavy-cnn-lite", "heavy-cnn", "heavy-cnn-xl"]


@pytest.mark.slow
def test_autoscaling_follows_a_load_step_and_the_run_is_charged_what_it_provisioned(
        tmp_path: Path) -> None:
    """Every sample to one heavy model whose replica serves ~90 samples/s at batch 8: 2 then
    12 devices at 20 Hz need 1 and then 3 replicas; the rule scales up when the load steps up
    and the summary's replica-seconds are the events' count over time."""
    cfg = scenario_from_dict({
        "name": "autoscale", "duration_s": 8, "slo_ms": 300,
        "policy": {"name": "server-only"},
        "devices": {"count": 12, "mix": "0:0:1", "rate_hz": 20, "reply_timeout_ms": 5000,
                    "phases": [{"at_s": 0, "count": 2}, {"at_s": 4, "count": 12}]},
        "server": {"heavy_model": "heavy-cnn", "max_batch_size": 8, "batch_base_ms": 6.0,
                   "batch_per_sample_ms": 10.0, "control_interval_s": 0.25,
                   "autoscale": {"enabled": True, "max_replicas": 6, "utilization": 0.9,
                                 "down_after_s": 30}}})
    result = run_scenario(cfg, tmp_path / "run")
    s = result.summary
    check_accounting(result.run_dir, s)
    events = read_events(result.run_dir / "events.jsonl")
    start = next(e["start_at"] for e in events if e["kind"] == "run_clock")
    scaled = [(e["t"] - start, e["replicas"]) for e in events if e["kind"] == "replicas"]
    assert scaled and max(n for _, n in scaled) >= 3
    assert all(t > 3.5 for t, n in scaled if n >= 3)  # up when the load steps up, not before
    cost = s["cost"]
    assert 1.0 < cost["mean_replicas"] < cost["peak_replicas"] <= 6
    # each is rounded to 3 places in the summary, so they agree to about that
    assert cost["replica_seconds"] == pytest.approx(cost["mean_replicas"] * s["run"]["arrivals_s"],
                                                    abs=0.01)
    assert s["samples"]["fallback"] == 0 and s["samples"]["rejected"] == 0


@pytest.mark.slow
def test_gears_run_server_cascades_on_the_replicas_their_plan_provisions(
        tmp_path: Path) -> None:
    """Devices send every sample; the plan, for an accuracy target, picks server-side
    cascades of two heavy models and their replicas per load level; the server builds the
    cascade the gear names, the cheaper model answers what it is sure of, and the replicas
    follow the gears."""
    cfg = scenario_from_dict({
        "name": "cascades", "duration_s": 8, "slo_ms": 150,
        "policy": {"name": "gears", "params": {"no_cascade": True, "server_cascades": True,
                                               "min_accuracy": 0.95, "max_replicas": 4}},
        "devices": {"count": 12, "mix": "0:0:1", "rate_hz": 10, "report_interval_s": 0.25,
                    "reply_timeout_ms": 5000,
                    "phases": [{"at_s": 0, "count": 2}, {"at_s": 4, "count": 12}]},
        "server": {"heavy_model": "heavy-cnn", "heavy_models": HEAVIES,
                   "control_interval_s": 0.1, "batch_base_ms": 6.0,
                   "batch_per_sample_ms": 12.0}})
    result = run_scenario(cfg, tmp_path / "run")
    s = result.summary
    check_accounting(result.run_dir, s)
    plan = read_plan(result.run_dir / "gear_plan.json")
    assert plan.meta["min_accuracy"] == 0.95 and plan.meta["server_cascades"]
    assert all(g.accuracy >= 0.95 for g in plan.gears)
    assert any(CASCADE_NAME.fullmatch(g.heavy_model) for g in plan.gears)
    assert len({g.replicas for g in plan.gears}) > 1
    events = read_events(result.run_dir / "events.jsonl")
    switched = {e["model"] for e in events if e["kind"] == "model_switch"}
    assert any(CASCADE_NAME.fullmatch(m) for m in switched)
    assert any(e["kind"] == "replicas" for e in events)
    answered = s["answered_by"]
    assert answered.get("heavy-cnn-lite", 0) > 0 and sum(answered.values()) == \
        s["samples"]["completed"] - s["samples"]["fallback"] - s["samples"]["rejected"]
    assert s["cost"]["peak_replicas"] > 1


@pytest.mark.slow
def test_an_early_exit_model_on_the_npus_answers_every_sample_to_completion(
        tmp_path: Path) -> None:
    """The exit-aware scheduler on the fluid NPU with a soft target: requests past it still
    run to completion (no reply timeout cuts a latency short), and samples leave at every
    exit; the same load run to completion on the conventional NPU is slower on average."""
    def run(server: dict[str, object], name: str) -> dict[str, object]:
        cfg = scenario_from_dict({
            "name": name, "duration_s": 6, "slo_ms": 150,
            "policy": {"name": "server-only"},
            "devices": {"count": 6, "mix": "0:0:1", "rate_hz": 20, "reply_timeout_ms": 30000},
            "server": {"heavy_model": "heavy-ee", "exit_threshold": 0.9, "target_ms": 100,
                       "batch_base_ms": 6.0, "batch_per_sample_ms": 4.2, **server}})
        result = run_scenario(cfg, tmp_path / name)
        check_accounting(result.run_dir, result.summary)
        return result.summary

    fluid = run({"mode": "early-exit", "stage_scheduler": "slack",
                 "accelerator": {"kind": "fluid-npu"}}, "fluid")
    conventional = run({"mode": "whole", "accelerator": {"kind": "conventional-npu"}}, "conv")
    for s in (fluid, conventional):
        assert s["samples"]["fallback"] == 0 and s["samples"]["rejected"] == 0  # type: ignore[index]
    exits = {m for m in fluid["answered_by"]}  # type: ignore[attr-defined]
    assert {"heavy-ee@exit1", "heavy-ee@exit3"} <= exits
    assert fluid["latency_ms"]["mean"] < conventional["latency_ms"]["mean"]  # type: ignore[index]
