"""`testbed zoo init`: a model zoo from a user's ONNX files and dataset, in the embedded zoo's
format (docs/zoo.md), so a scenario runs them with `zoo = "DIR"`.

Everything is checked and measured before anything is written: the dataset against the zoo
format (`common.zoo_checks`) and every model's input shape; the output holding each model's
class probabilities is picked (`--output`, else by name or shape, `common.model_output`) and
logits are put through a softmax (`--logits`, or when the values cannot be probabilities),
which its card records for devices and the server. Then the models and the dataset are
copied, and the index and one card per model written, with accuracy, the threshold curves of
each light model against each heavy one and latency measured on this host (onnxruntime, one
thread, as devices and the server run).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from cascade_testbed.common.model_output import (
    ModelOutput,
    OutputError,
    describe,
    describe_output,
    probability_candidates,
)
from cascade_testbed.common.model_output import softmax as softmax_rows
from cascade_testbed.common.modelzoo import open_session
from cascade_testbed.common.names import BadName, check_name
from cascade_testbed.common.zoo_checks import (
    DATA_DTYPES,
    ZooFormatError,
    check_arrays,
    check_fits,
    model_classes,
    to_model_input,
)

SPLITS: Final = ("val", "test")
THRESHOLDS: Final = tuple(round(0.025 * i, 3) for i in range(41))
"""The embedded cards' grid: 0, 0.025, ..., 1."""
LIGHT_BATCHES: Final = (1,)
"""Devices run one sample at a time."""
HEAVY_BATCHES: Final = (1, 2, 4, 8, 16, 32, 64)
"""Batch 32 is what `common.batch_profiles` scales a heavy model's emulated latency by."""
PREDICT_BATCH: Final = 256


class ZooInitError(ValueError):
    """Inputs `zoo init` cannot build a zoo from (one sentence, shown as is)."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    role: str  # "light" | "heavy"


def model_files(lights: Sequence[str], heavies: Sequence[str]) -> list[ModelFile]:
    """`PATH` or `NAME=PATH` arguments as named models; a name taken from a file name is
    checked like any other (it becomes a file of the zoo and a label in logs)."""
    out: list[ModelFile] = []
    for role, args in (("light", lights), ("heavy", heavies)):
        for arg in args:
            name, eq, path = arg.partition("=")
            if not eq:
                name, path = Path(arg).stem, arg
            try:
                check_name(name, f"model name of {arg[:80]!r}"
                           + ("" if eq else " (taken from the file name; give NAME=PATH)"))
            except BadName as exc:
                raise ZooInitError(str(exc)) from None
            out.append(ModelFile(name, Path(path), role))
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ZooInitError(f"model names must be unique (twice: {', '.join(dup)}); give "
                           "NAME=PATH")
    if not any(m.role == "light" for m in out) or not any(m.role == "heavy" for m in out):
        raise ZooInitError("a zoo needs at least one --light and one --heavy model")
    return out


def threshold_curve(light: np.ndarray, heavy: np.ndarray, y: np.ndarray,
                    thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, float]]:
    """Forward rate and cascade accuracy when samples whose light confidence is < t go to the
    heavy model (the `confidence` rule), per threshold t; as in scripts/build_zoo.py."""
    conf = light.max(axis=1)
    light_ok = light.argmax(axis=1) == y
    heavy_ok = heavy.argmax(axis=1) == y
    rows = []
    for t in thresholds:
        fwd = conf < t
        rows.append({"threshold": float(t), "forward_rate": round(float(fwd.mean()), 4),
                     "accuracy": round(float(np.where(fwd, heavy_ok, light_ok).mean()), 4)})
    return rows


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return round(float((probs.argmax(axis=1) == y).mean()), 4)


def is_probabilities(probs: np.ndarray) -> bool:
    """Rows of values in [0, 1] that sum to 1: class probabilities, not logits."""
    return bool(probs.ndim == 2 and np.isfinite(probs).all() and (probs >= -1e-6).all()
                and (probs <= 1 + 1e-6).all()
                and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3))


def output_choices(args: Sequence[str], models: Sequence[ModelFile]) -> dict[str, str]:
    """`--output` arguments as model name -> output name: `NAME` for every model, or
    `MODEL=NAME` for one (which wins over a `NAME` for all)."""
    names = {m.name for m in models}
    every: str | None = None
    chosen: dict[str, str] = {}
    for arg in args:
        model, eq, output = arg.partition("=")
        if not eq:
            every = arg
            continue
        if model not in names:
            raise ZooInitError(f"--output {arg[:80]!r}: there is no model {model[:40]!r} "
                               f"(models: {', '.join(sorted(names))})")
        chosen[model] = output
    out = {}
    for m in models:
        picked = chosen.get(m.name, every)
        if picked is not None:
            out[m.name] = picked
    return out


def load_data(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """The splits of a dataset .npz (x_val, y_val, x_test, y_test) and its dtype."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for s in SPLITS for k in (f"x_{s}", f"y_{s}") if k not in data]
            if missing:
                raise ZooInitError(f"dataset {path}: needs arrays x_val, y_val, x_test, "
                                   f"y_test (missing {', '.join(missing)})")
            splits = {s: (data[f"x_{s}"], data[f"y_{s}"]) for s in SPLITS}
    except (OSError, ValueError) as exc:
        raise ZooInitError(f"dataset {path}: cannot read it as an .npz of arrays ({exc})") \
            from None
    dtype = splits["test"][0].dtype.name
    if dtype not in DATA_DTYPES:
        raise ZooInitError(f"dataset {path}: samples must be uint8 (pixels 0-255, scaled by "
                           f"1/255) or float32 (used as they are); got {dtype}")
    return splits, dtype


