"""The server's heavy model (its batch-latency profile is in `testbed.profiles`)."""

from __future__ import annotations

import numpy as np

from testbed.modelzoo import Zoo, open_session


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
