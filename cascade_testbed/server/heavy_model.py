"""The server's heavy model, or an ensemble tier in front of one (batch-latency profiles are
in `common.batch_profiles`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.common.cascade_math import agreement_forwards, forwards, vote_shares
from cascade_testbed.common.gear_plan import cascade_name
from cascade_testbed.common.model_output import card_output, session_output
from cascade_testbed.common.modelzoo import Zoo, open_session


@dataclass(frozen=True, slots=True)
class BatchOutput:
    probs: np.ndarray
    models: tuple[str, ...] | None = None
    """Which model answered each sample, when that differs within the batch."""
    target_s: float | None = None
    """Emulated duration of this batch, when it depends on the data (an ensemble tier)."""


class HeavyModel:
    """Blocking inference on a stacked batch; the batcher runs it in a worker thread."""

    def __init__(self, zoo: Zoo, name: str, intra_op_threads: int = 1) -> None:
        self.name = name
        self.card = zoo.card(name)
        self._session = open_session(zoo.model_path(name), intra_op_threads, 1)
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self.sample_shape: tuple[int, ...] = tuple(int(d) for d in inp.shape[1:])
        self.sample_size = int(np.prod(self.sample_shape))
        # The output the card names (the first by default), as probabilities: a ZipMap's maps
        # become an array, logits go through a softmax when the card says so.
        self._output = session_output(self._session, card_output(self.card), name)
        self._outputs = [self._output.name]
        self._as_is = not (self._output.zipmap or self._output.softmax)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 [b, *sample_shape] -> class probabilities [b, classes]."""
        raw = self._session.run(self._outputs, {self._input: batch})[0]
        probs: np.ndarray = raw if self._as_is else self._output.probabilities(raw)
        return probs

    def run(self, batch: np.ndarray) -> BatchOutput:
        return BatchOutput(self.infer(batch))


