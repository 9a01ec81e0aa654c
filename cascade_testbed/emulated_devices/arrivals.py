"""Open-loop arrival schedules, computed before the run from a seeded generator.

Times are seconds from the device's start. The device sleeps until each one, never waiting for a
previous reply, and latency is measured from these scheduled times (no coordinated omission).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cascade_testbed.common.azure_functions import peak_rate as workload_peak
from cascade_testbed.common.config import ArrivalKind, WorkloadTrace
from cascade_testbed.emulated_devices.azure_trace import azure_times


def arrival_times(kind: ArrivalKind, rate_hz: float, duration_s: float,
                  rng: np.random.Generator, *, offset_s: float = 0.0, burst_on_s: float = 1.0,
                  burst_off_s: float = 3.0, trace: Sequence[tuple[float, float]] = (),
                  workload: WorkloadTrace | None = None) -> np.ndarray:
    """Scheduled times in [0, duration_s) of one device's arrivals.

    * constant: every 1/rate, from a random phase (a real fleet never fires in lockstep);
    * poisson: exponential gaps of mean 1/rate;
    * onoff: bursts and silences of exponential lengths (means `burst_on_s`, `burst_off_s`),
      Poisson within a burst at the rate that keeps the long-run mean at `rate_hz`;
    * trace: Poisson at the piecewise-constant rate of `trace` [(run time, rate), ...]; the
      device started `offset_s` into the run, so it follows the trace from there;
    * azure: the Azure Functions trace function `workload` (`emulated_devices.azure_trace`).
    """
    if duration_s <= 0:
        return np.empty(0)
    if kind == "azure":
        if workload is None:
            raise ValueError("arrival 'azure' needs the device's workload")
        return azure_times(workload, offset_s, duration_s, rng)
    if kind == "trace":
        return _piecewise_poisson(trace, offset_s, duration_s, rng)
    if rate_hz <= 0:
        return np.empty(0)
    if kind == "constant":
        gap = 1.0 / rate_hz
        times = rng.uniform(0.0, gap) + gap * np.arange(int(np.ceil(duration_s * rate_hz)) + 1)
    elif kind == "poisson":
        times = poisson_times(rate_hz, duration_s, rng)
    elif kind == "onoff":
        times = _on_off(rate_hz, duration_s, burst_on_s, burst_off_s, rng)
    else:
        raise ValueError(f"unknown arrival process {kind!r}")
    out: np.ndarray = times[times < duration_s]
    return out


def peak_rate(kind: ArrivalKind, rate_hz: float, *, burst_on_s: float = 1.0,
              burst_off_s: float = 3.0, trace: Sequence[tuple[float, float]] = (),
              workload: WorkloadTrace | None = None) -> float:
    """The highest rate `arrival_times` draws at, which a device declares to the server (its
    request budget is this with headroom): a burst's rate, a trace's highest point."""
    if kind == "onoff":
        return rate_hz * (burst_on_s + burst_off_s) / burst_on_s if burst_off_s > 0 else rate_hz
    if kind == "trace":
        return max((r for _, r in trace), default=rate_hz)
    if kind == "azure" and workload is not None:
        return workload_peak(workload)
    return rate_hz


def poisson_times(rate_hz: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """A homogeneous Poisson process on [0, duration_s)."""
    # Draw a few extra gaps so the cumulative sum passes the horizon almost surely, then
    # extend in the rare case it does not.
    n = int(rate_hz * duration_s + 6 * np.sqrt(rate_hz * duration_s) + 10)
    times = np.cumsum(rng.exponential(1.0 / rate_hz, size=n))
    while times[-1] < duration_s:
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate_hz, size=n))
        times = np.concatenate([times, more])
    out: np.ndarray = times[times < duration_s]
    return out


def _on_off(rate_hz: float, duration_s: float, on_s: float, off_s: float,
            rng: np.random.Generator) -> np.ndarray:
    if off_s <= 0:
        return poisson_times(rate_hz, duration_s, rng)
    burst_rate = rate_hz * (on_s + off_s) / on_s
    on = bool(rng.random() < on_s / (on_s + off_s))  # the stationary state at time 0
    t = 0.0
    parts = []
    while t < duration_s:
        length = float(rng.exponential(on_s if on else off_s))
        if on:
            parts.append(t + poisson_times(burst_rate, min(length, duration_s - t), rng))
        t += length
        on = not on
    return np.concatenate(parts) if parts else np.empty(0)


def _piecewise_poisson(trace: Sequence[tuple[float, float]], offset_s: float,
                       duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals whose rate follows `trace`, for run times [offset, offset + duration),
    returned relative to the offset."""
    if not trace:
        raise ValueError("arrival 'trace' needs trace points")
    starts = [t for t, _ in trace]
    end = offset_s + duration_s
    parts = []
    for i, (t, rate) in enumerate(trace):
        seg_start = max(t, offset_s)
        seg_end = min(starts[i + 1] if i + 1 < len(trace) else end, end)
        if seg_end <= seg_start or rate <= 0:
            continue
        n = rng.poisson(rate * (seg_end - seg_start))
        parts.append(np.sort(rng.uniform(seg_start, seg_end, size=n)) - offset_s)
    return np.concatenate(parts) if parts else np.empty(0)
