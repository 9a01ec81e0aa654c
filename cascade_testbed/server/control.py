"""The scheduler's I/O shell: device sessions, their reports, and the periodic policy step.

It turns connections and reports into the plain `SystemView` a policy sees, calls the policy
every control interval, and sends `threshold` messages to the devices whose value changed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.events import EventLog
from cascade_testbed.server.report_check import ReportTotals, check_report
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    DeviceState,
    DeviceWindow,
    HeavyOption,
    Policy,
    PolicyDecision,
    ServerWindow,
    SystemView,
)
from cascade_testbed.server.stats import ServerStats

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
    totals: ReportTotals = field(default_factory=ReportTotals)
    refused_reports: int = 0


class Controller:
    """Owns the device sessions and the threshold messages; what else a decision asks for
    (a model switch, a batch cap) is the runtime's to apply (`Runtime.apply`)."""

    def __init__(self, policy: Policy, stats: ServerStats, events: EventLog, *, slo_ms: float,
                 interval_s: float) -> None:
        self.policy = policy
        self.stats = stats
        self.events = events
        self.slo_ms = slo_ms
        self.interval_s = interval_s
        self.sessions: dict[str, DeviceSession] = {}
        self.last_server_window = ServerWindow()
        self.steps = 0
        self.step_us: deque[float] = deque(maxlen=100_000)
        """How long each policy decision took (µs): a gear lookup must cost next to nothing."""

    def join(self, info: DeviceInfo, send: Callable[[bytes], None], now: float) -> wire.Welcome:
        if info.device_id in self.sessions:
            raise DuplicateDevice(info.device_id)
        try:
            threshold = clamp_threshold(self.policy.join(info, now))
        except ValueError as exc:  # a policy bug: the device keeps the value it came with
            log.error("policy %s, join of %s: %s; keeping its own %.4g", self.policy.name,
                      info.device_id, exc, info.initial_threshold)
            threshold = clamp_threshold(info.initial_threshold)
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
            self.stats.on_device_left(device_id)
            self.events.emit("leave", device=device_id)

    def on_report(self, device_id: str, report: wire.Report, now: float) -> str | None:
        """Keep a device's report for the next step; a physically impossible one is refused
        (the reason is returned, and the policy never sees it)."""
        session = self.sessions.get(device_id)
        if session is None:
            return None
        problem = check_report(report, session.totals)
        if problem is not None:
            session.refused_reports += 1
            return problem
        session.report = report
        session.report_at = now
        session.reports += 1
        session.fresh = True
        return None

    def step(self, now: float, server: ServerWindow, heavy_model: str = "",
             heavy_options: Mapping[str, HeavyOption] | None = None) -> PolicyDecision:
        """One scheduling round: view -> policy -> threshold messages to the devices whose
        threshold changed. Returns the decision for the runtime to apply the rest of."""
        self.last_server_window = server
        view = SystemView(now=now, slo_ms=self.slo_ms, server=server, devices={
            dev: DeviceState(s.info, s.threshold, _window(s.report, now - s.report_at), s.fresh)
            for dev, s in self.sessions.items()
        }, heavy_model=heavy_model, heavy_options=heavy_options or {})
        for s in self.sessions.values():
            s.fresh = False
        t = time.perf_counter()
        decision = self.policy.step(view)
        self.step_us.append((time.perf_counter() - t) * 1e6)
        self.steps += 1
        if decision.gear is not None:
            self.events.emit("gear_switch", **decision.gear)
        changed = {}
        for dev, value in decision.thresholds.items():
            session = self.sessions.get(dev)
            try:
                value = clamp_threshold(value)
            except ValueError as exc:  # a policy bug: this device keeps its threshold
                log.error("policy %s, step for %s: %s; it keeps %s", self.policy.name, dev,
                          exc, "its threshold" if session else "nothing (not connected)")
                continue
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

    def status(self) -> dict[str, Any]:
        return {
            "devices": {dev: {"tier": s.info.tier, "model": s.info.model,
                              "threshold": round(s.threshold, 4), "epoch": s.epoch,
                              "reports": s.reports, "refused_reports": s.refused_reports,
                              **_live(s)}
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


def _live(session: DeviceSession) -> dict[str, Any]:
    """What live views read of a device (`testbed watch`): its session's running counts, which
    a view differences over its own window (a report may fall between two polls), and the
    latency percentiles of its last report."""
    t, r = session.totals, session.report
    return {"totals": {"generated": t.generated, "forwarded": t.forwarded,
                       "answered": t.answered, "slo_met": t.slo_met,
                       "slo_missed": t.decided - t.slo_met},
            "latency_ms": None if r is None or not r.latency_p95_ms else
            {"p50": r.latency_p50_ms, "p95": r.latency_p95_ms}}


def clamp_threshold(value: float) -> float:
    """A policy's threshold (from `join` or `step`) within [0, 1], the range the wire accepts:
    the one place a threshold is clamped to it (devices refuse a value outside it rather than
    clamp again). A policy's own narrower bounds (`min_threshold`) are part of its law."""
    value = float(value)
    if math.isnan(value):
        raise ValueError("a policy gave a threshold that is not a number (nan)")
    return min(max(value, 0.0), 1.0)


def _window(report: wire.Report | None, age_s: float) -> DeviceWindow | None:
    return None if report is None else DeviceWindow.from_report(report, age_s)


async def every(interval_s: float, step: Callable[[], object], what: str) -> None:
    """Call `step` every `interval_s` until cancelled. An exception in it (a policy bug) is
    logged loudly and the loop goes on: a broken scheduler must not stop serving."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            step()
        except Exception:
            log.exception("%s failed", what)
