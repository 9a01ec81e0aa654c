"""Forwarding rules: given the light model's class probabilities and the device's threshold,
send the sample to the server or keep the light answer. Pure functions.

For every rule a *higher* threshold forwards *more* samples, so schedulers can move any rule's
threshold in the same direction to shed or add server load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np

from cascade_testbed.common.cascade_math import agreement_forwards, forwards

ForwardingRule = Callable[[np.ndarray, float], bool]


def top1_confidence(probs: np.ndarray) -> float:
    return float(probs.max())


def confidence_rule(probs: np.ndarray, threshold: float) -> bool:
    """Forward when the top-1 probability is below the threshold (the classic cascade); a
    threshold of 1 forwards everything."""
    return bool(forwards(top1_confidence(probs), threshold))


def agreement_rule(shares: np.ndarray, threshold: float) -> bool:
    """On an ensemble's vote shares: forward unless the majority's share of the members is at
    least the threshold (1 = unanimity, 2/3 = two of three)."""
    return bool(agreement_forwards(float(shares.max()), threshold))


def margin_rule(probs: np.ndarray, threshold: float) -> bool:
    """Forward when top-1 minus top-2 probability is below the threshold."""
    top2 = np.partition(probs, -2)[-2:]
    return float(top2[1] - top2[0]) < threshold


def entropy_rule(probs: np.ndarray, threshold: float) -> bool:
    """Forward when normalised entropy exceeds 1 - threshold (entropy in [0, 1])."""
    p = np.clip(probs, 1e-12, 1.0)
    h = float(-(p * np.log(p)).sum() / np.log(len(p)))
    return h > 1.0 - threshold


RULES: Final[dict[str, ForwardingRule]] = {
    "confidence": confidence_rule,
    "margin": margin_rule,
    "entropy": entropy_rule,
    "agreement": agreement_rule,
}


def get_rule(name: str) -> ForwardingRule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown forwarding rule {name!r}; known: {sorted(RULES)}") from None
