"""CascadeServe's offline phase on this testbed: the accuracy/cost Pareto front of cascades,
then, for each load level, the most accurate gear that a capacity check and a simulated p95
say the server can serve. Pure: curves and profiles come in, a `GearPlan` goes out.

A cascade here is (per-tier device thresholds, heavy model); its cost is the server time it
asks per generated sample. The devices' light models are stage 0, so the gear's thresholds are
what the server sets on the devices (docs/cascadeserve.md says how this maps to the paper).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.batch_profiles import BatchProfile
from common.gear_plan import Gear, GearPlan
from testbed.plan.batch_sim import p95_ms


@dataclass(frozen=True)
class TierCurve:
    """One tier's light model in front of one heavy model, on the validation split."""

    thresholds: np.ndarray
    forward_rate: np.ndarray
    accuracy: np.ndarray


@dataclass(frozen=True)
class PlanInputs:
    weights: Mapping[str, float]
    """Share of all generated samples that each tier produces (sums to 1)."""
    curves: Mapping[str, Mapping[str, TierCurve]]
    """Heavy model -> tier -> curve."""
    profiles: Mapping[str, BatchProfile]
    max_batch_size: int
    max_queue_delay_s: float
    server_budget_ms: float
    max_rps: int
    """Plan load levels 0..max_rps (generated samples/s over all devices)."""
    utilization: float = 0.8
    """A gear may use at most this share of the server's capacity at its batch size (live
    forward rates differ from the validation split's)."""
    batch_sizes: Sequence[int] = field(default_factory=lambda: (1, 2, 4, 8, 16, 32, 64, 128))
    sim_samples: int = 2000
    min_accuracy_step: float = 0.001
    """Front points closer than this in accuracy to a cheaper one are dropped: on a validation
    split of a few thousand samples smaller steps are noise, and each gear is a switch."""


@dataclass(frozen=True, slots=True)
class Candidate:
    heavy_model: str
    thresholds: dict[str, float]
    forward: dict[str, float]
    """Forward rate of each tier."""
    accuracy: float
    forward_rate: float
    cost_ms: float


def per_sample_ms(profile: BatchProfile, batch_size: int) -> float:
    return profile.target_s(batch_size) * 1e3 / batch_size


def pareto_front(inputs: PlanInputs) -> list[Candidate]:
    """Every (heavy model, tier thresholds) combination scored exactly on the validation
    curves; only the ones no other beats on both accuracy and cost, most accurate first."""
    tiers = list(inputs.weights)
    w = np.array([inputs.weights[t] for t in tiers])
    pool: list[tuple[float, float, Candidate]] = []
    for heavy, by_tier in inputs.curves.items():
        unit = per_sample_ms(inputs.profiles[heavy], inputs.max_batch_size)
        curves = [by_tier[t] for t in tiers]
        grids = [np.arange(len(c.thresholds)) for c in curves]
        idx = np.array(list(itertools.product(*grids)))  # [combos, tiers]
        fwd = np.stack([c.forward_rate[idx[:, j]] for j, c in enumerate(curves)], axis=1)
        acc = np.stack([c.accuracy[idx[:, j]] for j, c in enumerate(curves)], axis=1) @ w
        total = fwd @ w
        cost = total * unit
        for k in _front(cost, acc):
            pool.append((float(cost[k]), float(acc[k]), Candidate(
                heavy, {t: float(curves[j].thresholds[idx[k, j]]) for j, t in enumerate(tiers)},
                {t: float(fwd[k, j]) for j, t in enumerate(tiers)}, float(acc[k]),
                float(total[k]), float(cost[k]))))
    front, last = [], -np.inf
    for k in _front(np.array([p[0] for p in pool]), np.array([p[1] for p in pool])):
        if pool[k][1] >= last + inputs.min_accuracy_step:
            front.append(pool[k][2])
            last = pool[k][1]
    return sorted(front, key=lambda c: (-c.accuracy, c.cost_ms))


def _front(cost: np.ndarray, acc: np.ndarray) -> list[int]:
    """Indices on the cost/accuracy Pareto front: cheapest first, each more accurate than
    every cheaper one."""
    order = np.lexsort((-acc, cost))
    out, best = [], -np.inf
    for k in order:
        if acc[k] > best + 1e-12:
            out.append(int(k))
            best = acc[k]
    return out


def fitting_batch(inputs: PlanInputs, c: Candidate, load_rps: float) -> tuple[int, float] | None:
    """The largest batch cap whose capacity serves `load_rps` of this cascade within the
    utilization bound and whose simulated p95 fits the budget; None if none does. Largest,
    because under a dynamic batcher a larger cap costs latency only when requests wait, and
    it is the headroom that drains a backlog when the live load runs above the plan."""
    profile = inputs.profiles[c.heavy_model]
    server_sps = load_rps * c.forward_rate
    for b in sorted((b for b in inputs.batch_sizes if b <= inputs.max_batch_size),
                    reverse=True):
        if server_sps > inputs.utilization * b / profile.target_s(b):
            break  # smaller caps serve even less
        p95 = p95_ms(server_sps, profile, b, inputs.max_queue_delay_s, n=inputs.sim_samples)
        if p95 <= inputs.server_budget_ms:
            return b, p95
    return None


def plan_gears(inputs: PlanInputs, front: Sequence[Candidate] | None = None) -> GearPlan:
    """For q = 0..max_rps: the most accurate front cascade that fits (CascadeServe's
    downgrade loop). A cascade that does not fit at q does not fit at any higher load, so the
    search walks down the front once. Past the cheapest cascade, the cheapest stays, at the
    largest batch: the best the server can still do."""
    front = list(front if front is not None else pareto_front(inputs))
    if not front:
        raise ValueError("no cascade to plan with (no curves?)")
    gears: list[Gear] = []
    keys: dict[tuple[int, int], int] = {}
    table: list[int] = []
    i = 0
    for q in range(inputs.max_rps + 1):
        fit = None
        while i < len(front):
            fit = fitting_batch(inputs, front[i], float(q))
            if fit is not None:
                break
            i += 1
        c = front[min(i, len(front) - 1)]
        batch, p95 = fit if fit is not None else (inputs.max_batch_size, float("inf"))
        key = (min(i, len(front) - 1), batch)
        if key not in keys:
            keys[key] = len(gears)
            gears.append(_gear(c, batch, inputs.weights))
        gi = keys[key]
        gears[gi] = _with_p95(gears[gi], p95)
        table.append(gi)
    return GearPlan(gears=tuple(gears), table=tuple(table),
                    server_budget_ms=inputs.server_budget_ms)


def _gear(c: Candidate, batch: int, weights: Mapping[str, float]) -> Gear:
    load = {t: weights[t] * c.forward[t] for t in c.forward}
    total = sum(load.values())
    return Gear(heavy_model=c.heavy_model, thresholds=dict(c.thresholds),
                max_batch_size=batch, accuracy=round(c.accuracy, 5),
                forward_rate=round(c.forward_rate, 5),
                load_split={t: round(v / total, 4) if total > 0 else 0.0 for t, v in load.items()},
                cost_ms=round(c.cost_ms, 5))


def _with_p95(g: Gear, p95: float) -> Gear:
    value = round(p95, 2) if np.isfinite(p95) else -1.0
    return dataclasses.replace(g, p95_server_ms=value)
