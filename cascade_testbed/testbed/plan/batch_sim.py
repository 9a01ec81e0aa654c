"""A discrete-event model of the server's dynamic batcher under Poisson arrivals. Pure.

The planner asks it whether a gear's load, batch cap and batch-latency profile keep the
server's p95 (queueing + batch time) inside the latency budget, as CascadeServe's planner
simulates its per-stage queues before accepting a gear."""

from __future__ import annotations

import numpy as np

from cascade_testbed.common.batch_profiles import BatchProfile


def simulate_batcher(rate_sps: float, profile: BatchProfile, max_batch_size: int,
                     max_queue_delay_s: float, *, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Sojourn times (s) of `n` Poisson arrivals at `rate_sps` through a batcher with Triton
    semantics: when free, cut a full batch at once, else wait until the oldest request has
    waited `max_queue_delay_s`, then take what has arrived (up to `max_batch_size`)."""
    if rate_sps <= 0 or n <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_sps, n))
    out = np.empty(n)
    free_at, i = 0.0, 0
    while i < n:
        last = i + max_batch_size - 1
        full_at = arrivals[last] if last < n else np.inf
        cut = max(free_at, min(full_at, arrivals[i] + max_queue_delay_s))
        size = min(int(np.searchsorted(arrivals, cut, side="right")) - i, max_batch_size)
        end = cut + profile.target_s(size)
        out[i:i + size] = end - arrivals[i:i + size]
        free_at, i = end, i + size
    return out


def p95_ms(rate_sps: float, profile: BatchProfile, max_batch_size: int,
           max_queue_delay_s: float, *, n: int = 2000, seed: int = 0) -> float:
    """p95 sojourn in ms over the second half of the run (the first half warms the queue)."""
    t = simulate_batcher(rate_sps, profile, max_batch_size, max_queue_delay_s, n=n, seed=seed)
    return float(np.percentile(t[len(t) // 2:], 95) * 1e3) if len(t) else 0.0
