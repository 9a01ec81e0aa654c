"""Cascade arithmetic on per-sample predictions: threshold curves, ensemble votes and the
calibration of an agreement threshold. Pure numpy; the planner, the harness and the devices
all decide with these same functions, so offline estimates and online behaviour agree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGREEMENT_EPS = 1e-4
"""Agreement fractions are j/k (k small); comparing them with theta must not depend on
rounding or on the tie-break below (< 1e-6)."""
TIE_BREAK = 1e-6


def forwards(conf: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """The confidence rule: forward below the threshold; a threshold of 1 forwards everything
    (a softmax can round to exactly 1.0, and "send all" must mean all)."""
    if threshold >= 1.0:
        return np.ones_like(conf, dtype=bool) if isinstance(conf, np.ndarray) else True
    return conf < threshold


def cascade_curve(score: np.ndarray, light_ok: np.ndarray, heavy_ok: np.ndarray,
                  thresholds: np.ndarray, rule: str = "confidence"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Forward rate and accuracy of light -> heavy for each threshold (validation samples).
    `score` is the light stage's confidence (rule "confidence") or agreement ("agreement")."""
    send = agreement_forwards if rule == "agreement" else forwards
    fwd = np.empty(len(thresholds))
    acc = np.empty(len(thresholds))
    for i, t in enumerate(thresholds):
        sent = np.asarray(send(score, float(t)))
        fwd[i] = float(np.mean(sent))
        acc[i] = float(np.mean(np.where(sent, heavy_ok, light_ok)))
    return fwd, acc


@dataclass(frozen=True, slots=True)
class Votes:
    """An ensemble's answer per sample: the majority class and the share of members behind it."""

    pred: np.ndarray
    agreement: np.ndarray


def _counts(member_probs: np.ndarray) -> np.ndarray:
    k, n = member_probs.shape[0], member_probs.shape[1]
    counts = np.zeros(member_probs.shape[1:], dtype=np.float64)
    for m in range(k):
        counts[np.arange(n), member_probs[m].argmax(axis=1)] += 1
    return counts


def vote_shares(member_probs: np.ndarray) -> np.ndarray:
    """`member_probs` [k, N, classes] -> each class's share of the members' votes [N, classes],
    plus a tie-break below `TIE_BREAK` by mean probability, so that argmax is the majority
    answer whatever the class order and max is the agreement."""
    out: np.ndarray = (_counts(member_probs) / member_probs.shape[0]
                       + member_probs.mean(axis=0) * TIE_BREAK)
    return out


def vote(member_probs: np.ndarray) -> Votes:
    """Majority answer and agreement (majority count / k) of an ensemble, per sample."""
    counts = _counts(member_probs)
    return Votes(pred=vote_shares(member_probs).argmax(axis=1),
                 agreement=counts.max(axis=1) / member_probs.shape[0])


def agreement_forwards(agreement: np.ndarray | float, theta: float) -> np.ndarray | bool:
    """The agreement rule: keep the majority answer iff agreement >= theta (1 = unanimity)."""
    return agreement < theta - AGREEMENT_EPS


def agreement_levels(k: int) -> list[float]:
    """The thetas that make a difference for k members: j / k for j = 1..k."""
    return [j / k for j in range(1, k + 1)]


def calibrate_theta(agreement: np.ndarray, ensemble_ok: np.ndarray, heavy_ok: np.ndarray,
                    k: int, tolerance: float = 0.005) -> float:
    """The theta that forwards least while the cascade's validation accuracy stays within
    `tolerance` of the most accurate theta (a "safe" deferral rule in the paper's sense)."""
    results = []
    for theta in agreement_levels(k):
        sent = agreement_forwards(agreement, theta)
        results.append((theta, float(np.mean(sent)),
                        float(np.mean(np.where(sent, heavy_ok, ensemble_ok)))))
    best = max(acc for _, _, acc in results)
    return min((fwd, theta) for theta, fwd, acc in results if acc >= best - tolerance)[1]
