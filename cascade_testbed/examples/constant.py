"""A user policy, complete: every device held at a fixed threshold, optionally one per tier.

Run it by spec, `testbed up --policy cascade_testbed.examples.constant:ConstantPolicy`, or
by the entry point this project declares for it, `testbed up --policy constant`
(pyproject.toml). A useful yardstick:
a tuned static cascade that ignores load, against which adaptive policies must earn their keep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    Policy,
    PolicyDecision,
    PolicyError,
    SystemView,
    check_params,
)


class ConstantPolicy(Policy):
    """Every device at `threshold`, or at `tiers[its tier]` when the table names its tier."""

    name: ClassVar[str] = "constant"
    DEFAULTS: ClassVar[dict[str, Any]] = {"threshold": 0.5, "tiers": {}}

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.p = check_params(self.name, params or {}, self.DEFAULTS)
        for where, value in [("threshold", self.p["threshold"]),
                             *((f"tiers.{k}", v) for k, v in self.p["tiers"].items())]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value <= 1.0:
                raise PolicyError(f"policy 'constant': {where} must be a number in [0, 1]")

    def target(self, tier: str) -> float:
        return float(self.p["tiers"].get(tier, self.p["threshold"]))

    def join(self, device: DeviceInfo, now: float) -> float:
        return self.target(device.tier)

    def leave(self, device_id: str, now: float) -> None:
        pass

    def step(self, view: SystemView) -> PolicyDecision:
        """Put back any device that is off its value (nothing else moves thresholds, so after
        the joins this is empty: the controller sends messages only for changes anyway)."""
        moved = {dev: self.target(s.info.tier) for dev, s in view.devices.items()
                 if abs(s.threshold - self.target(s.info.tier)) > 1e-9}
        return PolicyDecision(thresholds=moved, note="held at the constant" if moved else "")
