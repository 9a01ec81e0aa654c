"""Paired effects over seeds and their 95 % intervals, whether a claim holds, Holm's
adjustment across claims, and how many seeds a claim needs. Pure.

Both arms of a claim run on the same seeds, so the effect is computed per seed (a paired
difference, or a paired ratio) and the interval is a Student t interval over those per-seed
effects: for differences on the values themselves, for ratios on their logarithms (a ratio's
spread is multiplicative; its interval is then exponentiated and stays positive). With n seeds
the interval has n - 1 degrees of freedom: three seeds give a wide interval, which is the
honest answer to three seeds.

A claim holds when its whole interval lies beyond its *null*, on the paper's side: 0 for a
difference, 1 for a ratio, or a non-inferiority margin (e.g. -1 pt: "not more than 1 pt
worse"). A ratio whose denominator is 0 at some seed is infinite there: it is judged, not
refused, on the range of the per-seed values (a t interval of an infinity means nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["difference", "ratio"]
Direction = Literal["higher", "lower"]
CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True, slots=True)
class Effect:
    """A claim's measured effect: the mean over seeds (geometric for ratios) and its interval."""

    measured: float
    low: float
    high: float
    per_seed: tuple[float, ...]
    method: Literal["t", "range"] = "t"
    """"t": a Student t interval; "range": the range of the per-seed values, used when some
    per-seed ratio is 0 or infinite (its measured value is then the median)."""

    @property
    def n(self) -> int:
        return len(self.per_seed)


def paired_effects(method: Sequence[float], baseline: Sequence[float], kind: Kind,
                   scale: float = 1.0) -> tuple[float, ...]:
    """Per-seed effects, seed i of one arm against seed i of the other: `scale * (method -
    baseline)`, or `method / baseline` for ratios. The caller orients them so that the effect
    reads as the paper states it (a cost "x times lower" is baseline cost / method cost).
    A ratio over 0 is infinite, 0 over 0 is 1 (both arms alike); negative values are refused."""
    if len(method) != len(baseline) or not method:
        raise ValueError("both arms need the same, non-zero number of seeds")
    if kind == "difference":
        return tuple(scale * (m - b) for m, b in zip(method, baseline, strict=True))
    if any(b < 0 or m < 0 for m, b in zip(method, baseline, strict=True)):
        raise ValueError("a ratio needs values >= 0 in both arms")
    return tuple(_ratio(m, b) for m, b in zip(method, baseline, strict=True))


def _ratio(m: float, b: float) -> float:
    if b == 0:
        return 1.0 if m == 0 else math.inf
    return m / b


def interval(effects: Sequence[float], kind: Kind, confidence: float = CONFIDENCE) -> Effect:
    """Mean and t interval of per-seed effects (on logarithms for ratios); the range of the
    per-seed values when a ratio is 0 or infinite at some seed."""
    if len(effects) < 2:
        raise ValueError("an interval needs at least 2 seeds (a claim needs 3)")
    if kind == "ratio" and any(e <= 0 or math.isinf(e) for e in effects):
        ordered = sorted(effects)
        return Effect(_median(ordered), ordered[0], ordered[-1], tuple(effects), "range")
    values = _values(effects, kind)
    n = len(values)
    mean = sum(values) / n
    half = _t(0.5 + confidence / 2, n - 1) * _sd(values) / math.sqrt(n)
    low, high = mean - half, mean + half
    if kind == "ratio":
        mean, low, high = math.exp(mean), math.exp(low), math.exp(high)
    return Effect(mean, low, high, tuple(effects))


def _values(effects: Sequence[float], kind: Kind) -> list[float]:
    return [math.log(e) for e in effects] if kind == "ratio" else list(effects)


