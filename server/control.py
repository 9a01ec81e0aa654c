"""The scheduler's I/O shell: device sessions, their reports, and the periodic policy step.

It turns connections and reports into the plain `SystemView` a policy sees, calls the policy
every control interval, and sends `threshold` messages to the devices whose value changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common import protocol as wire
from common.events import EventLog
from server.scheduling.base import (
    DeviceInfo,
    DeviceState,
    DeviceWindow,
    HeavyOption,
    Policy,
    PolicyDecision,
    ServerWindow,
    SystemView,
)
from server.stats import ServerStats

log = logging.getLogger(__name__)

THRESHOLD_EPSILON = 1e-4
"""Smaller moves are not worth a message."""


class DuplicateDevice(Exception):
    """A device id that is already connected."""


@dataclass(slots=True)
class DeviceSession:
    info: DeviceInfo
    send: Callable[[bytes], None]
    threshold: float
    epoch: int = 0
    report: wire.Report | None = None
    report_at: float = 0.0
    reports: int = 0
    fresh: bool = False


class Controller:
    def __init__(self, policy: Policy, stats: ServerStats, events: EventLog, *, slo_ms: float,
                 interval_s: float, server_window: Callable[[float], ServerWindow]) -> None:
        self.policy = policy
        self.stats = stats
        self.events = events
        self.slo_ms = slo_ms
        self.interval_s = interval_s
        self._server_window = server_window
        self.sessions: dict[str, DeviceSession] = {}
        self.last_server_window = ServerWindow()
        self.steps = 0
        self._current_model: Callable[[], str] = lambda: ""
        self._heavy_options: Callable[[], dict[str, HeavyOption]] = dict
        self._switch: Callable[[str, str], bool] = lambda name, reason: False
        self._set_batch: Callable[[int], None] = lambda size: None
        self.step_us: deque[float] = deque(maxlen=100_000)
        """How long each policy decision took (µs): a gear lookup must cost next to nothing."""

    def attach_models(self, current: Callable[[], str],
                      options: Callable[[], dict[str, HeavyOption]],
                      switch: Callable[[str, str], bool],
                      set_batch: Callable[[int], None] | None = None) -> None:
        """Let policies see the heavy models, switch between them and cap batches."""
        self._current_model, self._heavy_options, self._switch = current, options, switch
        if set_batch is not None:
            self._set_batch = set_batch

    def join(self, info: DeviceInfo, send: Callable[[bytes], None], now: float) -> wire.Welcome:
        if info.device_id in self.sessions:
            raise DuplicateDevice(info.device_id)
        threshold = _clamp(self.policy.join(info, now))
        self.sessions[info.device_id] = DeviceSession(info, send, threshold)
        self.stats.devices.set(len(self.sessions))
        self.stats.threshold.labels(info.device_id).set(threshold)
        self.events.emit("join", device=info.device_id, tier=info.tier, model=info.model,
                         threshold=round(threshold, 4))
        return wire.Welcome(threshold=threshold, epoch=0,
                            config={"slo_ms": self.slo_ms, "policy": self.policy.name})

    def leave(self, device_id: str, now: float) -> None:
        if self.sessions.pop(device_id, None) is not None:
            self.policy.leave(device_id, now)
            self.stats.devices.set(len(self.sessions))
            self.events.emit("leave", device=device_id)

    def on_report(self, device_id: str, report: wire.Report, now: float) -> None:
        session = self.sessions.get(device_id)
        if session is not None:
            session.report = report
            session.report_at = now
            session.reports += 1
            session.fresh = True

    def step(self, now: float) -> PolicyDecision:
        """One scheduling round: view -> policy -> threshold messages."""
        server = self._server_window(now)
        self.last_server_window = server
        view = SystemView(now=now, slo_ms=self.slo_ms, server=server, devices={
            dev: DeviceState(s.info, s.threshold, _window(s.report, now - s.report_at), s.fresh)
            for dev, s in self.sessions.items()
        }, heavy_model=self._current_model(), heavy_options=self._heavy_options())
        for s in self.sessions.values():
            s.fresh = False
        t = time.perf_counter()
        decision = self.policy.step(view)
        self.step_us.append((time.perf_counter() - t) * 1e6)
        self.steps += 1
        if decision.heavy_model:
            self._switch(decision.heavy_model, decision.note)
        if decision.max_batch_size is not None:
            self._set_batch(decision.max_batch_size)
        if decision.gear is not None:
            self.events.emit("gear_switch", **decision.gear)
        changed = {}
        for dev, value in decision.thresholds.items():
            session = self.sessions.get(dev)
            value = _clamp(value)
            if session is None or abs(value - session.threshold) < THRESHOLD_EPSILON:
                continue
            session.threshold = value
            session.epoch += 1
            session.send(wire.encode(wire.Threshold(value=value, epoch=session.epoch)))
            self.stats.threshold.labels(dev).set(value)
            self.stats.threshold_updates.inc()
            changed[dev] = round(value, 4)
        if changed:
            self.events.emit("thresholds", values=changed, note=decision.note,
                             server={"arrival_rate": round(server.arrival_rate, 2),
                                     "queue_len": server.queue_len,
                                     "queue_ms": round(server.mean_queue_ms, 2),
                                     "batch": round(server.mean_batch_size, 2),
                                     "busy": round(server.busy_fraction, 3)})
        return decision

    async def run(self, clock: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.step(clock())
            except Exception:  # a policy bug must not stop serving; it is logged loudly
                log.exception("policy %s failed", self.policy.name)

    def status(self) -> dict[str, Any]:
        return {
            "devices": {dev: {"tier": s.info.tier, "model": s.info.model,
                              "threshold": round(s.threshold, 4), "epoch": s.epoch,
                              "reports": s.reports}
                        for dev, s in sorted(self.sessions.items())},
            "policy": self.policy.name,
            "steps": self.steps,
            "policy_step_us": _quantiles(self.step_us),
        }


def _quantiles(values: deque[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.fromiter(values, dtype=np.float64, count=len(values))
    p50, p99 = np.percentile(arr, [50, 99], method="inverted_cdf")
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1),
            "max": round(float(arr.max()), 1), "count": len(arr)}


def _clamp(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def _window(report: wire.Report | None, age_s: float) -> DeviceWindow | None:
    if report is None:
        return None
    return DeviceWindow(
        window_s=report.window_s, generated=report.generated, forwarded=report.forwarded,
        answered=report.answered, slo_met=report.slo_met, slo_missed=report.slo_missed,
        fallback=report.fallback, threshold=report.threshold,
        mean_light_confidence=report.mean_light_confidence,
        light_ms_mean=report.light_ms_mean, age_s=age_s)
