"""The device's light model: an onnxruntime session with one intra-op and one inter-op thread."""

from __future__ import annotations

import numpy as np

from testbed.modelzoo import Zoo, open_session, to_model_input


class LightModel:
    def __init__(self, zoo: Zoo, name: str) -> None:
        self.name = name
        self._session = open_session(zoo.model_path(name), 1, 1)
        self._input = self._session.get_inputs()[0].name

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of one sample (uint8 pixels [64])."""
        probs: np.ndarray = self._session.run(None, {self._input: to_model_input(pixels[None])})[0]
        first: np.ndarray = probs[0]
        return first
