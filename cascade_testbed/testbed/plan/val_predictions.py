"""Per-sample predictions of zoo models on the validation split, for planning and calibration.

The planner and the agreement calibration replay these instead of running a cascade, as
CascadeServe's planner replays its stored `pred,label,cert` files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cascade_testbed.common.model_output import card_output, session_output
from cascade_testbed.common.modelzoo import Zoo, open_session, to_model_input


@dataclass(frozen=True)
class ValPredictions:
    labels: np.ndarray
    probs: dict[str, np.ndarray]
    """Model name -> class probabilities [N, classes]."""

    def correct(self, model: str) -> np.ndarray:
        return np.asarray(self.probs[model].argmax(axis=1) == self.labels)

    def confidence(self, model: str) -> np.ndarray:
        return np.asarray(self.probs[model].max(axis=1))


def val_predictions(zoo: Zoo, models: Iterable[str], split: str = "val") -> ValPredictions:
    data = zoo.dataset(split)
    x = to_model_input(data.x)
    probs = {}
    for name in dict.fromkeys(models):
        session = open_session(zoo.model_path(name), 1, 1)
        output = session_output(session, card_output(zoo.card(name)), name)
        probs[name] = output.probabilities(
            session.run([output.name], {session.get_inputs()[0].name: x})[0])
    return ValPredictions(labels=np.asarray(data.y), probs=probs)
