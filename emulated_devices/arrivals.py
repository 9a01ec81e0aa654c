"""Open-loop arrival schedules, computed before the run from a seeded generator.

Times are seconds from the device's start. The device sleeps until each one, never waiting for a
previous reply, and latency is measured from these scheduled times (no coordinated omission).
"""

from __future__ import annotations

import numpy as np

from testbed.config import ArrivalKind


def arrival_times(kind: ArrivalKind, rate_hz: float, duration_s: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Scheduled times in [0, duration_s) of a constant-rate or Poisson process.

    The constant process starts at a random phase so that many devices at the same rate do not
    fire in lockstep, which no real fleet does.
    """
    if rate_hz <= 0 or duration_s <= 0:
        return np.empty(0)
    if kind == "constant":
        gap = 1.0 / rate_hz
        times = rng.uniform(0.0, gap) + gap * np.arange(int(np.ceil(duration_s * rate_hz)) + 1)
    elif kind == "poisson":
        # Draw a few extra gaps so the cumulative sum passes the horizon almost surely,
        # then extend in the rare case it does not.
        n = int(rate_hz * duration_s + 6 * np.sqrt(rate_hz * duration_s) + 10)
        times = np.cumsum(rng.exponential(1.0 / rate_hz, size=n))
        while times[-1] < duration_s:
            more = times[-1] + np.cumsum(rng.exponential(1.0 / rate_hz, size=n))
            times = np.concatenate([times, more])
    else:
        raise ValueError(f"unknown arrival process {kind!r}")
    out: np.ndarray = times[times < duration_s]
    return out
