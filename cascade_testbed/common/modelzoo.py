"""Find models, cards and the dataset of a model zoo (the embedded one by default).

A leaf module (stdlib and numpy): devices load their light model and samples through it, the
server its heavy model, the harness the cards. Sessions are built here so every process gets
the same onnxruntime threading settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from cascade_testbed.common.files import MIB, InputFileError, check_regular, read_text
from cascade_testbed.common.names import is_name, shown
from cascade_testbed.common.zoo_checks import ZooFormatError, check_arrays, check_card, data_dtype
from cascade_testbed.common.zoo_checks import to_model_input as to_model_input

EMBEDDED_ZOO = Path(__file__).resolve().parent / "zoo"
MAX_INDEX_BYTES = 4 * MIB
"""zoo.json and each model card."""
MAX_MODEL_BYTES = 4 * 1024 * MIB
"""A model file or the dataset."""


class ZooError(LookupError):
    """A model or dataset the scenario names is not in the zoo."""


@dataclass(frozen=True, slots=True)
class Dataset:
    """Samples [N, ...] and their labels, checked against the zoo's declared dtype (uint8
    pixels, which models take / 255, or float32 features, taken as they are)."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Zoo:
    root: Path
    index: dict[str, Any]
    _cards: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    """Cards read and checked so far: the server reads one per device that joins, and a
    card with its calibration curves is ~17 KB of JSON."""

    @property
    def tiers(self) -> dict[str, str]:
        """Default light model per device tier."""
        return dict(self.index["tiers"])

    @property
    def heavy(self) -> str:
        return str(self.index["heavy"])

    @property
    def models(self) -> frozenset[str]:
        """The models the zoo's index lists: the only names `card` looks up."""
        listed = self.index.get("models")
        if isinstance(listed, list):
            named = [*listed, self.index.get("heavy"), self.index.get("early_exit"),
                     *self.index.get("heavy_variants", ()),
                     *(m for t in self.tasks.values() if isinstance(t, dict)
                       for m in t.get("models", ())),
                     *dict(self.index.get("tiers", {})).values(),
                     *(m for ms in dict(self.index.get("ensembles", {})).values() for m in ms)]
            return frozenset(m for m in named if is_name(m))
        # An index without a list: the cards beside it (found by listing, never by joining).
        return frozenset(p.stem for p in self.root.glob("*.json")
                         if p.name != "zoo.json" and is_name(p.stem))

    def card(self, model: str) -> dict[str, Any]:
        """The model's card, read and checked once per process (callers must not change it)."""
        known = self._cards.get(model)
        if known is not None:
            return known
        if model not in self.models:
            raise ZooError(f"model {shown(model)} is not in the zoo {self.root}")
        try:
            card = json.loads(read_text(_inside(self.root, f"{model}.json", "model card"),
                                        MAX_INDEX_BYTES, "model card"))
        except (InputFileError, json.JSONDecodeError) as exc:
            raise ZooError(f"model {model}: {exc}") from None
        if not isinstance(card, dict):
            raise ZooError(f"model {model}: its card is not a JSON object")
        try:
            check_card(model, card)
        except ZooFormatError as exc:
            raise ZooError(f"{self.root}: {exc}") from None
        self._cards[model] = card
        return card

    def model_path(self, model: str) -> Path:
        card = self.card(model)
        if "file" not in card:
            raise ZooError(f"model {model} is not a single file (its card has no `file`; an "
                           "early-exit model runs only on the server)")
        return self.file(card["file"], f"model {model}")

    def file(self, name: object, what: str) -> Path:
        """A file the index or a card names: a regular file directly in the zoo's folder."""
        if not is_name(name):
            raise ZooError(f"{what}: file {shown(name)} must be a plain file name in the zoo")
        try:
            return check_regular(_inside(self.root, str(name), what), MAX_MODEL_BYTES, what)
        except InputFileError as exc:
            raise ZooError(str(exc)) from None

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Tasks on the dataset (zoo.json `tasks`): each relabels the samples as label mod
        `label_mod` and lists its models; the dataset's own labels are the task "" (and any
        task whose `label_mod` is the number of classes)."""
        tasks = self.index.get("tasks")
        return dict(tasks) if isinstance(tasks, dict) else {}

    def label_mod(self, task: str) -> int | None:
        """The modulus a task takes labels by; None for the dataset's own labels."""
        if not task or task == self.canonical_task(""):
            return None
        spec = self.tasks.get(task)
        if not isinstance(spec, dict) or not isinstance(spec.get("label_mod"), int) \
                or spec["label_mod"] < 2:
            raise ZooError(f"task {shown(task)} is not in the zoo {self.root} (zoo.json tasks "
                           "with label_mod >= 2)")
        return int(spec["label_mod"])

    def task_of(self, model: str) -> str:
        """The task a model answers: its card's `task`, else the zoo's task that lists it,
        else the dataset's own labels (`canonical_task("")`)."""
        task = self.card(model).get("task")
        if isinstance(task, str) and task:
            return task
        listed = next((t for t, spec in self.tasks.items() if isinstance(spec, dict)
                       and model in spec.get("models", ())), "")
        return listed or self.canonical_task("")

    def canonical_task(self, task: str) -> str:
        """The name a task goes by: "" (the dataset's own labels) is the zoo's task whose
        `label_mod` is the number of classes, if it has one."""
        if task:
            return task
        return next((t for t, spec in self.tasks.items() if isinstance(spec, dict)
                     and spec.get("label_mod") == self.classes), "")

    @property
    def classes(self) -> int | None:
        """Classes the index's dataset declares (labels are checked against it)."""
        classes = self.index.get("dataset", {}).get("classes")
        return classes if isinstance(classes, int) and not isinstance(classes, bool) else None

    def dataset(self, split: str = "test") -> Dataset:
        meta = self.index.get("dataset")
        if not isinstance(meta, dict):
            raise ZooError(f"{self.root}/zoo.json has no dataset table")
        try:
            dtype = data_dtype(meta)
        except ZooFormatError as exc:
            raise ZooError(f"{self.root}: {exc}") from None
        return _load_dataset(self.file(meta.get("file"), "dataset"), split, dtype, self.classes)


