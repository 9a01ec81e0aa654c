"""Scenario loading: defaults, overrides, and errors that name the file and the field."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cascade_testbed.common.config import (
    ScenarioConfig,
    ScenarioError,
    assign_tiers,
    device_specs,
    parse_mix,
)
from cascade_testbed.common.scenario_file import load_scenario, scenario_from_dict, scenario_to_dict


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


class TestLoad:
    def test_empty_file_gives_defaults(self, tmp_path: Path) -> None:
        assert load_scenario(write(tmp_path, "")) == ScenarioConfig()

    def test_values_and_tier_overrides_merge(self, tmp_path: Path) -> None:
        """A tier table changes only the fields it names."""
        cfg = load_scenario(write(tmp_path, """
name = "x"
slo_ms = 200
[devices]
count = 5
mix = "0:0:1"
[tiers.high]
compute_ms = 9
[tiers.high.uplink]
delay_ms = 12
[policy]
name = "static"
params = { threshold = 0.4 }
"""))
        assert cfg.slo_ms == 200.0 and cfg.devices.count == 5
        assert cfg.tiers["high"].compute_ms == 9.0
        assert cfg.tiers["high"].uplink.delay_ms == 12.0
        assert cfg.tiers["high"].uplink.bandwidth_mbps == ScenarioConfig().tiers[
            "high"].uplink.bandwidth_mbps
        assert cfg.tiers["high"].model == "light-high"
        assert cfg.policy.params == {"threshold": 0.4}

    def test_custom_tier_set_replaces_defaults(self) -> None:
        cfg = scenario_from_dict({"tiers": {"phone": {"model": "light-high",
                                                      "compute_ms": 5}},
                                  "devices": {"mix": "1"}})
        assert list(cfg.tiers) == ["phone"]

    @pytest.mark.parametrize("text,needle", [
        ("colour = 1", "colour"),
        ("[devices]\ncount = -1", "count"),
        ("[devices]\nrate_hz = 'fast'", "devices.rate_hz"),
        ("[devices]\narrival = 'bursty'", "arrival"),
        ("[server]\nmax_queue_size = 4", "max_queue_size"),
        ("[tiers.low]\nthreshold = 2", "threshold"),
        ("[devices]\nmix = '1:2'", "mix"),
        ("slo_ms = true", "slo_ms"),
    ])
    def test_errors_name_the_field(self, tmp_path: Path, text: str, needle: str) -> None:
        path = write(tmp_path, text)
        with pytest.raises(ScenarioError) as err:
            load_scenario(path)
        assert needle in str(err.value) and str(path) in str(err.value)

    def test_round_trip_through_dict(self) -> None:
        """The scenario as run (written to the run folder) loads back to the same config."""
        cfg = ScenarioConfig(name="rt", seed=3)
        assert scenario_from_dict(scenario_to_dict(cfg)) == cfg


class TestMix:
    def test_parse(self) -> None:
        assert parse_mix("1:2:3", ("a", "b", "c")) == {"a": 1, "b": 2, "c": 3}

    @pytest.mark.parametrize("mix", ["", "a:b:c", "0:0:0", "-1:1:1"])
    def test_bad_mix(self, mix: str) -> None:
        with pytest.raises(ScenarioError):
            parse_mix(mix, ("a", "b", "c"))

    @pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 40, 41])
    def test_counts_follow_weights(self, count: int) -> None:
        """Largest remainder: each tier gets floor or ceil of its exact share."""
        tiers = assign_tiers(count, {"low": 1, "mid": 1, "high": 2})
        got = Counter(tiers)
        assert len(tiers) == count
        for tier, w in (("low", 1), ("mid", 1), ("high", 2)):
            assert abs(got[tier] - count * w / 4) < 1

    def test_interleaved(self) -> None:
        """Any prefix of the devices is mixed, so small runs are heterogeneous too."""
        assert assign_tiers(6, {"low": 1, "mid": 1, "high": 1})[:3] == ["low", "mid", "high"]

    def test_device_specs(self) -> None:
        specs = device_specs(ScenarioConfig())
        assert len(specs) == 40 and len({s.device_id for s in specs}) == 40
        assert {s.tier for s in specs} == {"low", "mid", "high"}


def test_tier_popularity_multiplies_into_the_devices_rates() -> None:
    from cascade_testbed.common.config import device_specs, multiply
    from cascade_testbed.common.scenario_file import scenario_from_dict

    assert multiply((), ((0.0, 2.0),)) == ((0.0, 2.0),)
    assert multiply(((0.0, 2.0), (10.0, 1.0)), ((5.0, 3.0),)) == (
        (0.0, 2.0), (5.0, 6.0), (10.0, 3.0))
    cfg = scenario_from_dict({"name": "p", "devices": {"count": 3, "rate_hz": 10},
                              "tiers": {"mid": {"popularity": [[0, 0.5], [4, 2.0]]}}})
    mid = next(s for s in device_specs(cfg) if s.tier == "mid")
    low = next(s for s in device_specs(cfg) if s.tier == "low")
    assert mid.arrival == "trace" and mid.trace_points == ((0.0, 5.0), (4.0, 20.0))
    assert low.arrival == "poisson" and low.trace_points == ()


def test_a_tier_task_needs_an_inference_delivery_network() -> None:
    from cascade_testbed.common.config import ScenarioError
    from cascade_testbed.common.scenario_file import scenario_from_dict

    with pytest.raises(ScenarioError, match="need an inference delivery network"):
        scenario_from_dict({"name": "t", "tiers": {"mid": {"task": "parity"}}})
    with pytest.raises(ScenarioError, match="popularity"):
        scenario_from_dict({"name": "t", "tiers": {"mid": {"popularity": [[5, 1], [1, 2]]}}})


def test_early_exit_refuses_a_model_switch_list(tmp_path: Path) -> None:
    """The early-exit batcher runs its one staged model: a switch list would have model
    switches reported that never happen, so the scenario is refused."""
    path = write(tmp_path, '[server]\nheavy_model = "heavy-ee"\nmode = "early-exit"\n'
                           'heavy_models = ["heavy-cnn-lite", "heavy-cnn"]\n')
    with pytest.raises(ScenarioError, match=r"early-exit.*heavy_models") as err:
        load_scenario(path)
    assert str(path) in str(err.value)
    assert load_scenario(write(tmp_path, '[server]\nheavy_model = "heavy-ee"\n'
                                         'mode = "early-exit"\n')).server.mode == "early-exit"
    assert load_scenario(write(tmp_path, '[server]\nmode = "whole"\nheavy_models = '
                                         '["heavy-cnn-lite", "heavy-cnn"]\n')).server.heavy_models
