"""Paired effects over seeds and their 95 % intervals, and whether a claim holds. Pure.

Both arms of a claim run on the same seeds, so the effect is computed per seed (a paired
difference, or a paired ratio) and the interval is a Student t interval over those per-seed
effects: for differences on the values themselves, for ratios on their logarithms (a ratio's
spread is multiplicative; its interval is then exponentiated and stays positive). With n seeds
the interval has n - 1 degrees of freedom: three seeds give a wide interval, which is the
honest answer to three seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

Kind = Literal["difference", "ratio"]
Direction = Literal["higher", "lower"]
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Effect:
    """A claim's measured effect: the mean over seeds (geometric for ratios) and its interval."""

    measured: float
    low: float
    high: float
    per_seed: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.per_seed)


def paired_effects(method: Sequence[float], baseline: Sequence[float], kind: Kind,
                   scale: float = 1.0) -> tuple[float, ...]:
    """Per-seed effects, seed i of one arm against seed i of the other: `scale * (method -
    baseline)`, or `method / baseline` for ratios. The caller orients them so that the effect
    reads as the paper states it (a cost "x times lower" is baseline cost / method cost)."""
    if len(method) != len(baseline) or not method:
        raise ValueError("both arms need the same, non-zero number of seeds")
    if kind == "difference":
        return tuple(scale * (m - b) for m, b in zip(method, baseline, strict=True))
    if any(b <= 0 or m <= 0 for m, b in zip(method, baseline, strict=True)):
        raise ValueError("a ratio needs positive values in both arms")
    return tuple(m / b for m, b in zip(method, baseline, strict=True))


def interval(effects: Sequence[float], kind: Kind, confidence: float = CONFIDENCE) -> Effect:
    """Mean and t interval of per-seed effects (on logarithms for ratios)."""
    if len(effects) < 2:
        raise ValueError("an interval needs at least 2 seeds (a claim needs 3)")
    values = [math.log(e) for e in effects] if kind == "ratio" else list(effects)
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if kind == "ratio":
        mean, low, high = math.exp(mean), math.exp(low), math.exp(high)
    return Effect(mean, low, high, tuple(effects))


def no_effect(kind: Kind) -> float:
    return 1.0 if kind == "ratio" else 0.0


def holds(effect: Effect, kind: Kind, direction: Direction) -> bool:
    """The whole interval lies on the paper's side of "no effect" (strictly)."""
    if direction == "higher":
        return effect.low > no_effect(kind)
    return effect.high < no_effect(kind)


def at_paper_number(effect: Effect, paper: float | None, direction: Direction) -> bool | None:
    """Whether the measured effect reaches the paper's number (None when the paper gives
    none): the mean is at or beyond it on the paper's side."""
    if paper is None:
        return None
    return effect.measured >= paper if direction == "higher" else effect.measured <= paper