def _inside(root: Path, name: str, what: str) -> Path:
    """`root/name` when it is in the zoo's folder once links are followed: a file of the zoo
    that is a symlink to a file elsewhere (say, one only the operator may read) is refused
    rather than loaded or echoed in an error."""
    path = root / name
    try:
        real, home = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise ZooError(f"{what} {path}: {exc}") from None
    if real.parent != home:
        raise ZooError(f"{what} {path} is a link that leads outside the zoo folder; zoo files "
                       "must be in it")
    return path


@cache
def _load_dataset(path: Path, split: str, dtype: str, classes: int | None) -> Dataset:
    """Cached: loaded once per process, or once in the forkserver for all devices. Checked
    against the declared dtype and classes, so a wrong file fails here with one sentence."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if f"x_{split}" not in data or f"y_{split}" not in data:
                raise ZooError(f"dataset {path.name} has no split {split!r} (needs arrays "
                               f"x_{split} and y_{split}; it has {sorted(data.files)[:8]})")
            x, y = data[f"x_{split}"], data[f"y_{split}"]
    except (OSError, ValueError) as exc:  # not an npz, or object arrays (pickles)
        raise ZooError(f"dataset {path.name}: cannot read it as an .npz of arrays ({exc})") \
            from None
    try:
        check_arrays(x, y, dtype, classes, f"dataset {path.name} split {split}")
    except ZooFormatError as exc:
        raise ZooError(str(exc)) from None
    x.setflags(write=False)
    y.setflags(write=False)
    return Dataset(x=x, y=y)


def open_zoo(root: str | Path | None = None) -> Zoo:
    """The zoo in `root` (None: the embedded one), opened once per process and folder: the
    forkserver opens the embedded zoo once for every device it forks."""
    return _open_zoo(Path(root) if root else EMBEDDED_ZOO)


@cache
def _open_zoo(base: Path) -> Zoo:
    index_path = base / "zoo.json"
    if not index_path.is_file():
        raise ZooError(f"{base} is not a model zoo (no zoo.json)")
    _inside(base, "zoo.json", "zoo index")
    try:
        index = json.loads(read_text(index_path, MAX_INDEX_BYTES, "zoo index"))
    except (InputFileError, json.JSONDecodeError) as exc:
        raise ZooError(f"{base}: {exc}") from None
    if not isinstance(index, dict):
        raise ZooError(f"{index_path} is not a JSON object")
    return Zoo(root=base, index=index)


def open_session(path: Path, intra_op_threads: int = 1, inter_op_threads: int = 1) -> Any:
    """An onnxruntime CPU session with explicit threads and no spinning.

    Spinning threads in 40 device processes would oversubscribe two cores, so devices always
    use 1/1; the server may ask for more.
    """
    import onnxruntime as ort  # deferred: the harness reads cards without loading the runtime

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
