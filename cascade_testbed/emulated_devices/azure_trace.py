"""Arrival times of one device that follows an Azure Functions trace function (its
`WorkloadTrace`, mapped by `common.azure_functions`). Pure: the device's arrival generator is
passed in, so the schedule is fixed by the seed like every other arrival process.

* 2019 counts: each period (one trace minute, compressed) gets its count (a fractional scaled
  count rounds up with the probability of its fraction), spread over the period as Poisson
  ("poisson": uniform times given the count) or with Gamma gaps of the asked coefficient of
  variation ("gamma": the count's n + 1 gaps are Gamma(1 / cv^2) normalised to the period, so
  the count holds exactly and the gaps' CV tends to `cv` as n grows).
* 2021 invocations: replayed at their (compressed) start times; `scale` < 1 keeps each one with
  that probability, > 1 adds copies at uniform offsets within the next trace second.
"""

from __future__ import annotations

import numpy as np

from cascade_testbed.common.config import WorkloadTrace


def within_period(n: int, length_s: float, within: str, cv: float,
                  rng: np.random.Generator) -> np.ndarray:
    """`n` sorted times in [0, length_s)."""
    if n <= 0:
        return np.empty(0)
    if within == "poisson":
        uniform: np.ndarray = np.sort(rng.uniform(0.0, length_s, size=n))
        return uniform
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0, size=n + 1)
    total = float(gaps.sum())
    if total <= 0:  # every gap underflowed (a huge cv): the count still holds
        fallback: np.ndarray = within_period(n, length_s, "poisson", 1.0, rng)
        return fallback
    times: np.ndarray = np.minimum(np.cumsum(gaps[:n]) * (length_s / total),
                                   np.nextafter(length_s, 0.0))
    return times


def stochastic_round(x: float, rng: np.random.Generator) -> int:
    """floor(x), plus one with probability frac(x): the mean is x. Draws one number always,
    so a period's draws do not depend on whether its count is whole."""
    base = int(np.floor(x))
    return base + int(rng.random() < x - base)


def azure_times(w: WorkloadTrace, offset_s: float, duration_s: float,
                rng: np.random.Generator) -> np.ndarray:
    """Scheduled times in [0, duration_s) of a device that started `offset_s` into the run."""
    end = offset_s + duration_s
    if w.counts:
        parts = []
        for i, count in enumerate(w.counts):
            start = i * w.period_s
            if start >= end:
                break
            n = stochastic_round(count, rng)
            parts.append(start + within_period(n, w.period_s, w.within, w.cv, rng))
        times = np.concatenate(parts) if parts else np.empty(0)
    else:
        times = _replay(np.asarray(w.times, dtype=np.float64), w.scale, w.period_s / 60.0, rng)
    times = times[(times >= offset_s) & (times < end)] - offset_s
    out: np.ndarray = np.sort(times)
    return out


def _replay(times: np.ndarray, scale: float, second_s: float,
            rng: np.random.Generator) -> np.ndarray:
    whole = int(np.floor(scale))
    copies = whole + (rng.random(times.size) < scale - whole)
    out = np.repeat(times, copies)
    jitter = rng.uniform(0.0, second_s, size=out.size)
    first = np.zeros(out.size, dtype=bool)
    starts = np.cumsum(copies) - copies
    first[starts[copies > 0]] = True
    jitter[first] = 0.0  # the invocation itself keeps its time; copies spread after it
    replayed: np.ndarray = out + jitter
    return replayed
