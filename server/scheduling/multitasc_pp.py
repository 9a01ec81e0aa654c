"""MultiTASC++: continuously adaptive, per-device thresholds and heavy-model switching.

Called by `server.control` every control interval. Follows the follow-up paper's named parts
(docs/multitasc.md maps them and says what had to be guessed):

* **Per-device SLO satisfaction**, updated from every report over a sliding window, drives a
  proportional controller on each device's threshold (MultiTASC moves whole tiers by fixed
  steps when a tier crosses the target; this reacts to each device, in proportion to how far
  it is off target).
* **Device-load-aware multipliers** scale each device's move by its share of the server's
  load: a device that sends more sheds more when the SLO is missed and grows less when there
  is room. Heterogeneity enters as in MultiTASC, through each device's marginal accuracy gain.
* **Heavy-model switching**: every `switch_every_s` the policy estimates, for each heavy model
  the server holds, the accuracy its capacity can buy for the devices' current rates (greedy
  allocation over the validation curves, `allocation.allocate`), and switches when another
  model is clearly better for `patience` checks in a row; the new model starts from the
  allocation's thresholds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from server.scheduling.allocation import Demand, allocate
from server.scheduling.base import (
    DeviceInfo,
    PolicyDecision,
    ReportHorizon,
    SystemView,
    check_params,
    clamp,
)
from server.scheduling.multitasc import marginal_gain


@dataclass(slots=True)
class _Device:
    info: DeviceInfo
    threshold: float
    horizon: ReportHorizon


class MultiTASCPlusPlusPolicy:
    name: ClassVar[str] = "multitasc++"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "target": 0.95,
        "horizon_s": 2.0,
        "min_decided": 10,
        "step": 0.02,
        "error_scale": 0.05,
        "multiplier_min": 0.25,
        "multiplier_max": 4.0,
        "queue_high": 1.0,
        "queue_ms_high": 0.1,
        "min_threshold": 0.0,
        "max_threshold": 1.0,
        "switch_every_s": 2.0,
        "patience": 2,
        "switch_margin": 0.005,
        "utilization": 0.8,
        "cooldown_s": 6.0,
    }
    """`step`: threshold change per control interval at a normalised error of 1, where the
    error is (satisfaction - target) / `error_scale`, clipped to [-4, 1]. Multipliers are
    clipped to [`multiplier_min`, `multiplier_max`]. Model switching compares models at
    `utilization` of their capacity and needs a gain of `switch_margin` (accuracy) for
    `patience` checks, and `cooldown_s` since the last switch."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.p = check_params(self.name, params or {}, self.DEFAULTS)
        self._devices: dict[str, _Device] = {}
        self._last_check = -float("inf")
        self._last_switch = -float("inf")
        self._patience = max(int(self.p["patience"]), 1)
        self._votes: deque[str] = deque(maxlen=self._patience)
        self.estimates: dict[str, float] = {}
        """Accuracy each heavy model could reach now (last check), for status and tests."""

    def join(self, device: DeviceInfo, now: float) -> float:
        start = self._clamp(device.initial_threshold)
        self._devices[device.device_id] = _Device(device, start,
                                                  ReportHorizon(self.p["horizon_s"]))
        return start

    def leave(self, device_id: str, now: float) -> None:
        self._devices.pop(device_id, None)

    def step(self, view: SystemView) -> PolicyDecision:
        self._observe(view)
        if not self._devices:
            return PolicyDecision()
        switch = self._choose_model(view)
        if switch is not None:
            name, thresholds, note = switch
            out = {dev: self._clamp(t) for dev, t in thresholds.items() if dev in self._devices}
            for dev, t in out.items():
                self._devices[dev].threshold = t
            return PolicyDecision(thresholds=out, note=note, heavy_model=name)
        return self._adapt(view)

    # --- thresholds -------------------------------------------------------------------------

    def _adapt(self, view: SystemView) -> PolicyDecision:
        p = self.p
        heavy = view.heavy_model
        stats = {dev: d.horizon.totals() for dev, d in self._devices.items()}
        sat = {dev: s.slo_met / (s.slo_met + s.slo_missed) for dev, s in stats.items()
               if s.slo_met + s.slo_missed >= p["min_decided"]}
        loads = {dev: (s.forwarded / s.window_s if s.window_s > 0 else 0.0)
                 for dev, s in stats.items()}
        total = sum(loads.values())
        n = len(self._devices)
        server = view.server
        queued = server.queue_len / max(server.max_batch_size, 1) > p["queue_high"]
        waiting = server.mean_queue_ms >= p["queue_ms_high"] * view.slo_ms
        worst = min(sat.values(), default=None)
        congested = queued or (waiting and worst is not None and worst < p["target"])
        gains = {dev: marginal_gain(d.info.curve_for(heavy), d.threshold, d.info.light_accuracy)
                 for dev, d in self._devices.items()}
        g_min, g_max = min(gains.values()), max(gains.values())
        out: dict[str, float] = {}
        for dev, d in self._devices.items():
            share = loads[dev] / total * n if total > 0 else 1.0
            down = self._bound(share) * g_min / gains[dev]
            up = self._bound(1 / share if share > 0 else p["multiplier_max"]) * gains[dev] / g_max
            err = None if dev not in sat else (sat[dev] - p["target"]) / p["error_scale"]
            if congested:
                err = min(err if err is not None else -1.0, -1.0)
            if err is None or (err > 0 and waiting):
                continue
            err = min(max(err, -4.0), 1.0)
            delta = p["step"] * err * (up if err > 0 else down)
            new = self._clamp(d.threshold + delta)
            if new != d.threshold:
                d.threshold = new
                out[dev] = new
        worst_txt = "-" if worst is None else f"{worst:.3f}"
        state = "congested" if congested else "waiting" if waiting else "adapting"
        return PolicyDecision(thresholds=out, note=f"{state}: worst device SLO sat. "
                              f"{worst_txt}, queue {server.queue_len}, model {heavy}")

    def _bound(self, multiplier: float) -> float:
        return min(max(multiplier, float(self.p["multiplier_min"])),
                   float(self.p["multiplier_max"]))

    # --- heavy model ------------------------------------------------------------------------

    def _choose_model(self, view: SystemView) -> tuple[str, dict[str, float], str] | None:
        """Every `switch_every_s`: the model whose capacity buys the most accuracy now."""
        p = self.p
        if len(view.heavy_options) < 2 or view.now - self._last_check < p["switch_every_s"]:
            return None
        self._last_check = view.now
        rates = {dev: (s.generated / s.window_s if s.window_s > 0 else 0.0)
                 for dev, s in ((d, t.horizon.totals()) for d, t in self._devices.items())}
        if sum(rates.values()) <= 0:
            return None
        plans = {}
        for name, option in view.heavy_options.items():
            demands = [Demand(dev, rates[dev], d.info.curve_for(name))
                       for dev, d in self._devices.items()]
            plans[name] = allocate(demands, option.capacity_sps * p["utilization"])
        self.estimates = {name: round(a.accuracy, 4) for name, a in plans.items()}
        best = max(plans, key=lambda n: plans[n].accuracy)
        current = view.heavy_model
        gain = plans[best].accuracy - plans[current].accuracy if current in plans else 1.0
        self._votes.append(best if best != current and gain > p["switch_margin"] else current)
        if len(self._votes) < self._patience or any(v != best for v in self._votes) or \
                best == current or view.now - self._last_switch < p["cooldown_s"]:
            return None
        self._last_switch = view.now
        self._votes.clear()
        note = (f"switch {current} -> {best}: estimated accuracy "
                f"{plans[current].accuracy if current in plans else 0:.3f} -> "
                f"{plans[best].accuracy:.3f} at {sum(rates.values()):.0f} samples/s")
        return best, plans[best].thresholds, note

    # --- bookkeeping ------------------------------------------------------------------------

    def _observe(self, view: SystemView) -> None:
        for dev, state in view.devices.items():
            d = self._devices.get(dev)
            if d is None:
                continue
            d.threshold = state.threshold
            d.horizon.observe(state, view.now)

    def _clamp(self, value: float) -> float:
        return clamp(value, self.p["min_threshold"], self.p["max_threshold"])

