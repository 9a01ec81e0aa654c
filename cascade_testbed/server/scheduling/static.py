"""The classic cascade baseline: every device keeps the threshold it started with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    Policy,
    PolicyDecision,
    SystemView,
    check_params,
)


class StaticPolicy(Policy):
    name: ClassVar[str] = "static"
    DEFAULTS: ClassVar[dict[str, Any]] = {"threshold": -1.0}
    """`threshold` >= 0 overrides every device's initial threshold."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = check_params(self.name, params or {}, self.DEFAULTS)

    def join(self, device: DeviceInfo, now: float) -> float:
        fixed = self.params["threshold"]
        return float(fixed) if fixed >= 0 else device.initial_threshold

    def leave(self, device_id: str, now: float) -> None:
        pass

    def step(self, view: SystemView) -> PolicyDecision:
        return PolicyDecision()
