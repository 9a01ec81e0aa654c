"""Is a device's report physically possible? A report feeds the scheduler, so one device that
sends impossible numbers (negative, a million misses in half a second, more samples answered
than it ever generated) could drag its whole tier's thresholds; such a report is refused and
counted instead. Pure: the session's running totals are passed in.

Within these bounds a device is trusted: one that lies plausibly is out of scope
(docs/security.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from cascade_testbed.common.config import MAX_MS, MAX_RATE_HZ

MAX_WINDOW_S: Final = 120.0
"""A report covers at most this long (the scenario's `report_interval_s` is at most 60 s)."""
IN_FLIGHT_SLACK: Final = 1_000
"""Samples a device may have had in flight when its session began (a reconnect after a server
restart): answered in this session, generated in the last."""


@dataclass(slots=True)
class ReportTotals:
    """What a device has reported over its session so far."""

    generated: int = 0
    forwarded: int = 0
    answered: int = 0
    decided: int = 0
    """slo_met + slo_missed"""
    slo_met: int = 0


def check_report(report: object, totals: ReportTotals) -> str | None:
    """Why `report` (a `wire.Report`) is impossible, or None; when None, `totals` now include
    it. A refused report leaves `totals` as they were."""
    r = report
    window_s: float = r.window_s  # type: ignore[attr-defined]
    counts = {name: getattr(r, name) for name in
              ("generated", "forwarded", "answered", "slo_met", "slo_missed", "fallback")}
    if not (0 < window_s <= MAX_WINDOW_S):
        return f"window_s must be in (0, {MAX_WINDOW_S:g}]"
    most = math.ceil(window_s * MAX_RATE_HZ) + IN_FLIGHT_SLACK
    for name, value in counts.items():
        if not 0 <= value <= most:
            return f"{name} must be in [0, {most}] for a {window_s:g} s window"
    if counts["slo_met"] > counts["answered"] or counts["fallback"] > counts["answered"]:
        return "slo_met and fallback cannot exceed answered"
    for name, low, high in (("threshold", 0.0, 1.0), ("mean_light_confidence", 0.0, 1.0),
                            ("light_ms_mean", 0.0, MAX_MS), ("latency_p50_ms", 0.0, MAX_MS),
                            ("latency_p95_ms", 0.0, MAX_MS)):
        value = getattr(r, name)
        if not (math.isfinite(value) and low <= value <= high):
            return f"{name} must be in [{low:g}, {high:g}]"
    generated = totals.generated + counts["generated"]
    forwarded = totals.forwarded + counts["forwarded"]
    answered = totals.answered + counts["answered"]
    decided = totals.decided + counts["slo_met"] + counts["slo_missed"]
    if max(forwarded, answered, decided) > generated + IN_FLIGHT_SLACK:
        return ("more samples forwarded, answered or decided than the device has generated "
                "in this session")
    totals.generated, totals.forwarded = generated, forwarded
    totals.answered, totals.decided = answered, decided
    totals.slo_met += counts["slo_met"]
    return None
