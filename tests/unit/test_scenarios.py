"""Every shipped scenario file loads and names known policies and zoo models."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.scheduling import make_policy
from testbed.config import device_specs, load_scenario
from testbed.modelzoo import open_zoo

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").rglob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_scenario_is_valid(path: Path) -> None:
    cfg = load_scenario(path)
    make_policy(cfg.policy.name, cfg.policy.params)
    zoo = open_zoo(cfg.zoo)
    for tier in cfg.tiers.values():
        zoo.card(tier.model)
    assert len(device_specs(cfg)) == cfg.devices.count


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 3
