"""How much accuracy a heavy model of a given capacity can buy for a set of devices. Pure.

Each device has a cascade curve (threshold -> forward rate, accuracy) and a sample rate.
Raising a device's threshold forwards more of its samples (load on the server) and usually
gains accuracy. `allocate` spends a capacity budget greedily on the steepest gains, on each
curve's upper concave hull, which is the optimum of the fractional problem (a knapsack with
concave pieces). Policies use it to compare heavy models and to seed thresholds.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from cascade_testbed.server.scheduling.base import CurvePoint


@dataclass(frozen=True, slots=True)
class Demand:
    device_id: str
    rate_hz: float
    curve: tuple[CurvePoint, ...]


@dataclass(frozen=True, slots=True)
class Allocation:
    thresholds: dict[str, float]
    accuracy: float
    """Expected accuracy over all samples (rate-weighted) with these thresholds."""
    load_sps: float
    """Expected forwarded samples per second."""


def upper_hull(curve: Sequence[CurvePoint]) -> list[CurvePoint]:
    """The points of `curve` on the upper concave hull of accuracy over forward rate, from
    the lowest forward rate up; for one forward rate, the most accurate (lowest) threshold."""
    best: dict[float, CurvePoint] = {}
    for p in sorted(curve, key=lambda p: p.threshold):
        q = best.get(p.forward_rate)
        if q is None or p.accuracy > q.accuracy:
            best[p.forward_rate] = p
    hull: list[CurvePoint] = []
    for p in sorted(best.values(), key=lambda p: p.forward_rate):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) > 0:
            hull.pop()
        hull.append(p)
    # Only the rising part is worth load: drop points after the most accurate one.
    top = max(range(len(hull)), key=lambda i: (hull[i].accuracy, -i)) if hull else -1
    return hull[:top + 1]


def _cross(a: CurvePoint, b: CurvePoint, c: CurvePoint) -> float:
    """> 0 if b lies below the segment a-c (so b is not on the upper hull); collinear
    points stay, so the budget can stop between them."""
    return ((b.forward_rate - a.forward_rate) * (c.accuracy - a.accuracy)
            - (b.accuracy - a.accuracy) * (c.forward_rate - a.forward_rate))


def allocate(demands: Sequence[Demand], capacity_sps: float) -> Allocation:
    """Thresholds that maximise expected accuracy with forwarded load <= `capacity_sps`."""
    hulls = {d.device_id: upper_hull(d.curve) for d in demands if d.curve}
    rates = {d.device_id: d.rate_hz for d in demands}
    level = dict.fromkeys(hulls, 0)
    load = sum(rates[dev] * h[0].forward_rate for dev, h in hulls.items())
    heap: list[tuple[float, str]] = []

    def push(dev: str) -> None:
        h, k = hulls[dev], level[dev]
        if k + 1 < len(h):
            d_load = rates[dev] * (h[k + 1].forward_rate - h[k].forward_rate)
            d_acc = rates[dev] * (h[k + 1].accuracy - h[k].accuracy)
            slope = d_acc / d_load if d_load > 0 else float("inf")
            heapq.heappush(heap, (-slope, dev))

    for dev in hulls:
        push(dev)
    while heap:
        _, dev = heapq.heappop(heap)
        h, k = hulls[dev], level[dev]
        extra = rates[dev] * (h[k + 1].forward_rate - h[k].forward_rate)
        if load + extra > capacity_sps + 1e-9:
            continue  # this device's next step does not fit; steeper ones were taken first
        load += extra
        level[dev] = k + 1
        push(dev)
    total_rate = sum(rates[dev] for dev in hulls)
    acc = sum(rates[dev] * hulls[dev][level[dev]].accuracy for dev in hulls)
    return Allocation(
        thresholds={dev: hulls[dev][level[dev]].threshold for dev in hulls},
        accuracy=acc / total_rate if total_rate > 0 else 0.0, load_sps=load)


def forward_rate_at(curve: Sequence[CurvePoint], threshold: float) -> float:
    """The share of a device's samples a threshold forwards, interpolated on its validation
    curve (points in increasing threshold, as the cards list them): what the server will
    receive from the device before any report says so."""
    if not curve:
        return 0.0
    k = bisect.bisect_left(curve, threshold, key=lambda p: p.threshold)
    if k == 0:
        return curve[0].forward_rate
    if k == len(curve):
        return curve[-1].forward_rate
    lo, hi = curve[k - 1], curve[k]
    span = hi.threshold - lo.threshold
    frac = (threshold - lo.threshold) / span if span > 0 else 1.0
    return lo.forward_rate + frac * (hi.forward_rate - lo.forward_rate)


@dataclass(frozen=True, slots=True)
class Flow:
    """One device as a source of server load: its sample rate, curve, threshold, and how
    strongly a shared scaling acts on it (`weight`, 1 = average)."""

    device_id: str
    rate_hz: float
    curve: tuple[CurvePoint, ...]
    threshold: float
    weight: float = 1.0


def expected_load(flows: Sequence[Flow], scale: float = 1.0) -> float:
    """Forwarded samples per second when every threshold is multiplied by `scale ** weight`."""
    return sum(f.rate_hz * forward_rate_at(f.curve, f.threshold * scale ** f.weight)
               for f in flows)


def scale_to_load(flows: Sequence[Flow], budget_sps: float, iterations: int = 30
                  ) -> tuple[float, dict[str, float]]:
    """The largest common factor s in [0, 1] such that scaling each threshold by `s ** weight`
    keeps the expected load within `budget_sps`, and the thresholds it gives. Devices with a
    larger weight (heavier senders, smaller accuracy gain) are scaled down more. Bisection:
    the load only grows with s."""
    if expected_load(flows) <= budget_sps:
        return 1.0, {f.device_id: f.threshold for f in flows}
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if expected_load(flows, mid) <= budget_sps:
            lo = mid
        else:
            hi = mid
    return lo, {f.device_id: f.threshold * lo ** f.weight for f in flows}
