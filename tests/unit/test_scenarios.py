"""Every shipped scenario file loads and names known policies and zoo models."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_testbed.common.config import device_specs
from cascade_testbed.common.gear_plan import Gear, GearPlan
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.server.scheduling import make_policy
from cascade_testbed.server.scheduling.gears import GearsPolicy
from cascade_testbed.testbed.faults import plan_faults
from cascade_testbed.testbed.sweep import expand, parse_axes

SCENARIOS = sorted(p for p in (Path(__file__).resolve().parents[2] / "scenarios").rglob("*.toml")
                   if p.parent.name != "tuning")
"""Tuning files are not scenarios: tests/unit/test_claims_tuning.py checks each of their
configurations as the scenario it makes."""


ANY_PLAN = GearPlan(gears=(Gear("heavy-cnn", {}, 8, 0.9, 0.5, {}, 1.0),), table=(0,))


def check_policy(name: str, params: dict[str, object]) -> None:
    """Known name and params; a gears run without a plan gets one made by the harness."""
    if name == "gears" and not params.get("plan"):
        GearsPolicy(params, plan=ANY_PLAN)
    else:
        make_policy(name, dict(params))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_scenario_is_valid(path: Path) -> None:
    cfg = load_scenario(path)
    check_policy(cfg.policy.name, cfg.policy.params)
    zoo = open_zoo(cfg.zoo)
    for tier in cfg.tiers.values():
        for model in tier.members:
            zoo.card(model)
    for name in (cfg.server.heavy_model, *cfg.server.heavy_models):
        if name:
            zoo.card(name)
    specs = device_specs(cfg)
    assert len(specs) == cfg.devices.count
    plan_faults(cfg, [(s.device_id, s.tier) for s in specs])
    for point in expand(cfg, parse_axes(cfg.sweep)):
        check_policy(point.cfg.policy.name, point.cfg.policy.params)
        for tier in point.cfg.tiers.values():
            for model in tier.members:
                zoo.card(model)


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 3


def test_the_real_world_scenario_combines_a_link_trace_trace_arrivals_and_power_models() -> None:
    cfg = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "traces.toml")
    assert cfg.devices.arrival == "azure" and cfg.devices.azure is not None
    high = cfg.tiers["high"]
    assert high.uplink.trace and high.downlink.trace
    assert high.power.tail_s > 1.0 and cfg.tiers["low"].power.tail_s < 1.0  # LTE vs WiFi
    assert cfg.server.power.active_w > cfg.server.power.idle_w
