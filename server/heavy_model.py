"""The server's heavy model and the batch-latency profile it is padded to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.modelzoo import Zoo, open_session


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
