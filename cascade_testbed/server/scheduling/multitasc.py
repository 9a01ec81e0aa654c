"""MultiTASC: multi-tenancy-aware threshold scheduling for multi-device cascades.

Called by `server.control` every control interval. The rule, in short (docs/multitasc.md maps it
to the paper and says where it had to guess):

* Each device's SLO satisfaction is smoothed over the last `horizon_s` seconds of its reports.
* The server is *over* its SLO capacity when some tier's pooled satisfaction is below
  `target`, or its queue holds more than `queue_high` batches; it has *room* when every tier is
  at least `margin` above target, the queue holds at most `queue_low` batches and the heavy
  model is busy less than `busy_high` of the time.
* Over capacity, every device lowers its threshold; with room, raises it. Steps are shared out
  by heterogeneity: a device whose forwarded samples gain little accuracy from the heavy model
  (a strong light model) sheds first and grows last; a weak device is protected and grows
  first. A device below target itself never grows.
* Decreases are larger than increases (`down_step` > `up_step`): back off fast, probe slowly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cascade_testbed.server.scheduling.base import (
    CurvePoint,
    DeviceInfo,
    Policy,
    PolicyDecision,
    PolicyError,
    ReportHorizon,
    SystemView,
    check_params,
    clamp,
)


@dataclass(slots=True)
class _Track:
    info: DeviceInfo
    threshold: float
    gain: float
    horizon: ReportHorizon
    on_time: float = 1.0
    """Smoothed share of this device's forwarded samples answered within the SLO: what its
    link and compute leave of its latency budget (1 until its reports say otherwise)."""


def marginal_gain(curve: tuple[CurvePoint, ...], threshold: float, light_accuracy: float | None,
                  width: float = 0.1) -> float:
    """Accuracy gained per unit of forward rate around `threshold` (on the validation split):
    how much the heavy model adds for each extra sample this device sends."""
    if len(curve) >= 2:
        lo = max((p for p in curve if p.threshold <= threshold - width / 2),
                 key=lambda p: p.threshold, default=curve[0])
        hi = min((p for p in curve if p.threshold >= threshold + width / 2),
                 key=lambda p: p.threshold, default=curve[-1])
        dfwd = hi.forward_rate - lo.forward_rate
        if dfwd > 1e-3:
            return max((hi.accuracy - lo.accuracy) / dfwd, 1e-3)
    # No usable curve: the less accurate the light model, the more the heavy one adds.
    return max(1.0 - (light_accuracy if light_accuracy is not None else 0.5), 1e-3)


class MultiTASCPolicy(Policy):
    name: ClassVar[str] = "multitasc"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "target": 0.95,
        "margin": 0.02,
        "horizon_s": 2.0,
        "min_decided": 20,
        "down_step": 0.05,
        "up_step": 0.02,
        "queue_high": 1.0,
        "queue_ms_high": 0.1,
        "min_threshold": 0.0,
        "max_threshold": 1.0,
        "group_by": "tier",
        "start": "initial",
        "on_time_gain": 0.3,
        "on_time_relax": 0.02,
        "heterogeneity": True,
    }
    """`group_by` pools SLO satisfaction per "tier" (robust: many samples per window) or uses
    each "device" alone. `start` = "initial" begins from each device's initial threshold, "max"
    from `max_threshold`. Steps are threshold units per control interval; `queue_high` is in
    batches of `max_batch_size`, `queue_ms_high` a fraction of the SLO.

    A device's weight is its marginal accuracy gain (model card) times the smoothed share of
    its forwarded samples that came back within the SLO, learnt from its reports
    (`on_time_gain`: smoothing; `on_time_relax`: drift back towards 1 while it forwards too
    little to tell, so a device is tried again).

    `heterogeneity = false` is the same control law blind to heterogeneity (the ablation of
    claim `multitasc-heterogeneity`): every device gets the same weight and SLO satisfaction
    is pooled over the whole fleet; each device still starts at its own initial threshold."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.p = check_params(self.name, params or {}, self.DEFAULTS)
        if self.p["group_by"] not in ("tier", "device"):
            raise PolicyError(f"multitasc: group_by must be 'tier' or 'device' "
                              f"(got {self.p['group_by']!r})")
        self._devices: dict[str, _Track] = {}
        self.congested = False

    def join(self, device: DeviceInfo, now: float) -> float:
        start = self.p["max_threshold"] if self.p["start"] == "max" else device.initial_threshold
        start = self._clamp(start)
        self._devices[device.device_id] = _Track(
            device, start, marginal_gain(device.curve, start, device.light_accuracy),
            ReportHorizon(self.p["horizon_s"]))
        return start

    def leave(self, device_id: str, now: float) -> None:
        self._devices.pop(device_id, None)

    def step(self, view: SystemView) -> PolicyDecision:
        self._observe(view)
        if not self._devices:
            return PolicyDecision()
        sat = self._group_satisfaction()
        server = view.server
        target = self.p["target"]
        worst = min(sat.values(), default=None)
        queued = server.queue_len / max(server.max_batch_size, 1) > self.p["queue_high"]
        waiting = server.mean_queue_ms >= self.p["queue_ms_high"] * view.slo_ms
        # The server is the bottleneck when its queue builds up, or when requests wait long for
        # a batch while some group misses the SLO; otherwise a group below target is limited by
        # its own latency budget, and only that group should forward less.
        self.congested = queued or (waiting and worst is not None and worst < target)
        # A device's forwards are worth their accuracy gain (its model card) times the share
        # that comes back in time (its link and compute budget, from its reports).
        gains = {dev: max(t.gain * t.on_time, 0.05 * t.gain) if self.p["heterogeneity"]
                 else 1.0 for dev, t in self._devices.items()}
        g_min, g_max = min(gains.values()), max(gains.values())
        out: dict[str, float] = {}
        for dev, track in self._devices.items():
            group_sat = sat.get(self._group(track))
            delta = 0.0
            if group_sat is not None and group_sat < target:
                # This group's forwarded samples are too slow for its SLO: send fewer.
                delta -= self.p["down_step"] * _severity(target - group_sat)
            if self.congested:
                # Shared overload: everyone sheds, the devices that gain least shed most.
                severity = 1.0 if queued or worst is None else _severity(target - worst)
                delta -= self.p["down_step"] * severity * g_min / gains[dev]
            elif delta == 0.0 and not waiting and (
                    group_sat is None or group_sat >= target + self.p["margin"]):
                # Room on the server: grow; the devices that gain most grow fastest.
                delta = self.p["up_step"] * gains[dev] / g_max
            new = self._clamp(track.threshold + delta)
            if new != track.threshold:
                track.threshold = new
                track.gain = marginal_gain(track.info.curve, new, track.info.light_accuracy)
                out[dev] = new
        worst_txt = "-" if worst is None else f"{worst:.3f}"
        state = "congested" if self.congested else "waiting" if waiting else "room"
        return PolicyDecision(thresholds=out, note=f"{state}: worst group SLO sat. {worst_txt}, "
                              f"busy {server.busy_fraction:.2f}, queue {server.queue_len}")

    def _group(self, track: _Track) -> str:
        if not self.p["heterogeneity"]:
            return "fleet"
        return track.info.tier if self.p["group_by"] == "tier" else track.info.device_id

    def _group_satisfaction(self) -> dict[str, float]:
        pooled: dict[str, list[int]] = {}
        for track in self._devices.values():
            totals = track.horizon.totals()
            acc = pooled.setdefault(self._group(track), [0, 0])
            acc[0] += totals.slo_met
            acc[1] += totals.slo_missed
        return {g: m / (m + x) for g, (m, x) in pooled.items() if m + x >= self.p["min_decided"]}

    def _observe(self, view: SystemView) -> None:
        for dev, state in view.devices.items():
            track = self._devices.get(dev)
            if track is None:
                continue
            track.threshold = state.threshold
            track.horizon.observe(state, view.now)
            w = state.window
            if state.fresh and w is not None and w.forwarded >= 3:
                seen = min(max(1.0 - w.slo_missed / w.forwarded, 0.0), 1.0)
                track.on_time += self.p["on_time_gain"] * (seen - track.on_time)
            elif state.fresh:
                track.on_time += self.p["on_time_relax"] * (1.0 - track.on_time)

    def _clamp(self, value: float) -> float:
        return clamp(value, self.p["min_threshold"], self.p["max_threshold"])


def _severity(shortfall: float) -> float:
    """A full step when satisfaction is 25 points under target, a fifth of one just under it,
    so the controller does not overshoot near the target."""
    return min(max(shortfall / 0.25, 0.2), 1.0)
