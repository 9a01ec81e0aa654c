"""The example policy on its own: a hand-built `SystemView`, no server, no sockets, no clock
(time is a number passed in). This is how a policy is tested (docs/policies.md)."""

from __future__ import annotations

import pytest

from cascade_testbed.examples.constant import ConstantPolicy
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    DeviceState,
    DeviceWindow,
    PolicyError,
    ServerWindow,
    SystemView,
)

LOW = DeviceInfo("low-000", "low", "tiny", initial_threshold=0.9)
HIGH = DeviceInfo("high-001", "high", "small", initial_threshold=0.9)


def state(info: DeviceInfo, threshold: float) -> DeviceState:
    window = DeviceWindow(window_s=1.0, generated=10, forwarded=4, answered=4, slo_met=4,
                          slo_missed=0, fallback=0, threshold=threshold,
                          mean_light_confidence=0.7, light_ms_mean=5.0)
    return DeviceState(info, threshold, window, fresh=True)


def view(now: float, *states: DeviceState, queue_len: int = 0) -> SystemView:
    return SystemView(now=now, slo_ms=150.0, devices={s.info.device_id: s for s in states},
                      server=ServerWindow(window_s=0.1, queue_len=queue_len, max_batch_size=8))


def test_devices_join_at_their_tier_value_or_the_default() -> None:
    policy = ConstantPolicy({"threshold": 0.6, "tiers": {"low": 0.3}})
    assert policy.join(LOW, 0.0) == 0.3
    assert policy.join(HIGH, 0.0) == 0.6


def test_step_moves_only_devices_that_are_off_their_value_whatever_the_load() -> None:
    policy = ConstantPolicy({"threshold": 0.6, "tiers": {"low": 0.3}})
    held = policy.step(view(1.0, state(LOW, 0.3), state(HIGH, 0.6), queue_len=500))
    assert held.thresholds == {} and held.note == ""
    moved = policy.step(view(2.0, state(LOW, 0.8), state(HIGH, 0.6)))
    assert moved.thresholds == {"low-000": 0.3} and moved.note
    assert moved.heavy_model is None and moved.max_batch_size is None


def test_defaults_hold_every_device_at_one_half() -> None:
    policy = ConstantPolicy()
    assert policy.step(view(0.5, state(LOW, 0.9), state(HIGH, 0.1))).thresholds == \
        {"low-000": 0.5, "high-001": 0.5}


@pytest.mark.parametrize("params", [{"threshold": 1.5}, {"tiers": {"low": -0.1}},
                                    {"tiers": {"low": True}}, {"threshold": "high"},
                                    {"thresholds": 0.5}])
def test_bad_params_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        ConstantPolicy(params)
