"""The device's light stage: one model, or an ensemble voting (cascade of ensembles); each an
onnxruntime session with one intra-op and one inter-op thread."""

from __future__ import annotations

import numpy as np

from common.cascade_math import vote_shares
from common.modelzoo import Zoo, open_session, to_model_input
from common.zoo_checks import PIXEL_SCALE


class LightModel:
    """One session. Its input array and feed are made once and filled in place per sample
    (`to_model_input`'s arithmetic, without allocating two arrays and a dict each time)."""

    def __init__(self, zoo: Zoo, name: str) -> None:
        self.name = name
        self._session = open_session(zoo.model_path(name), 1, 1)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [self._session.get_outputs()[0].name]
        self._buf: np.ndarray | None = None
        self._feed: dict[str, np.ndarray] = {}
        # The binding's own run: `InferenceSession.run` checks, on every call, the input
        # names, OrtValue ownership and WebGPU graph capture, all fixed here (our one input by
        # name, numpy arrays, the CPU provider); a sixth of the Python time of a sample.
        inner = getattr(self._session, "_sess", None)
        self._run = inner.run if inner is not None and hasattr(inner, "run") \
            else self._session.run

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of one sample (uint8 pixels or float32 features, as the zoo
        declares)."""
        if pixels.dtype == np.uint8:
            buf = self._buf
            if buf is None or buf.shape[1:] != pixels.shape:
                buf = self._buf = np.empty((1, *pixels.shape), np.float32)
                self._feed = {self._input: buf}
            np.multiply(pixels, PIXEL_SCALE, out=buf[0], dtype=np.float32)
            feed = self._feed
        else:
            feed = {self._input: to_model_input(pixels[None])}
        probs: np.ndarray = self._run(self._outputs, feed, None)[0]
        first: np.ndarray = probs[0]
        return first


class LightEnsemble:
    """k light models on every sample, one after the other (a device has one core to give).

    Its output is the members' vote shares (`common.cascade_math.vote_shares`): argmax is
    the majority answer and max the agreement, so the forwarding rules apply unchanged."""

    def __init__(self, zoo: Zoo, names: tuple[str, ...]) -> None:
        self.name = "+".join(names)
        self._members = [LightModel(zoo, n) for n in names]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        probs = np.stack([m.predict(pixels)[None] for m in self._members])
        first: np.ndarray = vote_shares(probs)[0]
        return first


def light_stage(zoo: Zoo, names: tuple[str, ...]) -> LightModel | LightEnsemble:
    return LightModel(zoo, names[0]) if len(names) == 1 else LightEnsemble(zoo, names)