class AgreementTier:
    """The server tier as an ensemble before a final model (a multi-level cascade of
    ensembles): every member runs on the batch; a sample whose members agree (majority share
    >= theta) is answered with the majority, the rest go on to the final model. Members run one
    after another on the one emulated accelerator, so a batch of b with e escalations takes
    sum of L_member(b) + L_final(e)."""

    def __init__(self, members: list[ServedModel], final: ServedModel, theta: float,
                 profiles: dict[str, BatchProfile | None]) -> None:
        self.members, self.final, self.theta = members, final, theta
        self.ensemble_name = "agreement(" + "+".join(m.name for m in members) + ")"
        self.name = f"{self.ensemble_name}>{final.name}"
        self.card = final.card
        self.sample_shape, self.sample_size = final.sample_shape, final.sample_size
        self._profiles = profiles
        parts = [profiles.get(m.name) for m in [*members, final]]
        self.profile = None if any(p is None for p in parts) else BatchProfile(
            sum(p.base_ms for p in parts if p), sum(p.per_sample_ms for p in parts if p))
        """The worst case (every sample escalates): what capacity and admission plan with."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch).probs

    def run(self, batch: np.ndarray) -> BatchOutput:
        shares = vote_shares(np.stack([m.infer(batch) for m in self.members]))
        escalate = np.asarray(agreement_forwards(shares.max(axis=1), self.theta))
        probs = shares.astype(np.float32)
        models = [self.ensemble_name] * len(batch)
        n_up = int(escalate.sum())
        if n_up:
            probs[escalate] = self.final.infer(batch[escalate])
            for i in np.flatnonzero(escalate):
                models[i] = self.final.name
        return BatchOutput(probs, tuple(models), self._target_s(len(batch), n_up))

    def _target_s(self, size: int, escalated: int) -> float | None:
        if self.profile is None:
            return None
        total = 0.0
        for m in self.members:
            p = self._profiles[m.name]
            total += p.target_s(size) if p else 0.0
        final = self._profiles[self.final.name]
        return total + (final.target_s(escalated) if final and escalated else 0.0)


ESCALATE = "escalate"
"""The model name an `EdgeTier` gives a sample it does not answer: its node sends it up."""


class EdgeTier:
    """A cascade-of-ensembles tier on an edge node: its models run on the batch; a sample is
    answered when they agree (the majority's share >= theta) or, with one model under the
    confidence rule, when its top-1 confidence is >= theta; the others are marked `ESCALATE`
    for the node to send to its parent. Its members run one after another on the node's
    accelerator: a batch of b takes the sum of their L(b)."""

    def __init__(self, members: list[ServedModel], rule: str, theta: float,
                 profiles: dict[str, BatchProfile | None]) -> None:
        self.members, self.rule, self.theta = members, rule, theta
        names = "+".join(m.name for m in members)
        self.name = f"agreement({names})" if rule == "agreement" else names
        self.card = members[-1].card
        self.sample_shape, self.sample_size = members[0].sample_shape, members[0].sample_size
        parts = [profiles.get(m.name) for m in members]
        self.profile = None if any(p is None for p in parts) else BatchProfile(
            sum(p.base_ms for p in parts if p), sum(p.per_sample_ms for p in parts if p))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch).probs

    def run(self, batch: np.ndarray) -> BatchOutput:
        if self.rule == "agreement":
            probs = vote_shares(np.stack([m.infer(batch) for m in self.members]))
            up = np.asarray(agreement_forwards(probs.max(axis=1), self.theta))
        else:
            probs = self.members[0].infer(batch)
            up = np.asarray(forwards(probs.max(axis=1), self.theta))
        models = tuple(ESCALATE if u else self.name for u in up)
        target = self.profile.target_s(len(batch)) if self.profile is not None else None
        return BatchOutput(probs.astype(np.float32), models, target)


class ConfidenceTier:
    """A confidence cascade on the server (CascadeServe's cascades run on its GPUs): the first
    model answers every sample of the batch; the ones whose top-1 confidence is below theta
    go on to the final model within the same batch slot. One emulated accelerator runs both,
    so a batch of b with e escalations takes L_first(b) + L_final(e)."""

    def __init__(self, first: ServedModel, final: ServedModel, theta: float,
                 profiles: dict[str, BatchProfile | None]) -> None:
        self.first, self.final, self.theta = first, final, theta
        self.name = cascade_name(first.name, final.name, theta)
        self.card = final.card
        self.sample_shape, self.sample_size = first.sample_shape, first.sample_size
        self._first_profile = profiles.get(first.name)
        self._final_profile = profiles.get(final.name)
        parts = (self._first_profile, self._final_profile)
        self.profile = None if parts[0] is None or parts[1] is None else BatchProfile(
            parts[0].base_ms + parts[1].base_ms, parts[0].per_sample_ms + parts[1].per_sample_ms)
        """The worst case (every sample escalates): what capacity and admission plan with."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch).probs

    def run(self, batch: np.ndarray) -> BatchOutput:
        probs = self.first.infer(batch).astype(np.float32)
        escalate = np.asarray(forwards(probs.max(axis=1), self.theta))
        models = [self.first.name] * len(batch)
        n_up = int(escalate.sum())
        if n_up:
            probs[escalate] = self.final.infer(batch[escalate])
            for i in np.flatnonzero(escalate):
                models[i] = self.final.name
        target = None
        if self._first_profile is not None and self._final_profile is not None:
            target = self._first_profile.target_s(len(batch)) + (
                self._final_profile.target_s(n_up) if n_up else 0.0)
        return BatchOutput(probs, tuple(models), target)


class ServedModel(Protocol):
    """What the batcher runs: a `HeavyModel`, an `AgreementTier` in front of one, or an
    early-exit `server.early_exit.model.StagedModel`."""

    name: str
    card: dict[str, Any]
    sample_shape: tuple[int, ...]
    sample_size: int

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, batch: np.ndarray) -> BatchOutput: ...
