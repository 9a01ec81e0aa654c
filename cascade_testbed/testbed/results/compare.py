"""`testbed compare A B`: how B's headline figures differ from A's. Pure: summaries in, the
differences and their 95 % intervals out.

Each side is one run or several (the seeds of a claim's arm, the points of a sweep). Runs of
the two sides are paired by seed when every run of a side has its own seed, else by the name
of their folder (the same sweep point). With two or more pairs, a figure's difference is the
mean of the per-pair differences B - A with a paired Student t interval
(`testbed.claims.stats`, as the claims use); with one run per side, just the difference; when
the sides cannot be paired, the difference of their means without an interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade_testbed.testbed.claims.stats import interval, paired_effects
from cascade_testbed.testbed.results.headline import COMPARED, lookup

Summary = Mapping[str, Any]
Run = tuple[str, Summary]
"""(name of the run's folder, its summary)."""


@dataclass(frozen=True, slots=True)
class Difference:
    metric: str
    a: float | None
    """Mean over A's runs (those in a pair when paired)."""
    b: float | None
    diff: float | None
    """B - A (mean of per-pair differences when paired)."""
    low: float | None = None
    high: float | None = None
    """The 95 % interval of `diff`; None without at least two pairs."""
    n: int = 0
    """Pairs (or, unpaired, runs of the smaller side) the figure was computed over."""

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, "diff": self.diff,
                "ci95": None if self.low is None else [self.low, self.high], "n": self.n}


@dataclass
class Comparison:
    paired: bool
    pairs: list[tuple[str, str]]
    """Names of the paired runs (A's, B's)."""
    differences: list[Difference] = field(default_factory=list)
    unpaired_a: list[str] = field(default_factory=list)
    unpaired_b: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"paired": self.paired, "pairs": [list(p) for p in self.pairs],
                "unpaired_a": self.unpaired_a, "unpaired_b": self.unpaired_b,
                "metrics": [d.to_json() for d in self.differences]}


def pair_key(runs: Sequence[Run]) -> str:
    """"seed" when every run of the side has a different seed, else "name"."""
    seeds = [s.get("seed") for _, s in runs]
    return "seed" if None not in seeds and len(set(seeds)) == len(seeds) else "name"


def pair(a: Sequence[Run], b: Sequence[Run]) -> tuple[list[tuple[Run, Run]], list[str],
                                                      list[str]]:
    """Matching runs of A and B, and the names of those left without a partner."""
    if len(a) == 1 and len(b) == 1:
        return [(a[0], b[0])], [], []
    by = "seed" if pair_key(a) == pair_key(b) == "seed" else "name"

    def key(run: Run) -> str:
        return str(run[1].get("seed")) if by == "seed" else run[0]

    b_by_key = {key(r): r for r in b}
    pairs = [(r, b_by_key[key(r)]) for r in a if key(r) in b_by_key]
    a_keys = {key(r) for r in a}
    return (pairs, [r[0] for r in a if key(r) not in b_by_key],
            [r[0] for r in b if key(r) not in a_keys])


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def compare(a: Sequence[Run], b: Sequence[Run], metrics: Sequence[str] = COMPARED
            ) -> Comparison:
    """B - A for every metric; see the module's docstring for how runs are paired."""
    if not a or not b:
        raise ValueError("each side needs at least one run")
    pairs, only_a, only_b = pair(a, b)
    if len(pairs) >= 2 or (len(a) == 1 and len(b) == 1):
        out = Comparison(True, [(x[0], y[0]) for x, y in pairs], unpaired_a=only_a,
                         unpaired_b=only_b)
        for metric in metrics:
            values = [(lookup(x[1], metric), lookup(y[1], metric)) for x, y in pairs]
            both = [(va, vb) for va, vb in values if va is not None and vb is not None]
            out.differences.append(_paired(metric, both))
        return out
    out = Comparison(False, [], unpaired_a=[r[0] for r in a], unpaired_b=[r[0] for r in b])
    for metric in metrics:
        ma = _mean([lookup(s, metric) for _, s in a])
        mb = _mean([lookup(s, metric) for _, s in b])
        diff = mb - ma if ma is not None and mb is not None else None
        out.differences.append(Difference(metric, ma, mb, diff, n=min(len(a), len(b))))
    return out


def _paired(metric: str, both: list[tuple[float, float]]) -> Difference:
    if not both:
        return Difference(metric, None, None, None)
    va, vb = [p[0] for p in both], [p[1] for p in both]
    ma, mb = sum(va) / len(va), sum(vb) / len(vb)
    if len(both) < 2:
        return Difference(metric, ma, mb, mb - ma, n=1)
    effect = interval(paired_effects(vb, va, "difference"), "difference")
    return Difference(metric, ma, mb, effect.measured, effect.low, effect.high, effect.n)
