"""The summary's `arrivals` for trace-driven runs: the rate the devices achieved in each trace
period (one trace minute, compressed) against the rate the trace asked for, and the error.
Pure.

The trace's rate of a period is what the devices' workloads ask (`common.azure_functions.
expected_per_period`) over the part of the period each device was connected and arrivals ran;
the achieved rate counts the records whose scheduled time falls in it. The error is the mean
over periods of |achieved - trace| / trace (periods where the trace asks for nothing are left
out). Within-minute randomness (a count's rounding, arrivals past the run's end) and samples
without a record (aborted by a crash) make it non-zero; a large error means devices did not
keep up with their schedule or were not connected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from common.azure_functions import expected_per_period
from common.config import DeviceSpec
from common.records import SampleRecord

Interval = tuple[float, float]


def _overlap(a: float, b: float, spans: Sequence[Interval]) -> float:
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)


def trace_rates(specs: Sequence[DeviceSpec], spans: Sequence[Sequence[Interval]],
                records: Iterable[SampleRecord], run_start: float | None,
                arrivals_s: float) -> dict[str, Any] | None:
    """None unless devices follow an Azure Functions trace."""
    traced = [(s, sp) for s, sp in zip(specs, spans, strict=True) if s.workload is not None]
    if not traced or arrivals_s <= 0:
        return None
    period = traced[0][0].workload.period_s  # type: ignore[union-attr]
    n = max(1, math.ceil(arrivals_s / period - 1e-9))
    trace = [0.0] * n
    for spec, dev_spans in traced:
        asked = expected_per_period(spec.workload, n)  # type: ignore[arg-type]
        for i in range(n):
            a, b = i * period, min((i + 1) * period, arrivals_s)
            trace[i] += asked[i] * _overlap(a, b, dev_spans) / period
    ids = {s.device_id for s, _ in traced}
    achieved = [0] * n
    for r in records:
        if r.device_id not in ids:
            continue
        t = r.wall_epoch_s - run_start if run_start is not None and math.isfinite(
            r.wall_epoch_s) else r.t_sched_s
        i = int(t // period)
        if 0 <= i < n and t < arrivals_s:
            achieved[i] += 1
    lengths = [min((i + 1) * period, arrivals_s) - i * period for i in range(n)]
    errors = [abs(got - want) / want for got, want in zip(achieved, trace, strict=True)
              if want > 0]
    first = traced[0][0].workload
    layout = "2019 per-minute counts" if first is not None and first.counts else \
        "2021 invocations"
    return {
        "source": f"azure functions {layout}",
        "period_s": period,
        "periods": n,
        "trace_sps": [round(x / span, 3) for x, span in zip(trace, lengths, strict=True)],
        "achieved_sps": [round(x / span, 3) for x, span in zip(achieved, lengths,
                                                                  strict=True)],
        "trace_samples": round(sum(trace), 1),
        "achieved_samples": sum(achieved),
        "mean_abs_rel_error": round(sum(errors) / len(errors), 4) if errors else None,
        "note": "achieved = answered samples (records) by scheduled time per trace period; "
                "trace = the devices' workloads over the time they were connected",
    }
