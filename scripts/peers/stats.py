"""The pure arithmetic of scripts/bench_peers.py: arrival plans, curve points, reading one
curve at another's p99 or load, batch summaries and the result JSON. Only the standard
library and numpy, so the unit tests import it by path without a server, a peer or a network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUSTAINED_ERRORS = 0.01
"""A step is sustained when at most this share of its requests failed ..."""
SUSTAINED_ACHIEVED = 0.95
"""... and the achieved throughput is at least this share of the rate actually sent."""


# ---- arrival plans --------------------------------------------------------------------------

def poisson_offsets(rate: float, seconds: float, seed: int) -> list[float]:
    """Open-loop Poisson arrival times in [0, seconds): the same seed gives every server the
    same trace."""
    rng = np.random.default_rng(seed)
    n = max(int(rate * seconds * 1.5) + 16, 16)
    at = np.cumsum(rng.exponential(1.0 / rate, n))
    while at[-1] < seconds:  # rare: draw more
        at = np.concatenate([at, at[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return [float(t) for t in at[at < seconds]]


def burst_offsets(size: int, at_s: float = 0.2) -> list[float]:
    """`size` requests sent at once: how a server cuts a queue that is already full."""
    return [at_s] * size


def ramp_offsets(rate_from: float, rate_to: float, seconds: float, seed: int) -> list[float]:
    """A Poisson process whose rate rises linearly from `rate_from` to `rate_to` (thinning of
    a process at the top rate)."""
    top = max(rate_from, rate_to)
    rng = np.random.default_rng(seed)
    out = []
    for t in poisson_offsets(top, seconds, seed):
        rate = rate_from + (rate_to - rate_from) * t / seconds
        if rng.random() < rate / top:
            out.append(t)
    return out


def split_round_robin(offsets: Sequence[float], parts: int) -> list[list[float]]:
    """Deal one trace to `parts` load processes; their union is the trace itself."""
    return [list(offsets[i::parts]) for i in range(parts)]


def ladder_rates(start: float, factor: float, max_rate: float) -> list[float]:
    """Offered loads of the ladder, geometric from `start`, none above `max_rate`."""
    if start <= 0 or factor <= 1:
        raise ValueError("start must be > 0 and factor > 1")
    out = []
    rate = start
    while rate <= max_rate * (1 + 1e-9):
        out.append(rate)
        rate *= factor
    return out


def step_seconds(rate: float, seconds: float, min_requests: int, cap: float = 4.0) -> float:
    """Long enough for `min_requests` answers, so a low rate's p99 is not read off a handful
    of samples; at most `cap` x `seconds`."""
    return float(min(max(seconds, min_requests / rate), cap * seconds))


def refine_rate(offered_ok: Iterable[float], offered_all: Iterable[float]) -> float | None:
    """The next rate to try between the highest good step and the next step above it
    (geometric middle), or None when they are within 3 %."""
    goods = list(offered_ok)
    if not goods:
        return None
    lo = max(goods)
    above = [r for r in offered_all if r > lo]
    if not above:
        return None
    hi = min(above)
    return None if hi / lo < 1.03 else math.sqrt(lo * hi)


# ---- one step of a curve ------------------------------------------------------------------

@dataclass
class Point:
    """One step of offered load against one server."""

    offered: float
    sent_rate: float
    """The Poisson draw's actual rate, which sustaining is judged against."""
    achieved: float
    p50_ms: float
    p99_ms: float
    errors: int
    sent: int
    mean_batch: float = 0.0
    """Averaged over answered requests (the size of the batch each one ran in)."""
    server_cpu_us: float = math.nan
    """The server's whole process tree, CPU per answered request."""
    model_cpu_us: float = math.nan
    """The model's own thread, CPU per answered request."""
    client_cpu_us: float = math.nan
    host_cores: float = math.nan

    @property
    def error_share(self) -> float:
        return self.errors / max(self.sent, 1)

    @property
    def sustained(self) -> bool:
        return self.error_share <= SUSTAINED_ERRORS and \
            self.achieved >= SUSTAINED_ACHIEVED * self.sent_rate

    @property
    def outside_model_us(self) -> float:
        return self.server_cpu_us - self.model_cpu_us


