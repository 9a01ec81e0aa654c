"""The summary's `arrivals` for trace-driven runs: the rate the devices achieved in each trace
period (one trace minute, compressed, of an Azure Functions trace; a step of a CSV trace of
rates) against the rate the trace asked for, and the error. Pure.

The trace's rate of a period is what the devices' traces ask (`common.azure_functions.
expected_per_period`, or the CSV's rate x time) over the part of the period each device was
connected and arrivals ran;
the achieved rate counts the records whose scheduled time falls in it. The error is the mean
over periods of |achieved - trace| / trace (periods where the trace asks for nothing are left
out). Within-minute randomness (a count's rounding, arrivals past the run's end) and samples
without a record (aborted by a crash) make it non-zero; a large error means devices did not
keep up with their schedule or were not connected.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

from cascade_testbed.common.azure_functions import expected_per_period
from cascade_testbed.common.config import DeviceSpec
from cascade_testbed.common.records import SampleRecord

Interval = tuple[float, float]


def _overlap(a: float, b: float, spans: Sequence[Interval]) -> float:
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)


MAX_PERIODS = 1000
"""A CSV trace with more steps than this in the run is compared in this many equal periods."""


def _edges(specs: Sequence[DeviceSpec], arrivals_s: float) -> tuple[list[float], float | None]:
    """Period boundaries over [0, arrivals_s] and the period's length when they are even: an
    Azure trace's (compressed) minutes, else a CSV trace's steps."""
    azure = next((s.workload for s in specs if s.workload is not None), None)
    if azure is not None:
        n = max(1, math.ceil(arrivals_s / azure.period_s - 1e-9))
        return [min(i * azure.period_s, arrivals_s) for i in range(n + 1)], azure.period_s
    steps = sorted({t for s in specs for t, _ in s.trace_points if 0 < t < arrivals_s})
    if len(steps) + 1 > MAX_PERIODS:
        width = arrivals_s / MAX_PERIODS
        return [i * width for i in range(MAX_PERIODS)] + [arrivals_s], width
    return [0.0, *steps, arrivals_s], None


def asked(spec: DeviceSpec, a: float, b: float, spans: Sequence[Interval]) -> float:
    """Arrivals the trace asks of one device in run times [a, b) while it is connected."""
    w = spec.workload
    if w is not None:
        first, last = int(a // w.period_s), math.ceil(b / w.period_s)
        per = expected_per_period(w, last)
        return sum(per[i] * _overlap(max(a, i * w.period_s), min(b, (i + 1) * w.period_s),
                                     spans) / w.period_s for i in range(first, last))
    points = spec.trace_points
    total = 0.0
    for k, (t, rate) in enumerate(points):
        end = points[k + 1][0] if k + 1 < len(points) else math.inf
        lo, hi = max(a, t), min(b, end)
        if hi > lo:
            total += rate * _overlap(lo, hi, spans)
    return total


def trace_rates(specs: Sequence[DeviceSpec], spans: Sequence[Sequence[Interval]],
                records: Iterable[SampleRecord], run_start: float | None,
                arrivals_s: float) -> dict[str, Any] | None:
    """None unless devices follow a trace (Azure Functions, or a CSV of rates)."""
    traced = [(s, sp) for s, sp in zip(specs, spans, strict=True)
              if s.workload is not None or (s.arrival == "trace" and s.trace_points)]
    if not traced or arrivals_s <= 0:
        return None
    edges, period = _edges([s for s, _ in traced], arrivals_s)
    n = len(edges) - 1
    trace = [sum(asked(spec, edges[i], edges[i + 1], dev_spans) for spec, dev_spans in traced)
             for i in range(n)]
    ids = {s.device_id for s, _ in traced}
    achieved = [0] * n
    for r in records:
        if r.device_id not in ids:
            continue
        t = r.wall_epoch_s - run_start if run_start is not None and math.isfinite(
            r.wall_epoch_s) else r.t_sched_s
        if 0 <= t < arrivals_s:
            achieved[max(bisect.bisect_right(edges, t) - 1, 0)] += 1
    lengths = [edges[i + 1] - edges[i] for i in range(n)]
    errors = [abs(got - want) / want for got, want in zip(achieved, trace, strict=True)
              if want > 0]
    first = traced[0][0].workload
    source = "a CSV of rates" if first is None else "azure functions " + (
        "2019 per-minute counts" if first.counts else "2021 invocations")
    return {
        "source": source,
        "period_s": period,
        "periods": n,
        "starts_s": [round(e, 3) for e in edges[:-1]],
        "trace_sps": [round(x / span, 3) if span > 0 else None
                      for x, span in zip(trace, lengths, strict=True)],
        "achieved_sps": [round(x / span, 3) if span > 0 else None
                         for x, span in zip(achieved, lengths, strict=True)],
        "trace_samples": round(sum(trace), 1),
        "achieved_samples": sum(achieved),
        "mean_abs_rel_error": round(sum(errors) / len(errors), 4) if errors else None,
        "note": "achieved = answered samples (records) by scheduled time per trace period; "
                "trace = what the devices' traces ask over the time they were connected",
    }
