"""MultiTASC++: continuously adaptive, per-device thresholds and heavy-model switching.

Called by `server.control` every control interval. Follows the follow-up paper's named parts
(docs/multitasc.md maps them and says what had to be guessed):

* **Continuous per-device reconfiguration.** Each device's threshold moves every interval in
  proportion to how far its own SLO satisfaction (its reports over `horizon_s`) is from the
  set-point: multiplicatively down when it misses, additively up when it has room (AIMD).
* **SLO satisfaction rate updates.** The set-point the devices are steered to is not the
  target itself but `target + margin + boost`: `boost` grows while the satisfaction measured
  over `long_horizon_s` falls short of the target and decays while it is comfortably above,
  so a controller that dithers around its set-point still meets the target on average.
* **Threshold scaling with device-load-aware multipliers.** The server's load is predicted
  from each device's rate and the forward rate its threshold gives on its validation curve
  (calibrated against the measured arrivals). When that load would exceed `utilization` of
  the running model's capacity (devices joined, rates rose), every threshold is scaled at once
  by `s ** w_i` with one common `s` chosen so the load fits: a leading signal, acted on before
  any sample misses. `w_i` grows with the device's share of the server's load and shrinks with
  the accuracy its forwards gain (heterogeneity), so heavy senders with strong light models
  shed most. Growth is capped at the same load.
* **Heavy-model switching.** Every `switch_every_s` the policy estimates, for each heavy model,
  the accuracy its capacity can buy for the devices' current rates (`allocation.allocate`) and
  moves to a clearly better one after `patience` agreeing checks and `cooldown_s`; a move to a
  slower model needs a calm server. When the running model cannot carry the load at all (a
  surge), it switches at once to the best model that can, and no threshold is raised by the
  switch, so the backlog drains instead of growing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cascade_testbed.server.scheduling.allocation import (
    Demand,
    Flow,
    allocate,
    expected_load,
    forward_rate_at,
    scale_to_load,
)
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    Policy,
    PolicyDecision,
    ReportHorizon,
    SystemView,
    check_params,
    clamp,
)
from cascade_testbed.server.scheduling.multitasc import marginal_gain


@dataclass(slots=True)
class _Device:
    info: DeviceInfo
    threshold: float
    horizon: ReportHorizon
    """Reports of the last `horizon_s`: the device's rate and load."""
    evidence: ReportHorizon
    """The same, but only since its threshold was last cut: its SLO satisfaction."""


@dataclass(slots=True)
class SetPoint:
    """The satisfaction the controller steers to, updated from the measured rate (pure).

    `satisfaction` is an exponentially weighted count of met / missed samples over
    `horizon_s`; below `target` the boost grows in proportion to the shortfall, at or above
    `target + margin` it decays, so the set-point rises only as far as the target needs."""

    target: float
    margin: float
    step: float
    max_boost: float
    horizon_s: float
    error_scale: float
    boost: float = 0.0
    met: float = 0.0
    missed: float = 0.0
    last: float | None = None

    @property
    def value(self) -> float:
        return min(self.target + self.margin + self.boost, 0.999)

    @property
    def satisfaction(self) -> float | None:
        decided = self.met + self.missed
        return float(self.met / decided) if decided >= 1.0 else None

    def update(self, now: float, met: int, missed: int) -> None:
        if self.last is not None and now > self.last:
            decay = math.exp(-(now - self.last) / self.horizon_s)
            self.met, self.missed = self.met * decay, self.missed * decay
        self.last = now
        self.met += met
        self.missed += missed
        sat = self.satisfaction
        if sat is None:
            return
        if sat < self.target:
            self.boost += self.step * min((self.target - sat) / self.error_scale, 1.0)
        elif sat >= self.target + self.margin:
            self.boost -= self.step / 2
        self.boost = min(max(self.boost, 0.0), self.max_boost)


@dataclass(slots=True)
class _Switching:
    last_check: float = -float("inf")
    last_switch: float = -float("inf")
    votes: deque[str] = field(default_factory=deque)


