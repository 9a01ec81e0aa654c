"""Windowed device statistics for `report` messages: plain counters, reset on each report."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.config import MAX_MS

LATENCY_ANSWERS = 100
"""Reports carry latency percentiles over this many last answers: a 0.5 s window holds too
few samples for a p95, and a live view wants a steady line."""


def quantile(values: list[float], q: float) -> float:
    """The `q` quantile (nearest rank, an observed value) of `values`; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n q), at least 1
    return ordered[int(rank) - 1]


@dataclass(slots=True)
class Window:
    generated: int = 0
    forwarded: int = 0
    answered: int = 0
    slo_met: int = 0
    slo_missed: int = 0
    fallback: int = 0
    conf_sum: float = 0.0
    light_ms_sum: float = 0.0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_ANSWERS))
    """The last answers' end-to-end latencies: kept across reports (see `LATENCY_ANSWERS`)."""

    def on_generated(self, confidence: float, light_ms: float) -> None:
        self.generated += 1
        self.conf_sum += confidence
        self.light_ms_sum += light_ms

    def on_forwarded(self) -> None:
        self.forwarded += 1

    def on_overdue(self) -> None:
        """A forwarded sample has passed its SLO unanswered: count the miss now, not when the
        timeout fires, so the scheduler hears about overload one timeout earlier."""
        self.slo_missed += 1

    def on_answered(self, source: str, slo_met: bool, already_missed: bool,
                    latency_ms: float | None = None) -> None:
        self.answered += 1
        if latency_ms is not None and latency_ms == latency_ms:  # not NaN
            self.latencies_ms.append(min(max(latency_ms, 0.0), MAX_MS))
        self.fallback += source in ("fallback", "rejected")
        if slo_met:
            self.slo_met += 1
        elif not already_missed:
            self.slo_missed += 1

    def take(self, window_s: float, threshold: float, epoch: int) -> wire.Report:
        """The report of this window; the counters start again from zero."""
        n = self.generated
        recent = list(self.latencies_ms)
        report = wire.Report(
            window_s=window_s, generated=n, forwarded=self.forwarded, answered=self.answered,
            slo_met=self.slo_met, slo_missed=self.slo_missed, fallback=self.fallback,
            threshold=threshold, mean_light_confidence=self.conf_sum / n if n else 0.0,
            light_ms_mean=self.light_ms_sum / n if n else 0.0, epoch=epoch,
            latency_p50_ms=round(quantile(recent, 0.5), 3),
            latency_p95_ms=round(quantile(recent, 0.95), 3))
        self.generated = self.forwarded = self.answered = 0
        self.slo_met = self.slo_missed = self.fallback = 0
        self.conf_sum = self.light_ms_sum = 0.0
        return report
