"""The device's light stage: one model, or an ensemble voting (cascade of ensembles); each an
onnxruntime session with one intra-op and one inter-op thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cascade_testbed.common.cascade_math import vote_shares
from cascade_testbed.common.model_output import card_output, session_output
from cascade_testbed.common.modelzoo import Zoo, open_session, to_model_input
from cascade_testbed.common.zoo_checks import PIXEL_SCALE

_PRELOADED: dict[str, Any] = {}
"""Sessions made in the forkserver before it forks the devices, by model file: a device of
that model starts without making its own (~20 ms of CPU each, 1,000 devices on two cores)."""


def preload(zoo: Zoo) -> None:
    """Open a session for every light tier of `zoo` and run it once; devices forked after
    this use them (`LightModel`). One intra-op and one inter-op thread: no pool threads exist
    at the fork."""
    for name in zoo.tiers.values():
        path = str(zoo.model_path(name))
        if path not in _PRELOADED:
            session = open_session(Path(path), 1, 1)
            x = np.zeros([d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape],
                         np.float32)
            session.run(None, {session.get_inputs()[0].name: x})
            _PRELOADED[path] = session


class LightModel:
    """One session. Its input array and feed are made once and filled in place per sample
    (`to_model_input`'s arithmetic, without allocating two arrays and a dict each time)."""

    def __init__(self, zoo: Zoo, name: str) -> None:
        self.name = name
        path = zoo.model_path(name)
        self._session = _PRELOADED.get(str(path)) or open_session(path, 1, 1)
        self._input = self._session.get_inputs()[0].name
        # The output its card names (zoo init picks it: skl2onnx puts `label` first), read as
        # it is unless it is a ZipMap's maps or logits.
        self._output = session_output(self._session, card_output(zoo.card(name)), name)
        self._outputs = [self._output.name]
        self._as_is = not (self._output.zipmap or self._output.softmax)
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
        raw = self._run(self._outputs, feed, None)[0]
        probs: np.ndarray = raw if self._as_is else self._output.probabilities(raw)
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