class MultiTASCPlusPlusPolicy(Policy):
    name: ClassVar[str] = "multitasc++"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "target": 0.95,
        "margin": 0.02,
        "setpoint_step": 0.001,
        "setpoint_max": 0.02,
        "long_horizon_s": 20.0,
        "horizon_s": 2.0,
        "min_decided": 10,
        "up_step": 0.02,
        "down_scale": 0.04,
        "max_cut": 0.3,
        "error_scale": 0.05,
        "multiplier_min": 0.25,
        "multiplier_max": 4.0,
        "utilization": 0.7,
        "drain_s": 1.0,
        "up_speed_max": 3.0,
        "queue_high": 1.0,
        "queue_ms_high": 0.1,
        "min_threshold": 0.0,
        "max_threshold": 1.0,
        "switch_every_s": 2.0,
        "patience": 2,
        "switch_margin": 0.005,
        "cooldown_s": 6.0,
        "switching": True,
    }
    """Set-point: `target + margin`, raised by up to `setpoint_max` (`setpoint_step` per
    interval and error unit) while the satisfaction over `long_horizon_s` is short of target.
    Per device, the error is (satisfaction - set-point) / `error_scale`, clipped to [-4, 1]; a
    miss multiplies the threshold by 1 - `down_scale` * |error| * multiplier (at most
    `max_cut`), room adds `up_step` * error * multiplier. Multipliers are clipped to
    [`multiplier_min`, `multiplier_max`]. The server is planned at `utilization` of the running
    model's capacity (less the backlog it should drain within `drain_s`), for growth, the
    load-aware scaling and the model comparison; growth is up to `up_speed_max` times faster
    when the load is far below that. Switches need a gain of `switch_margin` (accuracy) for
    `patience` checks and `cooldown_s`. `utilization` 0.7 was chosen on tuning seeds over 0.8
    (docs/multitasc.md). `switching = false` keeps the running heavy model whatever else the
    server holds: the continuous adaptation alone (the ablation of claim
    `multitasc-pp-changing-load-no-switching`)."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.p = check_params(self.name, params or {}, self.DEFAULTS)
        p = self.p
        self._devices: dict[str, _Device] = {}
        self.setpoint = SetPoint(p["target"], p["margin"], p["setpoint_step"],
                                 p["setpoint_max"], p["long_horizon_s"], p["error_scale"])
        self._patience = max(int(p["patience"]), 1)
        self._switch = _Switching(votes=deque(maxlen=self._patience))
        self._calibration = 1.0
        """Live forward rate / validation forward rate at the same thresholds (from reports)."""
        self.estimates: dict[str, float] = {}
        """Accuracy each heavy model could reach now (last check), for status and tests."""
        self.predicted_load = 0.0

    def join(self, device: DeviceInfo, now: float) -> float:
        """A newcomer starts no higher than its tier does now: the tier's thresholds carry
        what the server can take at the moment."""
        start = self._clamp(device.initial_threshold)
        peers = [d.threshold for d in self._devices.values() if d.info.tier == device.tier]
        if peers:
            start = min(start, sum(peers) / len(peers))
        self._devices[device.device_id] = _Device(device, start,
                                                  ReportHorizon(self.p["horizon_s"]),
                                                  ReportHorizon(self.p["horizon_s"]))
        return start

    def leave(self, device_id: str, now: float) -> None:
        self._devices.pop(device_id, None)

    def step(self, view: SystemView) -> PolicyDecision:
        self._observe(view)
        if not self._devices:
            return PolicyDecision()
        rates = self._rates()
        switch = self._choose_model(view, rates)
        if switch is not None:
            name, thresholds, note = switch
            out = {dev: self._clamp(t) for dev, t in thresholds.items() if dev in self._devices}
            for dev, t in out.items():
                self._devices[dev].threshold = t
            return PolicyDecision(thresholds=out, note=note, heavy_model=name)
        return self._adapt(view, rates)

    # --- thresholds -------------------------------------------------------------------------

    def _adapt(self, view: SystemView, rates: dict[str, float]) -> PolicyDecision:
        p = self.p
        heavy = view.heavy_model
        server = view.server
        stats = {dev: d.evidence.totals() for dev, d in self._devices.items()}
        sat = {dev: s.slo_met / (s.slo_met + s.slo_missed) for dev, s in stats.items()
               if s.slo_met + s.slo_missed >= p["min_decided"]}
        setpoint = self.setpoint.value
        queued = server.queue_len / max(server.max_batch_size, 1) > p["queue_high"]
        waiting = server.mean_queue_ms >= p["queue_ms_high"] * view.slo_ms
        worst = min(sat.values(), default=None)
        met = sum(s.slo_met for s in stats.values())
        decided = met + sum(s.slo_missed for s in stats.values())
        pooled = met / decided if decided >= p["min_decided"] else None
        # Shared overload: a backlog, or requests waiting while the fleet (not one unlucky
        # device among many) misses the target.
        congested = queued or (waiting and pooled is not None and pooled < p["target"])
        budget = self._budget(view)
        if budget is not None:
            # A backlog is load already here: leave room to drain it within `drain_s`.
            budget = max(budget - server.queue_len / p["drain_s"], 0.5 * budget)
        load = self._load(rates, heavy)
        # The prediction can only miss load it has not seen reported (devices that just
        # started): when the server measures clearly more, scale by the measured excess.
        excess = server.arrival_rate / load if load > 0 and server.arrival_rate > 1.25 * load \
            else 1.0
        down, up = self._multipliers(rates, heavy)
        before = {dev: d.threshold for dev, d in self._devices.items()}
        new = dict(before)
        growth: dict[str, float] = {}
        for dev in new:
            err = None if dev not in sat else (sat[dev] - setpoint) / p["error_scale"]
            if congested:
                err = min(err if err is not None else -1.0, -1.0)
            if err is None:
                continue
            err = min(max(err, -4.0), 1.0)
            if err < 0:
                cut = min(p["down_scale"] * -err * down[dev], p["max_cut"])
                new[dev] = before[dev] * (1.0 - cut)
            elif err > 0 and not waiting and (budget is None or load < budget):
                growth[dev] = p["up_step"] * err * up[dev]
        # Far below the planned load (after a cut, or devices left), grow faster.
        speed = 1.0 if budget is None or load <= 0 else \
            min(max(budget / load, 1.0), p["up_speed_max"])
        for dev, g in growth.items():
            new[dev] = before[dev] + g * speed
        scaled = ""
        if budget is not None:
            flows = self._flows(rates, heavy, new, down)
            if expected_load(flows) * excess > budget:
                # Leading signal: more load is coming than the model can serve. Undo growth
                # first, then scale every threshold by one load-aware factor until it fits.
                for dev in growth:
                    new[dev] = before[dev]
                flows = self._flows(rates, heavy, new, down)
                s, fitted = scale_to_load(flows, budget / excess)
                if s < 1.0:
                    new.update(fitted)
                    scaled = f", scaled x{s:.3f} to fit {budget:.0f}/s"
        out: dict[str, float] = {}
        for dev, value in new.items():
            value = self._clamp(value)
            if value != before[dev]:
                d = self._devices[dev]
                d.threshold = value
                out[dev] = value
                if value < before[dev]:
                    # The misses so far were made with the old threshold: judge the new one
                    # on its own samples (no second cut for the same evidence).
                    d.evidence.reports.clear()
        self.predicted_load = self._load(rates, heavy)
        worst_txt = "-" if worst is None else f"{worst:.3f}"
        state = "congested" if congested else "waiting" if waiting else "adapting"
        return PolicyDecision(thresholds=out, note=(
            f"{state}: worst device SLO sat. {worst_txt}, set-point {setpoint:.3f}, "
            f"load {load:.0f}/s -> {self.predicted_load:.0f}/s, queue {server.queue_len}, "
            f"model {heavy}{scaled}"))

    def _multipliers(self, rates: Mapping[str, float], heavy: str
                     ) -> tuple[dict[str, float], dict[str, float]]:
        """Device-load-aware multipliers: a device's share of the forwarded load (measured,
        x n, so 1 is an average device), times its heterogeneity weight (gain relative to the
        extremes).
        Shedding favours heavy, low-gain senders; growth light, high-gain ones."""
        loads = {}
        for dev, d in self._devices.items():
            t = d.horizon.totals()
            loads[dev] = t.forwarded / t.window_s if t.window_s > 0 else \
                rates.get(dev, 0.0) * _forward(d, heavy)
        total, n = sum(loads.values()), len(self._devices)
        gains = {dev: marginal_gain(d.info.curve_for(heavy), d.threshold, d.info.light_accuracy)
                 for dev, d in self._devices.items()}
        g_min, g_max = min(gains.values()), max(gains.values())
        down, up = {}, {}
        for dev in self._devices:
            share = loads[dev] / total * n if total > 0 else 1.0
            down[dev] = self._bound(share) * g_min / gains[dev]
            up[dev] = self._bound(1 / share if share > 0 else self.p["multiplier_max"]) \
                * gains[dev] / g_max
        mean = sum(down.values()) / len(down)
        return {dev: w / mean for dev, w in down.items()}, up

    def _flows(self, rates: Mapping[str, float], heavy: str, thresholds: Mapping[str, float],
               weights: Mapping[str, float]) -> list[Flow]:
        return [Flow(dev, rates.get(dev, 0.0) * self._calibration, d.info.curve_for(heavy),
                     thresholds[dev], max(weights[dev], 1e-3))
                for dev, d in self._devices.items()]

    def _load(self, rates: Mapping[str, float], heavy: str) -> float:
        return self._calibration * sum(rates.get(dev, 0.0) * _forward(d, heavy)
                                       for dev, d in self._devices.items())

    def _budget(self, view: SystemView) -> float | None:
        option = view.heavy_options.get(view.heavy_model)
        if option is None or not math.isfinite(option.capacity_sps):
            return None
        return float(option.capacity_sps * self.p["utilization"])

    def _bound(self, multiplier: float) -> float:
        return min(max(multiplier, float(self.p["multiplier_min"])),
                   float(self.p["multiplier_max"]))

    # --- heavy model ------------------------------------------------------------------------

    def _choose_model(self, view: SystemView, rates: dict[str, float]
                      ) -> tuple[str, dict[str, float], str] | None:
        """Every `switch_every_s`: the model whose capacity buys the most accuracy now. At once
        when the running model cannot carry the current load and another can."""
        p, sw = self.p, self._switch
        current = view.heavy_model
        if not p["switching"] or len(view.heavy_options) < 2 or sum(rates.values()) <= 0:
            return None
        budget = self._budget(view)
        overloaded = budget is not None and self._load(rates, current) > budget
        if not overloaded and view.now - sw.last_check < p["switch_every_s"]:
            return None
        sw.last_check = view.now
        plans = {}
        for name, option in view.heavy_options.items():
            demands = [Demand(dev, rates[dev] * self._calibration, d.info.curve_for(name))
                       for dev, d in self._devices.items()]
            plans[name] = allocate(demands, option.capacity_sps * p["utilization"])
        self.estimates = {name: round(a.accuracy, 4) for name, a in plans.items()}
        best = max(plans, key=lambda n: plans[n].accuracy)
        gain = plans[best].accuracy - plans[current].accuracy if current in plans else 1.0
        capacity = {n: o.capacity_sps for n, o in view.heavy_options.items()}
        total = sum(rates.values()) * self._calibration
        note = (f"switch {current} -> {best}: estimated accuracy "
                f"{plans[current].accuracy if current in plans else 0:.3f} -> "
                f"{plans[best].accuracy:.3f} at {total:.0f} samples/s")
        if overloaded and best != current and \
                capacity.get(best, 0.0) > capacity.get(current, 0.0):
            # A surge: the running model is swamped. Move now; raise no threshold, so the new
            # capacity first drains the backlog (the controller grows them afterwards).
            thresholds = {dev: min(t, self._devices[dev].threshold)
                          for dev, t in plans[best].thresholds.items() if dev in self._devices}
            return self._switched(view.now, best, thresholds, "surge: " + note)
        sw.votes.append(best if best != current and gain > p["switch_margin"] else current)
        if len(sw.votes) < self._patience or any(v != best for v in sw.votes) or \
                best == current or view.now - sw.last_switch < p["cooldown_s"]:
            return None
        calm = view.server.queue_len <= view.server.max_batch_size and \
            (self.setpoint.satisfaction or 1.0) >= p["target"]
        if capacity.get(best, 0.0) < capacity.get(current, 0.0) and not calm:
            return None  # a slower model only when the server keeps up with the SLO now
        return self._switched(view.now, best, dict(plans[best].thresholds), note)

    def _switched(self, now: float, best: str, thresholds: dict[str, float], note: str
                  ) -> tuple[str, dict[str, float], str]:
        self._switch.last_switch = now
        self._switch.votes.clear()
        return best, thresholds, note

    # --- bookkeeping ------------------------------------------------------------------------

    def _rates(self) -> dict[str, float]:
        """Each device's sample rate over its horizon; a device that has not reported yet is
        assumed to send at the mean rate of those that have (a join is load before it is a
        report)."""
        rates: dict[str, float] = {}
        for dev, d in self._devices.items():
            t = d.horizon.totals()
            if t.window_s > 0:
                rates[dev] = t.generated / t.window_s
        mean = sum(rates.values()) / len(rates) if rates else 0.0
        return {dev: rates.get(dev, mean) for dev in self._devices}

    def _observe(self, view: SystemView) -> None:
        met = missed = forwarded = 0
        expected = 0.0
        for dev, state in view.devices.items():
            d = self._devices.get(dev)
            if d is None:
                continue
            d.threshold = state.threshold
            d.horizon.observe(state, view.now)
            d.evidence.observe(state, view.now)
            w = state.window
            if state.fresh and w is not None:
                met, missed = met + w.slo_met, missed + w.slo_missed
                forwarded += w.forwarded
                expected += w.generated * forward_rate_at(d.info.curve_for(view.heavy_model),
                                                          w.threshold)
        self.setpoint.update(view.now, met, missed)
        if expected >= 5.0:
            # Validation forward rates are a slight guess for the live stream: learn the ratio
            # from what the devices report they forwarded at the thresholds they had.
            ratio = clamp(forwarded / expected, 0.5, 2.0)
            self._calibration = clamp(0.8 * self._calibration + 0.2 * ratio, 0.7, 1.5)

    def _clamp(self, value: float) -> float:
        return clamp(value, self.p["min_threshold"], self.p["max_threshold"])


def _forward(d: _Device, heavy: str) -> float:
    return forward_rate_at(d.info.curve_for(heavy), d.threshold)
