"""The server's heavy model and the batch-latency profile it is padded to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from testbed.modelzoo import Zoo, ZooError, open_session

REFERENCE_BATCH = "32"
"""Batch size whose measured latency compares heavy models' costs."""


@dataclass(frozen=True, slots=True)
class BatchProfile:
    """Emulated accelerator: a batch of b takes base + per_sample * b milliseconds."""

    base_ms: float
    per_sample_ms: float

    def target_s(self, batch_size: int) -> float:
        return (self.base_ms + self.per_sample_ms * batch_size) / 1e3


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

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 [b, *sample_shape] -> class probabilities [b, classes]."""
        probs: np.ndarray = self._session.run(None, {self._input: batch})[0]
        return probs


def profile_for(zoo: Zoo, name: str, default: str, base: BatchProfile,
                overrides: dict[str, Any]) -> BatchProfile:
    """The emulated batch profile of heavy model `name`: the scenario's override, the
    server's profile for the default model, or that profile scaled by how much costlier
    `name` measured on this host (cards' latency at batch 32)."""
    if name in overrides:
        o = overrides[name]
        return BatchProfile(float(o["base_ms"]), float(o["per_sample_ms"]))
    if name == default:
        return base
    try:
        ratio = (float(zoo.card(name)["latency_ms_p50"][REFERENCE_BATCH])
                 / float(zoo.card(default)["latency_ms_p50"][REFERENCE_BATCH]))
    except (KeyError, ZooError) as exc:
        raise ZooError(f"no profile for {name!r} and no batch-{REFERENCE_BATCH} latency "
                       f"in the cards to scale one: {exc}") from None
    return BatchProfile(base.base_ms * ratio, base.per_sample_ms * ratio)