def _sd(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _scipy_stats() -> Any:
    """scipy.stats, imported when a claim is judged: it is most of a second of imports that
    every `testbed` command (and the forkserver, which preloads the CLI) would pay."""
    from scipy import stats
    return stats


def _t(q: float, df: int) -> float:
    return float(_scipy_stats().t.ppf(q, df))


def _median(ordered: Sequence[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def no_effect(kind: Kind) -> float:
    return 1.0 if kind == "ratio" else 0.0


def null_value(kind: Kind, null: float | None) -> float:
    """The value a claim's interval must exclude: its non-inferiority margin if it has one."""
    return no_effect(kind) if null is None else null


def holds(effect: Effect, kind: Kind, direction: Direction, null: float | None = None) -> bool:
    """The whole interval lies beyond the null on the paper's side (strictly)."""
    bound = null_value(kind, null)
    if direction == "higher":
        return effect.low > bound
    return effect.high < bound


def p_value(effect: Effect, kind: Kind, direction: Direction, null: float | None = None
            ) -> float:
    """One-sided p of "no effect beyond the null" against the paper's side, from the same
    t statistic as the interval (a claim holds by its interval exactly when p < 0.025). For a
    range interval: the sign test's p (all n seeds on the paper's side: 0.5 ** n)."""
    bound = null_value(kind, null)
    sign = 1.0 if direction == "higher" else -1.0
    if effect.method == "range":
        beyond = sum(sign * (e - bound) > 0 for e in effect.per_seed)
        return float(_scipy_stats().binom.sf(beyond - 1, effect.n, 0.5))
    values = _values(effect.per_seed, kind)
    target = math.log(bound) if kind == "ratio" else bound
    mean = sum(values) / len(values)
    sd = _sd(values)
    if sd == 0:
        return 0.0 if sign * (mean - target) > 0 else 1.0
    t = sign * (mean - target) / (sd / math.sqrt(len(values)))
    return float(_scipy_stats().t.sf(t, len(values) - 1))


def holm(p_values: Sequence[float], alpha: float = (1 - CONFIDENCE) / 2) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected with the family-wise error
    held at `alpha` (one-sided 0.025, the level of the plain verdicts)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def at_paper_number(effect: Effect, paper: float | None, direction: Direction) -> bool | None:
    """Whether the measured effect reaches the paper's number (None when the paper gives
    none): the mean is at or beyond it on the paper's side."""
    if paper is None:
        return None
    return effect.measured >= paper if direction == "higher" else effect.measured <= paper


SEED_BUDGET = 10
"""The most seeds a claim runs on this host (the catalog's `Claim.seeds` says the same): a
suggestion past it would be one nobody runs."""


@dataclass(frozen=True, slots=True)
class Power:
    seeds: int
    """The seeds the claim should run (at least `floor`, at most `cap`)."""
    needed: int | None
    """Seeds for `POWER` at the pilot's effect and spread; None: more than `cap` or no effect
    beyond the null in the pilot."""
    effect: float
    sd: float


def seeds_needed(effects: Sequence[float], kind: Kind, direction: Direction,
                 null: float | None = None, power: float = POWER, floor: int = 5,
                 cap: int = SEED_BUDGET) -> Power:
    """How many seeds a claim needs, from its per-seed effects on the tuning seeds (a pilot):
    the smallest n whose t interval, at the pilot's spread, excludes the null with probability
    `power` if the true effect is the pilot's mean: (t_{.975,n-1} + t_{power,n-1}) * sd / sqrt(n)
    < |mean - null|. Never fewer than `floor`; at most `cap` (then `needed` is None)."""
    if kind == "ratio" and any(e <= 0 or math.isinf(e) for e in effects):
        return Power(floor, None, math.nan, math.nan)
    values = _values(effects, kind)
    bound = null_value(kind, null)
    target = math.log(bound) if kind == "ratio" else bound
    mean = sum(values) / len(values)
    sd = _sd(values) if len(values) > 1 else math.nan
    gap = (mean - target) * (1.0 if direction == "higher" else -1.0)
    shown = math.exp(mean) if kind == "ratio" else mean
    if gap <= 0 or math.isnan(sd):
        return Power(cap, None, shown, sd)
    for n in range(2, cap + 1):
        if (_t(0.5 + CONFIDENCE / 2, n - 1) + _t(power, n - 1)) * sd / math.sqrt(n) < gap:
            return Power(max(n, floor), n, shown, sd)
    return Power(cap, None, shown, sd)
