"""Baselines beside `static`: the two ends of a cascade, and an adaptive scheduler that is
load-aware but blind to device heterogeneity (docs/baselines.md says where each comes from)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    Policy,
    PolicyDecision,
    SystemView,
    check_params,
)


class ServerOnlyPolicy(Policy):
    """Every sample goes to the heavy model (threshold 1): the cloud-only end."""

    name: ClassVar[str] = "server-only"

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        check_params(self.name, params or {}, {})

    def join(self, device: DeviceInfo, now: float) -> float:
        return 1.0

    def leave(self, device_id: str, now: float) -> None:
        pass

    def step(self, view: SystemView) -> PolicyDecision:
        return PolicyDecision()


class DeviceOnlyPolicy(ServerOnlyPolicy):
    """No sample leaves the device (threshold 0): the on-device end."""

    name: ClassVar[str] = "device-only"

    def join(self, device: DeviceInfo, now: float) -> float:
        return 0.0


class UniformAIMDPolicy(Policy):
    """One threshold for every device, moved by AIMD on the pooled SLO satisfaction: cut by
    `decrease` (multiplicative) when it is below target or the server queue builds up, raised
    by `increase` (additive) when it is `margin` above. Adapts to load like MultiTASC but treats
    all devices alike, so it isolates what heterogeneity awareness adds."""

    name: ClassVar[str] = "uniform-aimd"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "target": 0.95, "margin": 0.02, "horizon_s": 2.0, "min_decided": 20,
        "decrease": 0.9, "increase": 0.01, "queue_high": 1.0, "start": 0.85,
    }

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.p = check_params(self.name, params or {}, self.DEFAULTS)
        self.threshold = float(self.p["start"])
        self._devices: set[str] = set()
        self._reports: deque[tuple[float, int, int]] = deque()

    def join(self, device: DeviceInfo, now: float) -> float:
        self._devices.add(device.device_id)
        return self.threshold

    def leave(self, device_id: str, now: float) -> None:
        self._devices.discard(device_id)

    def step(self, view: SystemView) -> PolicyDecision:
        for state in view.devices.values():
            if state.fresh and state.window is not None:
                self._reports.append((view.now, state.window.slo_met, state.window.slo_missed))
        while self._reports and self._reports[0][0] < view.now - self.p["horizon_s"]:
            self._reports.popleft()
        met = sum(r[1] for r in self._reports)
        missed = sum(r[2] for r in self._reports)
        server = view.server
        queued = server.queue_len / max(server.max_batch_size, 1) > self.p["queue_high"]
        sat = met / (met + missed) if met + missed >= self.p["min_decided"] else None
        before = self.threshold
        if queued or (sat is not None and sat < self.p["target"]):
            self.threshold *= self.p["decrease"]
        elif sat is not None and sat >= self.p["target"] + self.p["margin"]:
            self.threshold = min(self.threshold + self.p["increase"], 1.0)
        if self.threshold == before:
            return PolicyDecision()
        sat_txt = "-" if sat is None else f"{sat:.3f}"
        return PolicyDecision(thresholds=dict.fromkeys(view.devices, self.threshold),
                              note=f"pooled SLO sat. {sat_txt}, queue {server.queue_len}")
