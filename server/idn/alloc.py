"""Which models an IDN node holds. Pure: the node passes in what it saw, gets a set of models.

Every slot a node knows, for each request that crossed it, how far it had come (`path_ms`)
and what it cost to serve without this node's help (`alt_cost_ms`: the upstream cost its
reply reported, or the node's estimate of it). Holding model m would have saved
`alt - serving_cost(m)` on each request, up to what m can serve in a slot: that is m's gain
(`model_gains`, cost saved per second). Policies turn gains into an allocation within the
memory budget:

* `MirrorAscent` (INFIDA): a fractional allocation y in [0, 1]^M updated multiplicatively,
  y_m <- y_m * exp(eta * g_m / max g), projected back onto the budget
  (sum of size_m * y_m <= budget) by scaling (the Bregman projection of the negative
  entropy, clipped at 1), then rounded to a set of models whose expectation follows y
  (`round_allocation`).
* `greedy`: the models with the largest gain per kB that fit (online greedy on the last slot;
  the static greedy baseline runs it once on the first slot and keeps the result).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.idn.routing import serving_cost_ms


@dataclass(frozen=True, slots=True)
class CatalogModel:
    name: str
    size_kb: float
    accuracy: float
    infer_ms: float
    """Its inference latency at this node at a typical batch (the node's speed included)."""
    capacity_sps: float
    """What it can serve per second at this node (largest batch)."""


@dataclass(frozen=True, slots=True)
class Seen:
    path_ms: float
    alt_cost_ms: float


def model_gains(seen: Sequence[Seen], catalog: Sequence[CatalogModel], alpha_ms: float,
                slot_s: float) -> dict[str, float]:
    """Cost saved per second had each model been here, within its capacity for the slot."""
    out = {}
    for m in catalog:
        saved = sorted((r.alt_cost_ms - serving_cost_ms(r.path_ms, m.infer_ms, m.accuracy,
                                                        alpha_ms) for r in seen), reverse=True)
        cap = max(int(m.capacity_sps * slot_s), 1)
        out[m.name] = sum(x for x in saved[:cap] if x > 0) / slot_s
    return out


def fits(models: Iterable[str], sizes: Mapping[str, float], budget_kb: float) -> bool:
    return sum(sizes[m] for m in models) <= budget_kb + 1e-9


def greedy(gains: Mapping[str, float], sizes: Mapping[str, float], budget_kb: float) -> set[str]:
    """Largest gain per kB first, while it fits; models that would save nothing stay out."""
    chosen: set[str] = set()
    for m in sorted(gains, key=lambda m: (-gains[m] / max(sizes[m], 1e-9), m)):
        if gains[m] > 0 and fits([*chosen, m], sizes, budget_kb):
            chosen.add(m)
    return chosen


def project(y: Mapping[str, float], sizes: Mapping[str, float], budget_kb: float,
            floor: float = 1e-3) -> dict[str, float]:
    """Onto {floor <= y_m <= 1, sum size_m y_m <= budget}: scale by c (bisection) and clip."""
    def clipped(c: float) -> dict[str, float]:
        return {m: min(1.0, max(floor, c * v)) for m, v in y.items()}

    def used(c: float) -> float:
        return sum(sizes[m] * v for m, v in clipped(c).items())

    if used(1.0) <= budget_kb:
        return clipped(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if used(mid) <= budget_kb else (lo, mid)
    return clipped(lo)


def round_allocation(y: Mapping[str, float], sizes: Mapping[str, float], budget_kb: float,
                     u: Sequence[float]) -> set[str]:
    """A set of models: each drawn with probability y_m (u are uniform draws, one per model in
    name order), then the least likely dropped until the set fits. An approximation of
    dependent rounding (exact for equal sizes only), kept simple and within budget."""
    names = sorted(y)
    chosen = [m for m, draw in zip(names, u, strict=True) if draw < y[m]]
    chosen.sort(key=lambda m: y[m], reverse=True)
    while chosen and not fits(chosen, sizes, budget_kb):
        chosen.pop()
    return set(chosen)


class MirrorAscent:
    def __init__(self, sizes: Mapping[str, float], budget_kb: float, eta: float,
                 seed: int = 0) -> None:
        self.sizes = dict(sizes)
        self.budget_kb = budget_kb
        self.eta = eta
        total = sum(self.sizes.values())
        start = min(1.0, budget_kb / total) if total > 0 else 1.0
        self.y = project({m: start for m in self.sizes}, self.sizes, budget_kb)
        self._rng = np.random.default_rng(seed)

    def update(self, gains: Mapping[str, float]) -> set[str]:
        """One slot: ascend on the gains (scaled by the slot's largest, so `eta` does not
        depend on the load's units), project, round."""
        top = max(gains.values(), default=0.0)
        scale = 1.0 / top if top > 0 else 0.0
        raised = {m: v * math.exp(self.eta * gains.get(m, 0.0) * scale)
                  for m, v in self.y.items()}
        self.y = project(raised, self.sizes, self.budget_kb)
        return round_allocation(self.y, self.sizes, self.budget_kb,
                                self._rng.random(len(self.y)).tolist())
