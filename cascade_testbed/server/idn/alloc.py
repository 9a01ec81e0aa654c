"""Which models an IDN node holds. Pure: the node passes in what it saw, gets a set of models.

Every slot a node knows, for each request that crossed it, how far it had come (`path_ms`)
and what serving it without this node's models cost (`alt_cost_ms`: the upstream cost its
reply reported, or the node's estimate of it for a request served here). These are INFIDA's
request types as one node sees them (`Demand`): for each request the options at this node
that are cheaper than upstream and whose capacity reaches it (each model's capacity for the
slot goes to the requests with the most to gain first: INFIDA's potential available
capacity), cheapest first, then upstream, which serves everything.

The slot's caching gain of an allocation x (cost saved against upstream) is, per request,
sum over its options k of (C_{k+1} - C_k) * min(1, x_1 + ... + x_k) (`Demand.gain`); its
concave relaxation is the same with a fractional y, and `Demand.subgradient` is the
subgradient of that relaxation: a model earns, on each request, the cost steps from its own
option up to the first one where the options so far already cover the request.

* `MirrorAscent` (INFIDA): a fractional allocation y in [floor, 1]^M updated by online mirror
  ascent with the size-weighted negative entropy sum_m s_m y_m log y_m: y_m <- y_m *
  exp(eta * g_m / s_m / scale); then its Bregman (KL) projection onto
  {sum_m s_m y_m <= budget} (`project`), then DepRound to a set of models (`dep_round`).
* `greedy`: the allocation that maximises the last slot's gain, built by marginal gain per kB
  (and never worse than the best single model): the myopic heuristic of similar complexity
  (online greedy each slot; the static greedy baseline runs it once and keeps the result).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cascade_testbed.server.idn.routing import serving_cost_ms


@dataclass(frozen=True, slots=True)
class CatalogModel:
    name: str
    size_kb: float
    accuracy: float
    infer_ms: float
    """Its inference latency at this node at a typical batch (the node's speed included)."""
    capacity_sps: float
    """What it can serve per second at this node (largest batch)."""
    task: str = ""
    """The task it answers: it serves only that task's requests."""


@dataclass(frozen=True, slots=True)
class Seen:
    path_ms: float
    alt_cost_ms: float
    task: str = ""


@dataclass(frozen=True)
class Demand:
    """One slot of requests at one node, as INFIDA's options per request."""

    alt: np.ndarray
    """Cost upstream per request (the last option, unbounded), sorted high to low."""
    cost: np.ndarray
    """Cost per request of each model here, shape (n, M); models in `names` order."""
    reach: np.ndarray
    """(n, M) bool: model m would save on request r and has capacity left for it."""
    names: tuple[str, ...]
    slot_s: float

    @classmethod
    def of(cls, seen: Sequence[Seen], catalog: Sequence[CatalogModel], alpha_ms: float,
           slot_s: float) -> Demand:
        names = tuple(m.name for m in catalog)
        rows = sorted(seen, key=lambda r: -r.alt_cost_ms)
        alt = np.array([r.alt_cost_ms for r in rows], dtype=float)
        path = [r.path_ms for r in rows]
        n, k = len(alt), len(names)
        cost = np.empty((n, k))
        reach = np.zeros((n, k), dtype=bool)
        tasks = np.array([r.task for r in rows], dtype=object)
        for j, m in enumerate(catalog):
            cost[:, j] = [serving_cost_ms(p, m.infer_ms, m.accuracy, alpha_ms) for p in path]
            saves = (cost[:, j] < alt) & (tasks == m.task)  # a model serves its own task only
            cap = max(int(m.capacity_sps * slot_s), 1)
            reach[:, j] = saves & (np.cumsum(saves) <= cap)  # most to gain first
        return cls(alt, cost, reach, names, slot_s)

    def gain(self, held: Iterable[str]) -> float:
        """Cost saved per second against upstream, had `held` been here for the slot."""
        cols = [self.names.index(m) for m in held if m in self.names]
        if not cols or not len(self.alt):
            return 0.0
        c = np.where(self.reach[:, cols], self.cost[:, cols], np.inf).min(axis=1)
        return float(np.where(np.isfinite(c), self.alt - c, 0.0).sum() / self.slot_s)

    def relaxed(self, y: Mapping[str, float]) -> float:
        """The concave relaxation of `gain` at fractional y: per request, sum over its options
        of (C_{k+1} - C_k) * min(1, y_1 + ... + y_k)."""
        total = 0.0
        for r in range(len(self.alt)):
            opts = sorted((self.cost[r, j], j) for j in range(len(self.names))
                          if self.reach[r, j])
            cum = 0.0
            for i, (c, j) in enumerate(opts):
                nxt = opts[i + 1][0] if i + 1 < len(opts) else self.alt[r]
                cum += y.get(self.names[j], 0.0)
                total += (nxt - c) * min(1.0, cum)
        return total / self.slot_s

    def subgradient(self, y: Mapping[str, float]) -> dict[str, float]:
        """A subgradient of the slot's concave relaxation at fractional allocation y, per
        second: on each request, model m earns C_{k+1} - C_k for every option k from its own
        up to the first where the options so far already cover the request (sum y >= 1)."""
        out = dict.fromkeys(self.names, 0.0)
        for r in range(len(self.alt)):
            opts = sorted((self.cost[r, j], j) for j in range(len(self.names))
                          if self.reach[r, j])
            steps = []  # (model, C_next - C_k, covered after k)
            cum = 0.0
            for i, (c, j) in enumerate(opts):
                nxt = opts[i + 1][0] if i + 1 < len(opts) else self.alt[r]
                cum += y.get(self.names[j], 0.0)
                steps.append((j, nxt - c, cum >= 1.0))
            for i, (j, _, _) in enumerate(steps):
                g = 0.0
                for _, d, covered in steps[i:]:
                    if covered:
                        break
                    g += d
                out[self.names[j]] += g
        return {m: v / self.slot_s for m, v in out.items()}


def fits(models: Iterable[str], sizes: Mapping[str, float], budget_kb: float) -> bool:
    return sum(sizes[m] for m in models) <= budget_kb + 1e-9


def greedy(demand: Demand, sizes: Mapping[str, float], budget_kb: float,
           held: Iterable[str] = ()) -> set[str]:
    """Largest marginal gain per kB first, while it fits and gains, or the best single model
    if that gains more (the knapsack greedy's usual guard); then the memory left is filled,
    by gain per kB alone, with models that would gain alone or are already held (a second
    model adds capacity in a burst; unloading frees memory nobody asked for)."""
    chosen: set[str] = set()
    base = 0.0
    while True:
        best, best_rate, best_gain = None, 0.0, 0.0
        for m in sorted(sizes):
            if m in chosen or not fits([*chosen, m], sizes, budget_kb):
                continue
            g = demand.gain(chosen | {m})
            rate = (g - base) / max(sizes[m], 1e-9)
            if g - base > 1e-9 and rate > best_rate:
                best, best_rate, best_gain = m, rate, g
        if best is None:
            break
        chosen.add(best)
        base = best_gain
    singles = [(demand.gain({m}), m) for m in sorted(sizes) if fits([m], sizes, budget_kb)]
    top = max(singles, default=(0.0, ""))
    if top[0] > base + 1e-9:
        chosen = {top[1]}
    kept = set(held)
    alone = {m: demand.gain({m}) for m in sizes}
    for m in sorted(sizes, key=lambda m: (-alone[m] / max(sizes[m], 1e-9), m not in kept, m)):
        if (alone[m] > 1e-9 or m in kept) and fits([*chosen, m], sizes, budget_kb):
            chosen.add(m)
    return chosen


def project(y: Mapping[str, float], sizes: Mapping[str, float], budget_kb: float,
            floor: float = 1e-3) -> dict[str, float]:
    """The Bregman projection of the size-weighted negative entropy onto
    {floor <= y_m <= 1, sum size_m y_m <= budget}. Its KKT conditions give
    y_m = clip(c * v_m, floor, 1) with one c <= 1 for all models (found by bisection): the
    weights make the multiplier of the budget the same for every model."""
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


def dep_round(y: Mapping[str, float], sizes: Mapping[str, float], budget_kb: float,
              rng: np.random.Generator) -> set[str]:
    """DepRound with sizes: take two fractional models, move mass between them keeping
    sum size * y, until one is 0 or 1, choosing the direction so each E[x_m] = y_m; the model
    left fractional at the end is drawn with probability y_m if it fits, else left out. Exact
    for equal sizes; with unequal sizes E[x] = y cannot always be met within the budget (the
    fractional set is larger than the hull of the allocations that fit)."""
    eps = 1e-9
    v = dict(y)
    frac = [m for m in sorted(v) if eps < v[m] < 1 - eps]
    order = [frac[i] for i in rng.permutation(len(frac))]
    while len(order) >= 2:
        i, j = order[0], order[1]
        ratio = sizes[i] / max(sizes[j], 1e-12)
        up = min(1 - v[i], v[j] / ratio)       # i up, j down
        down = min(v[i], (1 - v[j]) / ratio)   # i down, j up
        if rng.random() < down / (up + down):
            v[i], v[j] = v[i] + up, v[j] - up * ratio
        else:
            v[i], v[j] = v[i] - down, v[j] + down * ratio
        order = [m for m in order if eps < v[m] < 1 - eps]
    chosen = {m for m, x in v.items() if x >= 1 - eps}
    if order and rng.random() < v[order[0]] and fits([*chosen, order[0]], sizes, budget_kb):
        chosen.add(order[0])
    while not fits(chosen, sizes, budget_kb):  # only by rounding error
        chosen.remove(min(chosen, key=lambda m: (y[m], m)))
    return chosen


class MirrorAscent:
    """INFIDA at one node: the fractional allocation and its rounding."""

    def __init__(self, sizes: Mapping[str, float], budget_kb: float, eta: float,
                 seed: int = 0, floor: float = 1e-3) -> None:
        self.sizes = {m: s for m, s in sizes.items() if s <= budget_kb}
        """Only the models that fit alone: the others can never be held (their y stays 0)."""
        self.too_big = sorted(set(sizes) - set(self.sizes))
        self.budget_kb = budget_kb
        self.eta = eta
        self.floor = floor
        total = sum(self.sizes.values())
        start = min(1.0, budget_kb / total) if total > 0 else 1.0
        self._y = project({m: start for m in self.sizes}, self.sizes, budget_kb, floor)
        self.scale = 0.0
        """The largest gain per kB seen so far: gains are divided by it, so eta is free of
        the load's units and exp(eta) is the most a weight can grow in one slot."""
        self._rng = np.random.default_rng(seed)

    @property
    def y(self) -> dict[str, float]:
        return {**self._y, **dict.fromkeys(self.too_big, 0.0)}

    def update(self, grad: Mapping[str, float]) -> set[str]:
        """One slot: a mirror-ascent step on the subgradient at the current y, the projection,
        DepRound."""
        per_kb = {m: grad.get(m, 0.0) / max(s, 1e-9) for m, s in self.sizes.items()}
        self.scale = max(self.scale, *per_kb.values(), 0.0)
        if self.scale > 0:
            raised = {m: v * math.exp(self.eta * per_kb[m] / self.scale)
                      for m, v in self._y.items()}
            self._y = project(raised, self.sizes, self.budget_kb, self.floor)
        return self.round()

    def round(self) -> set[str]:
        return dep_round(self._y, self.sizes, self.budget_kb, self._rng)
