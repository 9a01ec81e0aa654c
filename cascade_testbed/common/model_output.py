"""Which output of a zoo model holds its class probabilities, and how to read it.

A model card's `output` says it: `name` (the ONNX output to read) and `softmax` (true when that
output holds logits, to which a softmax is applied). `testbed zoo init` writes both; a card
without them (the embedded zoo's, zoos made before) reads the model's first output as it is.
Exporters differ: skl2onnx puts `label` first and `probabilities` second, a sequence of
{class: probability} maps under ZipMap (onnxruntime returns a list of dicts) or a float
tensor without it; `torch.onnx.export` of a classifier usually ends in logits.

A leaf module (numpy only): the device's light model, the server's heavy model, the harness's
checks and `zoo init` read outputs through it, so all of them see the same probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

PROBABILITY_NAMES: Final = ("probabilities", "probability", "probs", "prob", "proba",
                            "output_probability", "predict_proba", "softmax", "scores")
"""Output names taken for class probabilities (compared lower-case), in order of preference."""


class OutputError(ValueError):
    """A model output that cannot be read as class probabilities (one sentence)."""


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What a card says about its model's output: the name to read (None: the first output)
    and whether to apply a softmax (logits)."""

    name: str | None = None
    softmax: bool = False


def card_output(card: Mapping[str, Any]) -> OutputSpec:
    """The card's choice. Only a card that records `output.softmax` (written by `zoo init`)
    chooses by name; older cards read the first output, without a softmax, as they always
    did."""
    out = card.get("output")
    if not isinstance(out, Mapping) or "softmax" not in out:
        return OutputSpec()
    name, softmax = out.get("name"), out.get("softmax")
    if not isinstance(name, str) or not name or not isinstance(softmax, bool):
        raise OutputError("card output must have a non-empty `name` and a true/false "
                          "`softmax`")
    return OutputSpec(name, softmax)


def is_zipmap(type_name: str) -> bool:
    """An output of {class: probability} maps (skl2onnx's ZipMap): `seq(map(...))`."""
    return type_name.startswith("seq(map(")


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """The output of an onnxruntime session to read, and how to turn it into probabilities."""

    name: str
    softmax: bool
    zipmap: bool
    shape: tuple[int | None, ...]
    """Its declared shape (None for named or unknown axes; () for a ZipMap)."""

    def probabilities(self, raw: Any) -> np.ndarray:
        """What the session returned for this output as float32 [batch, classes]."""
        probs = zipmap_array(raw) if self.zipmap else np.asarray(raw, dtype=np.float32)
        return softmax(probs) if self.softmax else probs


def session_output(session: Any, spec: OutputSpec, model: str) -> ModelOutput:
    """The output of `session` a card's `spec` names (the first one by default)."""
    outputs = session.get_outputs()
    if spec.name is None:
        chosen = outputs[0]
    else:
        chosen = next((o for o in outputs if o.name == spec.name), None)
        if chosen is None:
            raise OutputError(f"model {model}: its card reads output {spec.name!r}, which the "
                              f"model does not have (outputs: {describe(outputs)})")
    return describe_output(chosen, spec.softmax)


def describe_output(output: Any, softmax: bool) -> ModelOutput:
    zipmap = is_zipmap(str(output.type))
    shape = () if zipmap else tuple(d if isinstance(d, int) else None for d in output.shape)
    return ModelOutput(str(output.name), softmax, zipmap, shape)


def describe(outputs: Sequence[Any]) -> str:
    """A model's outputs as `name (type, shape)`, for errors that ask to choose one."""
    return ", ".join(f"{o.name} ({o.type}"
                     + ("" if is_zipmap(str(o.type)) else
                        f" {[d if isinstance(d, int) else None for d in o.shape]}") + ")"
                     for o in outputs)


def probability_candidates(outputs: Sequence[Any]) -> list[Any]:
    """Outputs that may hold class probabilities, best first: those named like probabilities
    (`PROBABILITY_NAMES`), then float tensors [batch, classes] with more than one class, then
    ZipMap outputs."""
    def rank(o: Any) -> int | None:
        name, kind = str(o.name).lower(), str(o.type)
        if name in PROBABILITY_NAMES and (kind == "tensor(float)" or is_zipmap(kind)):
            return PROBABILITY_NAMES.index(name)
        if kind == "tensor(float)" and len(o.shape) == 2 and not (
                isinstance(o.shape[1], int) and o.shape[1] < 2):
            return len(PROBABILITY_NAMES)
        if is_zipmap(kind):
            return len(PROBABILITY_NAMES) + 1
        return None

    ranked = [(r, i, o) for i, o in enumerate(outputs) if (r := rank(o)) is not None]
    return [o for _, _, o in sorted(ranked, key=lambda t: (t[0], t[1]))]


def zipmap_array(raw: object) -> np.ndarray:
    """A ZipMap output (a list of {class: probability} dicts, one per sample) as float32
    [batch, classes], columns in the order of the sorted class keys (sklearn's `classes_`
    order, so column i is class i for labels 0..classes-1)."""
    if not isinstance(raw, list) or not all(isinstance(r, Mapping) for r in raw):
        raise OutputError("a ZipMap output must be a list of {class: probability} maps")
    if not raw:
        return np.zeros((0, 0), np.float32)
    keys = sorted(raw[0])
    if any(sorted(r) != keys for r in raw):
        raise OutputError("the ZipMap maps of one batch do not have the same classes")
    return np.array([[r[k] for k in keys] for r in raw], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    z: np.ndarray = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z