def median_point(points: Sequence[Point]) -> Point:
    """Of repeated steps at one load, the one with the median p99 (the lower middle of an
    even count)."""
    if not points:
        raise ValueError("no points")
    ranked = sorted(points, key=lambda p: p.p99_ms)
    return ranked[(len(ranked) - 1) // 2]


def percentiles(latencies_ms: Sequence[float]) -> tuple[float, float]:
    if not len(latencies_ms):
        return math.inf, math.inf
    a = np.asarray(latencies_ms, dtype=float)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def max_sustained(points: Sequence[Point]) -> Point | None:
    return max((p for p in points if p.sustained), key=lambda p: p.achieved, default=None)


def best_within(points: Sequence[Point], budget_ms: float) -> Point | None:
    """The measured step with the highest sustained throughput whose p99 is within budget."""
    fit = [p for p in points if p.sustained and p.p99_ms <= budget_ms]
    return max(fit, key=lambda p: p.achieved, default=None)


def throughput_at_p99(points: Sequence[Point], budget_ms: float) -> float | None:
    """The highest throughput a curve sustains with p99 <= `budget_ms`: the best measured
    step, or, when the next sustained step is over budget, the linear interpolation of
    throughput against p99 between the two (a curve is read between its steps, not only at
    them). None when no sustained step is within budget."""
    ok = sorted((p for p in points if p.sustained), key=lambda p: p.offered)
    best = best_within(ok, budget_ms)
    if best is None:
        return None
    above = [p for p in ok if p.offered > best.offered and p.p99_ms > budget_ms]
    if not above:
        return best.achieved
    nxt = above[0]
    if nxt.p99_ms <= best.p99_ms:
        return best.achieved
    share = (budget_ms - best.p99_ms) / (nxt.p99_ms - best.p99_ms)
    return best.achieved + share * (nxt.achieved - best.achieved)


def p99_at_load(points: Sequence[Point], load: float) -> float | None:
    """A curve's p99 at offered load `load`: log-linear interpolation between the sustained
    steps that bracket it; the lowest step's p99 below the curve; None past its last
    sustained step (it does not hold that load)."""
    ok = sorted((p for p in points if p.sustained), key=lambda p: p.offered)
    if not ok or load > ok[-1].offered * 1.0001:
        return None
    if load <= ok[0].offered:
        return ok[0].p99_ms
    for lo, hi in itertools.pairwise(ok):
        if lo.offered <= load <= hi.offered:
            share = (load - lo.offered) / (hi.offered - lo.offered)
            return float(math.exp(math.log(lo.p99_ms) +
                                  share * (math.log(hi.p99_ms) - math.log(lo.p99_ms))))
    return ok[-1].p99_ms


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b) \
        else round(a / b, 2)


# ---- batching semantics ---------------------------------------------------------------------

@dataclass
class BatchSummary:
    """How one server batched one trace, from its replies (each says its batch's size and how
    long it waited before its batch ran)."""

    requests: int
    batches: int
    mean_batch: float
    """Requests per batch (averaged over batches, not over requests)."""
    max_batch: int
    size_counts: dict[int, int] = field(default_factory=dict)
    """Batches formed, by size."""
    wait_p50_ms: float = math.nan
    wait_p99_ms: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    idle_p50_ms: float = math.nan
    """Latency minus the compute of the request's batch: everything else, measured the
    same way for every server (client clock, server-reported compute)."""
    idle_p99_ms: float = math.nan


