"""CascadeServe's online phase: measure the load, look up the gear, apply it.

Every step (100 ms in the paper) the policy sums the devices' reported arrival rates, scales
the sum by `safety_factor` (the paper's `qps_fac`), and looks up the plan's gear for that load:
the devices' thresholds per tier, the server's heavy model and batch cap. Moving to a cheaper
gear happens at once; moving to a costlier one waits until the queue has drained
(`queue_len * max_queue_len <= load`, the paper's downshift hysteresis), so a backlog built
under load is not served with the slower cascade. It starts on the cheapest gear and moves up
once the first reports arrive. `pin_load` >= 0 fixes the gear to the one planned for that load
(the "no switching" ablation). Pure: the plan is read once, at start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from cascade_testbed.common.gear_plan import Gear, GearPlan, read_plan
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    Policy,
    PolicyDecision,
    PolicyError,
    SystemView,
    check_params,
)


class GearsPolicy(Policy):
    name: ClassVar[str] = "gears"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "plan": "", "safety_factor": 1.0, "max_queue_len": 8.0, "pin_load": -1.0,
        "smoothing_s": 1.0, "rise_s": 0.2, "no_cascade": False, "server_cascades": False,
        "min_accuracy": -1.0, "max_replicas": 1, "fixed": False, "utilization": 0.8,
    }
    """`smoothing_s` / `rise_s`: time constants of an exponential average of the measured
    load while it falls / rises (0: the raw sum of the devices' last reports, as the paper's
    meter): quick to follow a surge, slow to believe a lull. `no_cascade`, `server_cascades`,
    `min_accuracy` (>= 0: a target), `max_replicas`, `fixed` and `utilization` are read by the
    harness when it plans for a run without a plan (`testbed.plan.build.PlanOptions`). Every
    gear says how many replicas of the accelerator it provisions; the policy asks for them."""

    def __init__(self, params: Mapping[str, Any] | None = None, *,
                 plan: GearPlan | None = None) -> None:
        self.p = check_params(self.name, params or {}, self.DEFAULTS)
        if plan is None:
            if not self.p["plan"]:
                raise PolicyError("policy 'gears' needs params.plan, a file written by "
                                  "`testbed plan SCENARIO.toml --out PLAN.json`")
            try:
                plan = read_plan(self.p["plan"])
            except ValueError as exc:
                raise PolicyError(str(exc)) from None
        self.plan = plan
        self._first_level = {g: self.plan.table.index(g) for g in set(self.plan.table)}
        pin = float(self.p["pin_load"])
        # Until the first reports say otherwise, the cheapest gear: starting on the costliest
        # would build a backlog at the first load that the cheaper gears then have to drain.
        self.current = self.plan.lookup(pin) if pin >= 0 else self.plan.table[-1]
        self._tiers: dict[str, str] = {}
        self.load_sps = 0.0
        """The last measured load (samples/s over all devices), smoothed and scaled."""
        self._announced = False
        self._smoothed: float | None = None
        self._last_now: float | None = None

    @property
    def gear(self) -> Gear:
        return self.plan.gears[self.current]

    def join(self, device: DeviceInfo, now: float) -> float:
        self._tiers[device.device_id] = device.tier
        return self.gear.thresholds.get(device.tier, device.initial_threshold)

    def leave(self, device_id: str, now: float) -> None:
        self._tiers.pop(device_id, None)

    def step(self, view: SystemView) -> PolicyDecision:
        rate = sum(s.window.rate_hz for s in view.devices.values() if s.window is not None)
        # Until samples flow (devices report before the run starts) there is no load to
        # measure, which is not a load of zero; from then on, zeros count.
        if rate > 0 or self._smoothed is not None:
            self.load_sps = self._smooth(rate, view.now) * float(self.p["safety_factor"])
        pin = float(self.p["pin_load"])
        if pin >= 0:
            target = self.plan.lookup(pin)
        else:
            target = self.plan.lookup(self.load_sps) if self._smoothed is not None \
                else self.current
        switched = None
        if not self._announced:  # the first gear is recorded too, so a run's gears are complete
            self._announced = True
            switched = {"gear": self.current, "previous": None,
                        "load_sps": round(self.load_sps, 1)}
        if target != self.current:
            costlier = self._first_level[target] < self._first_level[self.current]
            drained = view.server.queue_len * float(self.p["max_queue_len"]) <= self.load_sps
            if not costlier or drained:
                switched = {"gear": target, "previous": self.current,
                            "load_sps": round(self.load_sps, 1)}
                self.current = target
        g = self.gear
        thresholds = {dev: g.thresholds[tier] for dev, tier in self._tiers.items()
                      if tier in g.thresholds}
        model = g.heavy_model if g.heavy_model != view.heavy_model else None
        note = (f"gear {self.current} at {self.load_sps:.0f} samples/s: {g.heavy_model}, "
                f"batch {g.max_batch_size}, {g.replicas} replica{'s' if g.replicas > 1 else ''}"
                f", expected accuracy {g.accuracy:.3f}")
        return PolicyDecision(thresholds=thresholds, note=note, heavy_model=model,
                              max_batch_size=g.max_batch_size, replicas=g.replicas,
                              gear={**switched, "model": g.heavy_model,
                                    "max_batch_size": g.max_batch_size,
                                    "accuracy": g.accuracy} if switched else None)

    def _smooth(self, rate: float, now: float) -> float:
        rising = self._smoothed is not None and rate > self._smoothed
        tau = float(self.p["rise_s"] if rising else self.p["smoothing_s"])
        if self._smoothed is None or self._last_now is None or tau <= 0:
            self._smoothed = rate
        else:
            alpha = 1.0 - math.exp(-max(now - self._last_now, 0.0) / tau)
            self._smoothed += alpha * (rate - self._smoothed)
        self._last_now = now
        return self._smoothed
