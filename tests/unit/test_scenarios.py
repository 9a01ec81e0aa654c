"""Every shipped scenario file loads and names known policies and zoo models."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.scheduling import make_policy
from testbed.config import device_specs
from testbed.faults import plan_faults
from testbed.modelzoo import open_zoo
from testbed.scenario_file import load_scenario
from testbed.sweep import expand, parse_axes

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").rglob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_scenario_is_valid(path: Path) -> None:
    cfg = load_scenario(path)
    make_policy(cfg.policy.name, cfg.policy.params)
    zoo = open_zoo(cfg.zoo)
    for tier in cfg.tiers.values():
        zoo.card(tier.model)
    for name in (cfg.server.heavy_model, *cfg.server.heavy_models):
        if name:
            zoo.card(name)
    specs = device_specs(cfg)
    assert len(specs) == cfg.devices.count
    plan_faults(cfg, [(s.device_id, s.tier) for s in specs])
    for point in expand(cfg, parse_axes(cfg.sweep)):
        make_policy(point.cfg.policy.name, point.cfg.policy.params)


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 3