@dataclass
class _Measured:
    model: ModelFile
    session: Any
    input: dict[str, Any]
    output: dict[str, Any]
    probs: dict[str, np.ndarray]


def _open(model: ModelFile) -> Any:
    if not model.path.is_file():
        raise ZooInitError(f"model {model.name}: {model.path} is not a file")
    try:
        return open_session(model.path, 1, 1)
    except Exception as exc:  # onnxruntime raises its own types for a bad file
        raise ZooInitError(f"model {model.name}: {model.path} is not an ONNX model "
                           f"onnxruntime can run ({str(exc).splitlines()[0][:160]})") from None


def _predict(session: Any, name: str, output: ModelOutput, x: np.ndarray) -> np.ndarray:
    parts = [output.probabilities(session.run([output.name],
                                              {name: to_model_input(x[i:i + PREDICT_BATCH])})[0])
             for i in range(0, len(x), PREDICT_BATCH)]
    return np.concatenate(parts)


def _choose_output(session: Any, model: str, name: str | None) -> Any:
    """The output to read: the one named (`--output`), else the best of
    `probability_candidates` (named like probabilities, else a float [batch, classes] tensor,
    else a ZipMap)."""
    outputs = session.get_outputs()
    if name is not None:
        found = next((o for o in outputs if o.name == name), None)
        if found is None:
            raise ZooInitError(f"model {model}: has no output {name!r} (--output); its "
                               f"outputs: {describe(outputs)}")
        return found
    candidates = probability_candidates(outputs)
    if not candidates:
        raise ZooInitError(f"model {model}: no output looks like class probabilities (a float "
                           "[batch, classes] tensor or a ZipMap); choose one with --output "
                           f"NAME (or --output {model}=NAME); its outputs: {describe(outputs)}")
    return candidates[0]


def _measure(model: ModelFile, splits: dict[str, tuple[np.ndarray, np.ndarray]],
             output_name: str | None = None, logits: bool = False) -> _Measured:
    session = _open(model)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise ZooInitError(f"model {model.name}: needs exactly one float32 input (has "
                           f"{[(i.name, i.type) for i in inputs]})")
    shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
    try:
        for split, (x, _) in splits.items():
            check_fits(x.shape[1:], inputs[0].shape, model.name, f"dataset split {split}")
    except ZooFormatError as exc:
        raise ZooInitError(str(exc)) from None
    output = describe_output(_choose_output(session, model.name, output_name), False)
    choose = (f"choose another with --output NAME (or --output {model.name}=NAME); its "
              f"outputs: {describe(session.get_outputs())}")
    try:
        raw = {s: _predict(session, inputs[0].name, output, x) for s, (x, _) in splits.items()}
    except OutputError as exc:
        raise ZooInitError(f"model {model.name}: output {output.name}: {exc}; {choose}") \
            from None
    except Exception as exc:
        raise ZooInitError(f"model {model.name} fails on the dataset: "
                           f"{str(exc).splitlines()[0][:160]}") from None
    if any(p.ndim != 2 or p.shape[1] < 2 or not np.isfinite(p).all() for p in raw.values()):
        raise ZooInitError(f"model {model.name}: output {output.name} is not class "
                           "probabilities or logits (finite values [batch, classes], at least "
                           f"2 classes); {choose}")
    # Logits when told, or when the values cannot be probabilities (outside [0, 1], rows not
    # summing to 1): a softmax makes them probabilities, and the card records it.
    softmax = logits or not all(is_probabilities(p) for p in raw.values())
    probs = {s: softmax_rows(p) for s, p in raw.items()} if softmax else raw
    out_shape = list(output.shape) if not output.zipmap else [None, raw["test"].shape[1]]
    return _Measured(model, session, {"name": inputs[0].name, "shape": shape},
                     {"name": output.name, "shape": out_shape, "softmax": softmax}, probs)


