"""CascadeServe's offline phase on this testbed: the accuracy/cost Pareto front of cascades,
then, for each load level, the gear to run: the most accurate that a capacity check and a
simulated p95 say the server's replicas can serve or, given an accuracy target, the one that
meets the target on the fewest replicas. Pure: curves and profiles come in, a `GearPlan` goes
out.

A cascade here is (per-tier device thresholds, heavy model), or, with every sample sent on, a
server-side cascade of two heavy models (`first>final@theta`, the paper's own kind); its cost
is the server time it asks per generated sample. With device cascades the devices' light
models are stage 0, so the gear's thresholds are what the server sets on the devices
(docs/cascadeserve.md says how this maps to the paper).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.common.gear_plan import Gear, GearPlan, cascade_name
from cascade_testbed.testbed.plan.batch_sim import p95_ms


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
    server_cascades: Mapping[str, ServerCascade] = field(default_factory=dict)
    """Server-side cascades of two heavy models to consider (devices send every sample)."""
    max_replicas: int = 1
    min_accuracy: float | None = None
    """None: per load, the most accurate gear that fits on `max_replicas` replicas. A target
    (validation accuracy): per load, a gear that meets it on the fewest replicas, the most
    accurate of those; past what `max_replicas` can carry, the cheapest that meets it."""
    fixed: bool = False
    """With a target: one cascade for every load (the cheapest that meets the target), only
    its replicas following the load: a static cascade, or a single model, provisioned by the
    same rule as the gears."""


@dataclass(frozen=True, slots=True)
class ServerCascade:
    """`first` answers every sample; those below a threshold go on to `final`."""

    first: str
    final: str
    thresholds: np.ndarray
    escalate_rate: np.ndarray
    accuracy: np.ndarray


@dataclass(frozen=True, slots=True)
class Candidate:
    heavy_model: str
    thresholds: dict[str, float]
    forward: dict[str, float]
    """Forward rate of each tier."""
    accuracy: float
    forward_rate: float
    cost_ms: float
    profile: BatchProfile | None = None
    """The server's batch latency for this cascade: a heavy model's own, or for a server-side
    cascade the first model's plus the final model's for the share escalated."""


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
    pool += _server_cascade_pool(inputs, tiers)
    front, last = [], -np.inf
    for k in _front(np.array([p[0] for p in pool]), np.array([p[1] for p in pool])):
        if pool[k][1] >= last + inputs.min_accuracy_step:
            front.append(pool[k][2])
            last = pool[k][1]
    return sorted(front, key=lambda c: (-c.accuracy, c.cost_ms))


def _server_cascade_pool(inputs: PlanInputs, tiers: list[str]
                         ) -> list[tuple[float, float, Candidate]]:
    """Every threshold of every server-side cascade, devices sending every sample."""
    out = []
    for sc in inputs.server_cascades.values():
        first, final = inputs.profiles[sc.first], inputs.profiles[sc.final]
        b = inputs.max_batch_size
        for theta, esc, acc in zip(sc.thresholds, sc.escalate_rate, sc.accuracy, strict=True):
            cost = per_sample_ms(first, b) + float(esc) * per_sample_ms(final, b)
            profile = BatchProfile(first.base_ms + final.base_ms,
                                   first.per_sample_ms + float(esc) * final.per_sample_ms,
                                   first.shapes)
            out.append((cost, float(acc), Candidate(
                cascade_name(sc.first, sc.final, float(theta)), dict.fromkeys(tiers, 1.0),
                dict.fromkeys(tiers, 1.0), float(acc), 1.0, cost, profile)))
    return out


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
    profile = c.profile or inputs.profiles[c.heavy_model]
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
    """For q = 0..max_rps: the most accurate front cascade that fits on the replicas
    (CascadeServe's downgrade loop), or, with an accuracy target, the gear that meets it on
    the fewest replicas (`plan_for_target`). A cascade that does not fit at q does not fit at
    any higher load, so the search walks down the front once. Past the cheapest cascade, the
    cheapest stays, at the largest batch: the best the server can still do."""
    front = list(front if front is not None else pareto_front(inputs))
    if not front:
        raise ValueError("no cascade to plan with (no curves?)")
    if inputs.min_accuracy is not None:
        return plan_for_target(inputs, front)
    replicas = max(inputs.max_replicas, 1)
    built = _GearTable()
    i = 0
    for q in range(inputs.max_rps + 1):
        fit = None
        while i < len(front):
            fit = fitting_batch(inputs, front[i], float(q) / replicas)
            if fit is not None:
                break
            i += 1
        c = front[min(i, len(front) - 1)]
        batch, p95 = fit if fit is not None else (inputs.max_batch_size, float("inf"))
        built.add((min(i, len(front) - 1), batch), _gear(c, batch, inputs.weights, replicas),
                  p95)
    return built.plan(inputs)


def max_load(inputs: PlanInputs, c: Candidate, top: float) -> float:
    """The largest load (generated samples/s, to the nearest one) one replica serves with this
    cascade: bisection on `fitting_batch`, which holds at every load below one it holds at."""
    if fitting_batch(inputs, c, 0.0) is None:
        return -1.0
    lo, hi = 0.0, max(top, 1.0)
    if fitting_batch(inputs, c, hi) is not None:
        return hi
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        if fitting_batch(inputs, c, mid) is not None:
            lo = mid
        else:
            hi = mid
    return lo


def plan_for_target(inputs: PlanInputs, front: Sequence[Candidate]) -> GearPlan:
    """With an accuracy target: per load level, the front cascade that meets the target on
    the fewest replicas (the load split evenly over them), the most accurate of those; with
    `fixed`, always the cheapest one that meets it, only its replicas following the load. A
    target no cascade meets plans with the most accurate one."""
    assert inputs.min_accuracy is not None
    eligible = [c for c in front if c.accuracy >= inputs.min_accuracy - 1e-12] or \
        [max(front, key=lambda c: c.accuracy)]
    if inputs.fixed:
        eligible = [min(eligible, key=lambda c: (c.cost_ms, -c.accuracy))]
    top = float(inputs.max_rps)
    capacity = {id(c): max_load(inputs, c, top) for c in eligible}
    cheapest = min(eligible, key=lambda c: (c.cost_ms, -c.accuracy))
    built = _GearTable()
    most = max(inputs.max_replicas, 1)
    for q in range(inputs.max_rps + 1):
        best: tuple[int, float, Candidate] | None = None
        for c in eligible:
            cap = capacity[id(c)]
            if cap < 0:
                continue
            k = max(1, math.ceil(q / cap - 1e-9)) if cap > 0 else (1 if q == 0 else most + 1)
            if k <= most and (best is None or (k, -c.accuracy) < (best[0], -best[1])):
                best = (k, c.accuracy, c)
        k, c = (best[0], best[2]) if best is not None else (most, cheapest)
        fit = fitting_batch(inputs, c, q / k)
        batch, p95 = fit if fit is not None else (inputs.max_batch_size, float("inf"))
        built.add((c.heavy_model + repr(sorted(c.thresholds.items())), batch, k),
                  _gear(c, batch, inputs.weights, k), p95)
    return built.plan(inputs)


@dataclass
class _GearTable:
    """The gears of a plan, one per distinct key, each carrying the worst simulated p95 of the
    load levels it serves, and the load level -> gear table."""

    gears: list[Gear] = field(default_factory=list)
    keys: dict[tuple[object, ...], int] = field(default_factory=dict)
    table: list[int] = field(default_factory=list)

    def add(self, key: tuple[object, ...], gear: Gear, p95: float) -> None:
        """The next load level is served by `gear` (kept once per key) at `p95`."""
        if key not in self.keys:
            self.keys[key] = len(self.gears)
            self.gears.append(gear)
        gi = self.keys[key]
        self.gears[gi] = _with_p95(self.gears[gi], p95)
        self.table.append(gi)

    def plan(self, inputs: PlanInputs) -> GearPlan:
        return GearPlan(gears=tuple(self.gears), table=tuple(self.table),
                        server_budget_ms=inputs.server_budget_ms)


def _gear(c: Candidate, batch: int, weights: Mapping[str, float], replicas: int = 1) -> Gear:
    load = {t: weights[t] * c.forward[t] for t in c.forward}
    total = sum(load.values())
    return Gear(heavy_model=c.heavy_model, thresholds=dict(c.thresholds),
                max_batch_size=batch, accuracy=round(c.accuracy, 5),
                forward_rate=round(c.forward_rate, 5),
                load_split={t: round(v / total, 4) if total > 0 else 0.0 for t, v in load.items()},
                cost_ms=round(c.cost_ms, 5), replicas=replicas)


def _with_p95(g: Gear, p95: float) -> Gear:
    value = round(p95, 2) if np.isfinite(p95) else -1.0
    return dataclasses.replace(g, p95_server_ms=value)
