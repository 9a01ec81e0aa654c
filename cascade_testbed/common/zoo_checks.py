"""What a zoo's cards and dataset must hold, checked when they are loaded. Pure (numpy only, no
files): `common.modelzoo` reads, this module judges, so a wrong zoo fails at load with one
sentence instead of a run that quietly forwards everything or sends tensors the server refuses.

Data format (zoo.json `dataset.dtype`, said explicitly so nothing is guessed from the values):
- "uint8": pixels 0-255; models take them scaled by 1/255 once (on the device for the light
  model, on the server for the heavy one, which receives the uint8 pixels as they are).
- "float32": features used as they are, on both sides; sent over the wire as float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, NoReturn

import numpy as np

from cascade_testbed.common.model_output import OutputError, card_output

DATA_DTYPES: Final = {"uint8": "pixels 0-255, models take them / 255",
                      "float32": "features, used as they are"}
ROLES: Final = ("light", "heavy", "early_exit")
PIXEL_SCALE: Final = np.float32(1.0 / 255.0)


class ZooFormatError(ValueError):
    """A card or dataset that does not hold what the zoo format asks (one sentence)."""


def _fail(what: str) -> NoReturn:
    raise ZooFormatError(what)


def _unit(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and 0 <= value <= 1


def check_curve(rows: object, where: str) -> None:
    """A threshold curve: rows {threshold, forward_rate, accuracy} in [0, 1], thresholds
    increasing. Empty is an error: without a curve a device would start at threshold 1.0."""
    if not isinstance(rows, list) or not rows:
        raise ZooFormatError(f"{where} must be a non-empty list of rows with threshold, "
                             "forward_rate and accuracy")
    last = -1.0
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not all(
                _unit(row.get(k)) for k in ("threshold", "forward_rate", "accuracy")):
            _fail(f"{where}[{i}] must have threshold, forward_rate and accuracy in [0, 1]")
        if row["threshold"] <= last:
            _fail(f"{where}: thresholds must increase (row {i})")
        last = float(row["threshold"])


def check_card(model: str, card: Mapping[str, Any]) -> None:
    """A model card as `Zoo.card` hands it out: a role, validation accuracy, and for a light
    model the cascade curve(s) its devices' thresholds come from."""
    role = card.get("role")
    if role not in ROLES:
        _fail(f"model {model}: card role must be one of {ROLES} (got {str(role)[:40]!r})")
    accuracy = card.get("accuracy")
    if not isinstance(accuracy, Mapping) or not _unit(accuracy.get("val")):
        _fail(f"model {model}: card needs accuracy.val in [0, 1]")
    try:
        card_output(card)
    except OutputError as exc:
        _fail(f"model {model}: {exc}")
    if "stages" in card or role == "early_exit":
        check_stages(model, card.get("stages"))
    if role != "light":
        return
    if "threshold_curve_val" not in card:
        _fail(f"model {model}: a light model's card needs threshold_curve_val (forward rate "
              "and cascade accuracy per threshold; `testbed zoo init` writes it)")
    check_curve(card["threshold_curve_val"], f"model {model}: threshold_curve_val")
    curves = card.get("threshold_curves_val", {})
    if not isinstance(curves, Mapping):
        _fail(f"model {model}: threshold_curves_val must map heavy models to curves")
    for heavy, rows in curves.items():
        check_curve(rows, f"model {model}: threshold_curves_val.{str(heavy)[:64]}")


MAX_STAGES: Final = 16
REFERENCE_BATCH: Final = "32"
"""The batch size whose measured latency splits an early-exit model's profile over its
stages (`common.batch_profiles`)."""


def check_stages(model: str, stages: object) -> None:
    """An early-exit card's `stages`: a list of 1-16 tables, each with the file of its ONNX
    part and its measured latency per batch size (at least at batch 32), so the server can
    open and profile it instead of failing mid-start with a TypeError."""
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        _fail(f"model {model}: card stages must be a list of 1 to {MAX_STAGES} stage tables")
    for i, stage in enumerate(stages):
        where = f"model {model}: stages[{i}]"
        if not isinstance(stage, Mapping):
            _fail(f"{where} must be a table with file and latency_ms_p50")
        if not isinstance(stage.get("file"), str) or not stage["file"]:
            _fail(f"{where}.file must be the file name of the stage's ONNX model")
        lat = stage.get("latency_ms_p50")
        if not isinstance(lat, Mapping) or REFERENCE_BATCH not in lat or not all(
                isinstance(b, str) and b.isdigit() and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for b, v in lat.items()):
            _fail(f"{where}.latency_ms_p50 must map batch sizes (\"1\", ..., at least "
                  f"\"{REFERENCE_BATCH}\") to positive milliseconds")


def data_dtype(dataset: Mapping[str, Any]) -> str:
    """The dtype zoo.json's `dataset` declares."""
    dtype = dataset.get("dtype")
    if dtype not in DATA_DTYPES:
        _fail("zoo.json dataset.dtype must be " + " or ".join(
            f"{d!r} ({why})" for d, why in DATA_DTYPES.items()) + f", got {str(dtype)[:40]!r}")
    return str(dtype)


def check_arrays(x: np.ndarray, y: np.ndarray, dtype: str, classes: int | None,
                 where: str) -> None:
    """Samples and labels of one split against what the zoo declares."""
    if x.dtype != np.dtype(dtype):
        hint = (" (float32 values already scaled to 0-1 would be divided by 255 again: "
                "declare dataset.dtype = \"float32\", or store the uint8 pixels)"
                if dtype == "uint8" and x.dtype.kind == "f" else "")
        _fail(f"{where}: samples are {x.dtype}, the zoo declares {dtype}{hint}")
    if x.ndim < 2 or len(x) == 0:
        _fail(f"{where}: samples must be an array [N, ...] with N >= 1 (got shape "
              f"{list(x.shape)})")
    if y.shape != (len(x),):
        _fail(f"{where}: labels must be one per sample (shape {list(y.shape)} for "
              f"{len(x)} samples)")
    if y.dtype.kind not in "iu":
        _fail(f"{where}: labels must be integers (got {y.dtype})")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        _fail(f"{where}: samples have NaN or inf values")
    low, high = int(y.min()), int(y.max())
    if low < 0 or (classes is not None and high >= classes):
        _fail(f"{where}: labels must be in [0, {classes}) (got {low}..{high})")


def check_fits(sample_shape: Sequence[int], model_input: Sequence[object], model: str,
               where: str) -> None:
    """One sample's shape against the model's input shape (its first axis is the batch; a
    named or unknown axis takes any size)."""
    dims = list(model_input)[1:]
    fits = len(dims) == len(sample_shape) and all(
        not isinstance(d, int) or d == s for d, s in zip(dims, sample_shape, strict=True))
    if not fits:
        shown = [d if isinstance(d, int) else None for d in dims]
        _fail(f"{where}: a sample has shape {list(sample_shape)}, model {model} takes "
              f"{shown} (its input is [batch, *{shown}])")


def model_classes(output_shape: Sequence[object]) -> int | None:
    """Classes of a [batch, classes] output; None when the axis is not fixed."""
    last = list(output_shape)[-1] if output_shape else None
    return last if isinstance(last, int) else None


def to_model_input(x: np.ndarray) -> np.ndarray:
    """Samples as the float32 input models take: uint8 pixels scaled by 1/255 once, float32
    features as they are (the same rule as the server's `model_input`)."""
    if x.dtype == np.uint8:
        out: np.ndarray = x.astype(np.float32) * PIXEL_SCALE
        return out
    if x.dtype == np.float32:
        return x
    raise ZooFormatError(f"samples must be uint8 or float32 (got {x.dtype})")