def latency_ms(session: Any, input_name: str, x: np.ndarray, batches: Sequence[int],
               reps: int, outputs: list[str] | None = None) -> dict[str, float]:
    """Median wall time of one run per batch size (real samples, repeated to fill a batch),
    after warm-up; of the `outputs` devices and the server read (all when None)."""
    out = {}
    for b in batches:
        batch = to_model_input(np.resize(x, (b, *x.shape[1:])))
        feed = {input_name: batch}
        for _ in range(5):
            session.run(outputs, feed)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            session.run(outputs, feed)
            times.append(time.perf_counter() - t)
        out[str(b)] = round(float(np.median(times)) * 1e3, 4)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_zoo(out: Path, lights: Sequence[str], heavies: Sequence[str], data: Path,
              reps: int = 50, outputs: Sequence[str] = (), logits: bool = False
              ) -> dict[str, Any]:
    """Check, measure, then write the zoo in `out` (which must be new or empty); returns the
    index. `outputs`: `--output` arguments (`NAME` or `MODEL=NAME`, the output holding the
    class probabilities); `logits`: apply a softmax to every model's output. `ZooInitError`
    with one sentence for anything that does not fit."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooInitError(f"{out} exists and is not an empty folder; a zoo is written into a "
                           "new one")
    models = model_files(lights, heavies)
    chosen = output_choices(outputs, models)
    data_name = Path(data).stem
    if Path(data).suffix != ".npz":
        raise ZooInitError(f"dataset {data}: must be an .npz file (x_val, y_val, x_test, "
                           "y_test)")
    try:
        check_name(data_name, "dataset name (from its file name)")
    except BadName as exc:
        raise ZooInitError(str(exc)) from None
    if data_name in {m.name for m in models}:
        raise ZooInitError(f"the dataset and a model are both called {data_name}")
    splits, dtype = load_data(Path(data))
    measured = [_measure(m, splits, chosen.get(m.name), logits) for m in models]
    classes = {model_classes(m.output["shape"]) or m.probs["test"].shape[1] for m in measured}
    if len(classes) != 1:
        raise ZooInitError(f"the models do not agree on the number of classes ({sorted(classes)})")
    n_classes = classes.pop()
    try:
        for split, (x, y) in splits.items():
            check_arrays(x, y, dtype, n_classes, f"dataset {Path(data).name} split {split}")
    except ZooFormatError as exc:
        raise ZooInitError(str(exc)) from None
    sample = splits["test"][0][:64]
    for m in measured:
        sizes = LIGHT_BATCHES if m.model.role == "light" else HEAVY_BATCHES
        m.output["latency"] = latency_ms(m.session, m.input["name"], sample, sizes,
                                         reps * 4 if m.model.role == "light" else reps,
                                         [m.output["name"]])
    heavy = [m for m in measured if m.model.role == "heavy"]
    default_heavy = heavy[0].model.name
    y_val = splits["val"][1]
    scale = "uint8 pixels / 255" if dtype == "uint8" else "float32 features as they are"
    versions = _host()
    cards: dict[str, dict[str, Any]] = {}
    for m in measured:
        card: dict[str, Any] = {
            "name": m.model.name, "role": m.model.role,
            "tier": m.model.name if m.model.role == "light" else None,
            "arch": "user model (testbed zoo init)", "file": f"{m.model.name}.onnx",
            "sha256": _sha256(m.model.path), "size_bytes": m.model.path.stat().st_size,
            "input": {**m.input, "dtype": "float32", "data_dtype": dtype, "scale": scale},
            "output": {k: v for k, v in m.output.items() if k != "latency"},
            "accuracy": {s: accuracy(m.probs[s], splits[s][1]) for s in SPLITS},
            "latency_ms_p50": m.output["latency"],
            "measured_on": versions,
        }
        if m.model.role == "light":
            curves = {h.model.name: threshold_curve(m.probs["val"], h.probs["val"], y_val)
                      for h in heavy}
            card["threshold_curve_val"] = curves[default_heavy]
            card["threshold_curves_val"] = curves
        cards[m.model.name] = card
    by_cost = sorted(heavy, key=lambda h: h.output["latency"]["32"])
    index = {
        "dataset": {"file": Path(data).name, "name": data_name, "dtype": dtype,
                    "classes": n_classes, "source": "testbed zoo init",
                    "splits": {s: len(splits[s][1]) for s in SPLITS}},
        "tiers": {m.model.name: m.model.name for m in measured if m.model.role == "light"},
        "heavy": default_heavy,
        "models": [m.model.name for m in measured],
        "heavy_variants": [h.model.name for h in by_cost],
    }
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data, out / Path(data).name)
    for m in measured:
        shutil.copyfile(m.model.path, out / f"{m.model.name}.onnx")
        (out / f"{m.model.name}.json").write_text(json.dumps(cards[m.model.name], indent=2)
                                                  + "\n")
    (out / "zoo.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def _host() -> dict[str, Any]:
    import onnxruntime as ort

    return {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "python": platform.python_version(), "onnxruntime": ort.__version__, "threads": 1,
            "latency": "median per batch size after 5 warm-up runs, real samples"}