def batch_summary(sizes: Sequence[int], waits_us: Sequence[float],
                  latencies_ms: Sequence[float],
                  compute_us: Sequence[float] | None = None) -> BatchSummary:
    """Per-batch figures from per-request replies: a batch of b answers b requests, so the
    batches of size b number (requests that saw b) / b. Exact when every request of a batch
    was answered, as in these traces."""
    counts: dict[int, float] = {}
    for b in sizes:
        counts[int(b)] = counts.get(int(b), 0) + 1 / max(int(b), 1)
    size_counts = {b: max(1, round(n)) for b, n in sorted(counts.items())}
    batches = sum(size_counts.values())
    w50, w99 = percentiles([w / 1e3 for w in waits_us])
    l50, l99 = percentiles(latencies_ms)
    i50, i99 = (math.nan, math.nan) if compute_us is None else \
        percentiles([lat - c / 1e3 for lat, c in zip(latencies_ms, compute_us, strict=True)])
    return BatchSummary(len(sizes), batches, len(sizes) / batches if batches else 0.0,
                        max(size_counts, default=0), size_counts, w50, w99, l50, l99,
                        i50, i99)


def size_histogram(counts: dict[int, int], edges: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> str:
    """`1:3 2-3:5 ...` buckets, short enough for a table cell."""
    out = []
    bounds = list(edges)
    for i, lo in enumerate(bounds):
        hi = bounds[i + 1] - 1 if i + 1 < len(bounds) else 10**9
        n = sum(v for k, v in counts.items() if lo <= k <= hi)
        if n:
            label = str(lo) if hi == lo else (f"{lo}+" if hi == 10**9 else f"{lo}-{hi}")
            out.append(f"{label}:{n}")
    return " ".join(out)


# ---- the named figures ----------------------------------------------------------------------

def peer_figures(ours: Sequence[Point], peer: Sequence[Point], peer_equal: Point | None,
                 ours_equal: Point | None) -> dict[str, Any]:
    """One peer against ours. Equal p99: the budget is the peer's p99 at its highest
    sustained throughput; ours is read off its curve at that budget. Equal load: the peer's
    p99 at 80 % of its peak over ours at the same offered load (measured; read off our curve
    when not measured)."""
    top = max_sustained(peer)
    if top is None:
        return {"throughput_ratio_at_equal_p99": None, "p99_ratio_at_equal_load": None,
                "reason": "sustained no step"}
    budget = top.p99_ms
    ours_tp = throughput_at_p99(ours, budget)
    ours_p99 = ours_equal.p99_ms if ours_equal is not None else \
        (p99_at_load(ours, peer_equal.offered) if peer_equal is not None else None)
    return {
        "peak_rps": round(top.achieved, 1),
        "p99_at_peak_ms": round(top.p99_ms, 2),
        "ours_rps_at_that_p99": None if ours_tp is None else round(ours_tp, 1),
        "throughput_ratio_at_equal_p99": ratio(ours_tp, top.achieved),
        "equal_load_rps": None if peer_equal is None else round(peer_equal.offered, 1),
        "peer_p99_at_equal_load_ms": None if peer_equal is None else round(peer_equal.p99_ms, 2),
        "ours_p99_at_equal_load_ms": None if ours_p99 is None else round(ours_p99, 2),
        "p99_ratio_at_equal_load": ratio(peer_equal.p99_ms if peer_equal else None, ours_p99),
    }


def headline(figures: dict[str, dict[str, Any]], skipped: dict[str, str],
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The last line: `<peer>_throughput_ratio_at_equal_p99` (ours / peer, > 1 = ours serves
    more) and `<peer>_p99_ratio_at_equal_load` (peer / ours, > 1 = ours is faster) for every
    peer that ran, `<peer>_not_run` with the reason for every peer that did not."""
    out: dict[str, Any] = {}
    for peer, fig in figures.items():
        out[f"{peer}_throughput_ratio_at_equal_p99"] = fig.get("throughput_ratio_at_equal_p99")
        out[f"{peer}_p99_ratio_at_equal_load"] = fig.get("p99_ratio_at_equal_load")
    for peer, reason in skipped.items():
        out[f"{peer}_not_run"] = reason
    return {**out, **(extra or {})}


def rounded(obj: Any, digits: int = 2) -> Any:
    """Floats rounded for JSON; inf and nan become None (JSON has neither)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj
