"""Build the embedded model zoo from scikit-learn's digits: data split, models, cards.

Deterministic (seeded data corruption and training). Needs the `zoo` extra (torch, scikit-learn,
onnx, onnxscript): `pip install -e '.[zoo]'`, then `python scripts/build_zoo.py`. The outputs in
common/zoo/ are committed, so running the testbed never needs this script or its packages.

Why a noisy variant: on clean digits a small MLP already reaches ~97%, which leaves the heavy
model nothing to add and the cascade nothing to decide. Shifts, pixel noise and occlusions open
a gap of 8-30 points between the device tiers and the server's CNN.

What it builds (docs/zoo.md has the tables):
- one light MLP per device tier (`light-low`, `light-mid`, `light-high`) and, per tier, two
  more of the same architecture trained with other seeds (`-b`: SEED+1, `-c`: SEED+2) that
  make up the tier's ensemble;
- three heavy CNNs for model switching, cheapest first: `heavy-cnn-lite`, `heavy-cnn` (the
  default), `heavy-cnn-xl`;
- an early-exit CNN `heavy-ee` in three stages, one ONNX file per stage.

Training runs in `--jobs` worker processes (one torch thread each; every model is seeded on its
own, so the result does not depend on the number of jobs or the order); accuracy and latency
are measured afterwards in this process, one model at a time, on an otherwise idle box.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

ZOO = Path(__file__).resolve().parents[1] / "cascade_testbed" / "common" / "zoo"
SEED = 20230623  # MultiTASC's arXiv date; any fixed value works
ENSEMBLE_SEEDS = {"b": SEED + 1, "c": SEED + 2}  # the tier's base model is trained with SEED
NOISE_SIGMA = 3.0  # on the digits' 0..16 pixel scale
OCCLUSION_P = 0.3
COPIES = {"train": 30, "val": 6, "test": 6}
SPLIT = {"train": 1077, "val": 360}  # the rest (360 originals) is the test split
HEAVY_BATCHES = [1, 2, 4, 8, 16, 32, 64]
MAX_FILE_BYTES = 2 * 1024 * 1024  # every committed file stays under 2 MiB
LATENCY_ROUNDS = 3


def corrupt(images: np.ndarray, labels: np.ndarray, copies: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shift by up to one pixel, add Gaussian noise, blank a 2x2 patch; quantise to uint8."""
    out = np.empty((copies * len(images), 8, 8), dtype=np.float32)
    k = 0
    for _ in range(copies):
        for img in images:
            dx, dy = rng.integers(-1, 2, size=2)
            padded = np.zeros((10, 10), np.float32)
            padded[1:9, 1:9] = img
            im = padded[1 + dy:9 + dy, 1 + dx:9 + dx] + rng.normal(0, NOISE_SIGMA, (8, 8))
            if rng.random() < OCCLUSION_P:
                r, c = rng.integers(0, 7, size=2)
                im[r:r + 2, c:c + 2] = 0
            out[k] = im
            k += 1
    quantised = np.round(np.clip(out, 0, 16) * (255 / 16)).astype(np.uint8)
    return quantised.reshape(-1, 64), np.tile(labels, copies).astype(np.int64)


def make_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    digits = load_digits()
    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(digits.target))
    cut1, cut2 = SPLIT["train"], SPLIT["train"] + SPLIT["val"]
    parts = {"train": perm[:cut1], "val": perm[cut1:cut2], "test": perm[cut2:]}
    images = digits.images.astype(np.float32)
    return {name: corrupt(images[idx], digits.target[idx], COPIES[name], rng)
            for name, idx in parts.items()}


# ---- architectures ------------------------------------------------------------------------

def mlp(hidden: list[int], classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def cnn(c1: int = 32, c2: int = 64, fc: int = 128, classes: int = 10) -> nn.Module:
    """heavy-cnn: two convolutions at 8x8, pool, one at 4x4, FC."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 16, fc), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(fc, classes),
    )


def cnn_shallow(c1: int = 32, c2: int = 64, fc: int = 64, classes: int = 10) -> nn.Module:
    """heavy-cnn-lite: one convolution at 8x8, pool, one at 4x4, FC (pools before the detail)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 16, fc), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(fc, classes),
    )


def cnn_deep(c1: int = 32, c2: int = 64, c3: int = 96, fc: int = 128) -> nn.Module:
    """heavy-cnn-xl: three convolutions at 8x8, pool, two at 4x4, pool, FC.

    The cost is in the convolutions at full resolution; pooling to 2x2 before the FC keeps the
    parameter count (and the file) small.
    """
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c3, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c3 * 4, fc), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(fc, 10),
    )


class EarlyExitCNN(nn.Module):
    """heavy-ee: three stages (body + exit head each); forward returns every exit's logits.

    s1: conv 32, conv 48 at 8x8 -> act [N,48,8,8]; exit: avg-pool to 2x2, linear
    s2: pool, conv 80 at 4x4    -> act [N,80,4,4]; exit: avg-pool to 2x2, linear
    s3: conv 96 at 4x4, pool, FC 128               exit: the FC head (final answer)
    """

    def __init__(self, c1: int = 32, c2: int = 48, c3: int = 80, c4: int = 96,
                 fc: int = 128) -> None:
        super().__init__()
        self.bodies = nn.ModuleList([
            nn.Sequential(nn.Unflatten(1, (1, 8, 8)),
                          nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        ])
        self.heads = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c2 * 4, 10)),
            nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c3 * 4, 10)),
            nn.Sequential(nn.Flatten(), nn.Linear(c4 * 4, fc), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(fc, 10)),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits = []
        for body, head in zip(self.bodies, self.heads, strict=True):
            x = body(x)
            logits.append(head(x))
        return logits


class Stage(nn.Module):
    """One exported early-exit stage: act -> (next act, softmax probs), or probs if last."""

    def __init__(self, body: nn.Module, head: nn.Module, last: bool) -> None:
        super().__init__()
        self.body, self.head, self.last = body, head, last

    def forward(self, x: torch.Tensor) -> Any:
        act = self.body(x)
        probs = torch.softmax(self.head(act), dim=-1)
        return probs if self.last else (act, probs)


# ONNX forbids a graph input and output of the same name (single static assignment), so stage 2
# cannot both take and return `act`: it returns `act_out`, which stage 3 takes as `act`.
EE_STAGE_IO = [("input", ["act", "probs"]), ("act", ["act_out", "probs"]), ("act", ["probs"])]
EE_EXIT_WEIGHTS = [1.0, 1.0, 1.0]


# ---- the zoo's models ----------------------------------------------------------------------

def _light(name: str, tier: str, hidden: list[int]) -> list[dict[str, Any]]:
    """The tier's model (SEED) and its two ensemble partners (same architecture, other seeds)."""
    base = {"role": "light", "tier": tier, "arch": f"mlp{hidden}".replace(" ", ""),
            "build": lambda: mlp(hidden), "epochs": 10, "ensemble_member_of": tier}
    return [{**base, "name": name, "seed": SEED}] + [
        {**base, "name": f"{name}-{suffix}", "seed": seed}
        for suffix, seed in ENSEMBLE_SEEDS.items()]


LIGHTS = [_light("light-low", "low", [16]), _light("light-mid", "mid", [48]),
          _light("light-high", "high", [128, 128])]
HEAVIES: list[dict[str, Any]] = [  # cheapest first: the order of zoo.json's heavy_variants
    {"name": "heavy-cnn-lite", "role": "heavy", "tier": None, "arch": "cnn[32,pool,64|64]",
     "build": cnn_shallow, "epochs": 15, "seed": SEED},
    {"name": "heavy-cnn", "role": "heavy", "tier": None, "arch": "cnn[32,64,64|128]",
     "build": cnn, "epochs": 15, "seed": SEED},
    {"name": "heavy-cnn-xl", "role": "heavy", "tier": None,
     "arch": "cnn[32,64,64,pool,96,96,pool|128]", "build": cnn_deep, "epochs": 12, "seed": SEED},
]
EARLY_EXIT: dict[str, Any] = {
    "name": "heavy-ee", "role": "early_exit", "tier": None,
    "arch": "ee-cnn[s1: 32,48 > exit avgpool2+linear | s2: pool,80 > exit avgpool2+linear"
            " | s3: 96,pool > exit fc128]",
    "build": EarlyExitCNN, "epochs": 15, "seed": SEED, "exit_weights": EE_EXIT_WEIGHTS}
TASKS = {"parity": 2, "mod3": 3}
"""More tasks on the same samples, for inference delivery networks that serve several
(docs/idn.md): the digit's parity and the digit mod 3; a task's label is the digit mod
`label_mod`. Each has three server models of different size, accuracy and latency."""


def _task_models(task: str, mod: int) -> list[dict[str, Any]]:
    base = {"role": "heavy", "tier": None, "task": task, "label_mod": mod, "seed": SEED}
    return [
        {**base, "name": f"{task}-s", "arch": "mlp[64,64]", "epochs": 10,
         "build": lambda: mlp([64, 64], mod)},
        {**base, "name": f"{task}-m", "arch": "cnn[32,pool,64|64]", "epochs": 12,
         "build": lambda: cnn_shallow(classes=mod)},
        {**base, "name": f"{task}-l", "arch": "cnn[32,64,64|128]", "epochs": 12,
         "build": lambda: cnn(classes=mod)},
    ]


TASK_SPECS = [m for task, mod in TASKS.items() for m in _task_models(task, mod)]
DEFAULT_HEAVY = "heavy-cnn"
# The four original models first, in their original order, then the new single-file models.
SPECS: list[dict[str, Any]] = (
    [tier[0] for tier in LIGHTS] + [HEAVIES[1], HEAVIES[0], HEAVIES[2]]
    + [member for tier in LIGHTS for member in tier[1:]] + [EARLY_EXIT] + TASK_SPECS)
BY_NAME = {s["name"]: s for s in SPECS}


# ---- training and export ------------------------------------------------------------------

def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = SEED,
          exit_weights: list[float] | None = None) -> nn.Module:
    """AdamW one-cycle; with `exit_weights` the model returns one logits tensor per exit and
    the loss is their weighted sum of cross-entropies (joint training of all exits)."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    yt = torch.from_numpy(y)
    lr, batch = 2e-3, 128
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(yt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            out = model(xt[idx])
            if exit_weights is None:
                loss = nn.functional.cross_entropy(out, yt[idx])
            else:
                loss = torch.stack([w * nn.functional.cross_entropy(o, yt[idx])
                                    for w, o in zip(exit_weights, out, strict=True)]).sum()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _onnx_export(module: nn.Module, example: torch.Tensor, input_name: str,
                 output_names: list[str], path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(module.eval(), (example,), input_names=[input_name],
                                output_names=output_names, dynamic_shapes=({0: batch},),
                                dynamo=True, opset_version=18, external_data=False)
    assert program is not None
    program.save(str(path), external_data=False)


def export(model: nn.Module, path: Path) -> None:
    """ONNX with a dynamic batch axis, input `input` [N,64] float32, output `probs` [N,10]."""
    wrapped = nn.Sequential(model, nn.Softmax(dim=-1)).eval()
    _onnx_export(wrapped, torch.zeros(2, 64), "input", ["probs"], path)


def _strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (stack traces, class names, name scopes).
    Stage is defined in this script, so that metadata would carry this script's line numbers
    and module name (`__main__` or, in a worker, `__mp_main__`): the stage files' bytes would
    change with any edit here or with --jobs. The nn.Sequential models' metadata names torch
    only and is left as it is (the four original files stay byte-identical)."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def export_stages(model: EarlyExitCNN, out: Path, name: str) -> list[dict[str, Any]]:
    """One ONNX file per stage; each stage takes the previous stage's act."""
    stages = []
    example = torch.zeros(2, 64)
    n = len(model.bodies)
    for k, (body, head) in enumerate(zip(model.bodies, model.heads, strict=True)):
        stage = Stage(body, head, last=k == n - 1).eval()
        input_name, output_names = EE_STAGE_IO[k]
        path = out / f"{name}-s{k + 1}.onnx"
        _onnx_export(stage, example, input_name, output_names, path)
        _strip_node_metadata(path)
        stages.append({"file": path.name,
                       "params": sum(p.numel() for p in stage.parameters())})
        with torch.no_grad():
            example = body(example)
    return stages


_SPLITS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _init_worker() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def fit(name: str, out: Path) -> dict[str, Any]:
    """Train one model and export it; runs in a worker process (or inline with --jobs 1)."""
    spec = BY_NAME[name]
    if not _SPLITS:
        _SPLITS.update(make_splits())
    t0 = time.perf_counter()
    # Seed before building: the initial weights come from torch's global generator, which torch
    # seeds differently in every process (torch.initial_seed() changes from run to run).
    torch.manual_seed(spec["seed"])
    x, y = _SPLITS["train"]
    model = train(spec["build"](), x, task_labels(spec, y), epochs=spec["epochs"],
                  seed=spec["seed"], exit_weights=spec.get("exit_weights"))
    result: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    if spec["role"] == "early_exit":
        assert isinstance(model, EarlyExitCNN)
        result["stages"] = export_stages(model, out, name)
    else:
        export(model, out / f"{name}.onnx")
    result["train_s"] = round(time.perf_counter() - t0, 1)
    print(f"trained {name} in {result['train_s']} s", flush=True)
    return result


def task_labels(spec: dict[str, Any], y: np.ndarray) -> np.ndarray:
    """The labels a model learns: the digit, or the digit mod its task's `label_mod`."""
    mod = spec.get("label_mod")
    return y if mod is None else y % mod


def fit_all(out: Path, jobs: int, specs: list[dict[str, Any]] | None = None
            ) -> dict[str, dict[str, Any]]:
    costliest_first = sorted(specs or SPECS, key=lambda s: -_train_cost(s))
    names = [s["name"] for s in costliest_first]
    if jobs <= 1:
        _init_worker()
        return {name: fit(name, out) for name in names}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {name: pool.submit(fit, name, out) for name in names}
        return {name: f.result() for name, f in futures.items()}


def _train_cost(spec: dict[str, Any]) -> float:
    """Rough seconds per epoch, to hand out the longest jobs first."""
    cost = {"heavy-cnn-xl": 15.0, "heavy-ee": 9.0, "heavy-cnn": 6.5, "heavy-cnn-lite": 1.8}
    return float(cost.get(spec["name"], 0.3) * spec["epochs"])


# ---- measurement --------------------------------------------------------------------------

def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    probs: np.ndarray = sess.run(None, {"input": x.astype(np.float32) / 255.0})[0]
    return probs


def latency_ms(sess: ort.InferenceSession, batch_sizes: list[int], reps: int,
               input_name: str = "input",
               sample_shape: tuple[int, ...] = (64,)) -> dict[str, float]:
    """Median wall time of one run per batch size, single-threaded, after warm-up."""
    out = {}
    for b in batch_sizes:
        x = np.random.default_rng(0).random((b, *sample_shape), dtype=np.float32)
        for _ in range(10):
            sess.run(None, {input_name: x})
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            sess.run(None, {input_name: x})
            times.append(time.perf_counter() - t)
        out[str(b)] = round(float(np.median(times)) * 1e3, 4)
    return out


def measure_latencies(cards: dict[str, dict[str, Any]], out: Path,
                      rounds: int = LATENCY_ROUNDS) -> None:
    """Fill every card's (and early-exit stage's) `latency_ms_p50`: per batch size, the lowest
    over `rounds` rounds, each going through all models in turn, of the median of `reps` runs.
    Interleaving and the minimum keep a burst of other load on the host from inflating one
    model's numbers; lights are measured at batch 1 only (devices run one sample at a time)."""
    targets = []
    for card in cards.values():
        light = card["role"] == "light"
        for entry in card.get("stages") or [card]:
            sess = session(out / entry["file"])
            inp = sess.get_inputs()[0]
            targets.append((entry, sess, inp.name, tuple(inp.shape[1:]),
                            [1] if light else HEAVY_BATCHES, 200 if light else 50))
    for _ in range(rounds):
        for entry, sess, input_name, shape, sizes, reps in targets:
            lat = latency_ms(sess, sizes, reps, input_name, shape)
            prev = entry["latency_ms_p50"] or {}
            entry["latency_ms_p50"] = {b: min(ms, prev.get(b, ms)) for b, ms in lat.items()}


def threshold_curve(light: np.ndarray, heavy: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
    """Forward rate and cascade accuracy when samples with light confidence < t go to the heavy."""
    conf = light.max(axis=1)
    light_ok = light.argmax(axis=1) == y
    heavy_ok = heavy.argmax(axis=1) == y
    rows = []
    for t in np.round(np.linspace(0, 1, 41), 3):
        fwd = conf < t
        rows.append({"threshold": float(t), "forward_rate": round(float(fwd.mean()), 4),
                     "accuracy": round(float(np.where(fwd, heavy_ok, light_ok).mean()), 4)})
    return rows


def exit_curve(exit_probs: list[np.ndarray], y: np.ndarray) -> list[dict[str, Any]]:
    """Per threshold t: the share of samples leaving at each stage when a sample exits at the
    first stage whose top-1 confidence is >= t (the last stage takes the rest), and accuracy."""
    n = len(exit_probs)
    conf = np.stack([p.max(axis=1) for p in exit_probs])  # [stages, N]
    ok = np.stack([p.argmax(axis=1) == y for p in exit_probs])
    rows = []
    for t in np.round(np.linspace(0, 1, 21), 3):
        confident = conf >= t
        confident[-1] = True
        stage = confident.argmax(axis=0)  # first confident stage
        rates = [round(float((stage == k).mean()), 4) for k in range(n)]
        acc = float(ok[stage, np.arange(len(y))].mean())
        rows.append({"threshold": float(t), "exit_rates": rates, "accuracy": round(acc, 4)})
    return rows


def _shape(dims: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in dims]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return round(float((probs.argmax(1) == y).mean()), 4)


# ---- cards --------------------------------------------------------------------------------

def model_card(spec: dict[str, Any], path: Path, params: int,
               probs: dict[str, np.ndarray], splits: dict[str, Any]) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": spec["name"], "role": spec["role"], "tier": spec["tier"],
        "arch": spec["arch"], "file": path.name, "sha256": sha256(path),
        "size_bytes": path.stat().st_size, "params": params,
        "input": {"name": "input", "shape": [None, 64], "dtype": "float32",
                  "scale": "uint8 pixels / 255"},
        "output": {"name": "probs", "shape": [None, spec.get("label_mod", 10)]},
        **({"task": spec["task"]} if "task" in spec else {}),
        "accuracy": {p: accuracy(probs[p], task_labels(spec, splits[p][1]))
                     for p in ("val", "test")},
        "latency_ms_p50": None,  # filled in by measure_latencies
        "training": {"epochs": spec["epochs"], "seed": spec["seed"],
                     "optimizer": "AdamW one-cycle", "torch": torch.__version__},
    }
    return card


def early_exit_card(spec: dict[str, Any], out: Path, fitted: dict[str, Any],
                    splits: dict[str, Any]) -> dict[str, Any]:
    sessions = [session(out / st["file"]) for st in fitted["stages"]]
    exit_probs: dict[str, list[np.ndarray]] = {}
    for p in ("val", "test"):
        feed: np.ndarray = splits[p][0].astype(np.float32) / 255.0
        exit_probs[p] = []
        for sess in sessions:
            outs = dict(zip([o.name for o in sess.get_outputs()],
                            sess.run(None, {sess.get_inputs()[0].name: feed}), strict=True))
            exit_probs[p].append(outs["probs"])
            feed = next((v for k, v in outs.items() if k != "probs"), feed)
    stages = []
    for st, sess in zip(fitted["stages"], sessions, strict=True):
        inp = sess.get_inputs()[0]
        path = out / st["file"]
        stages.append({
            "file": st["file"], "sha256": sha256(path), "size_bytes": path.stat().st_size,
            "input": {"name": inp.name, "shape": _shape(inp.shape)},
            "outputs": [{"name": o.name, "shape": _shape(o.shape)} for o in sess.get_outputs()],
            "latency_ms_p50": None,  # filled in by measure_latencies
            "params": st["params"],
        })
    for prev, nxt in itertools.pairwise(stages):
        assert prev["outputs"][0]["shape"] == nxt["input"]["shape"], (prev, nxt)
    card = {
        "name": spec["name"], "role": spec["role"], "tier": spec["tier"], "arch": spec["arch"],
        "params": fitted["params"],
        "input": {"name": "input", "shape": [None, 64], "dtype": "float32",
                  "scale": "uint8 pixels / 255"},
        "output": {"name": "probs", "shape": [None, 10]},
        "stages": stages,
        "accuracy": {p: accuracy(exit_probs[p][-1], splits[p][1]) for p in ("val", "test")},
        "exit_accuracy": {p: [accuracy(e, splits[p][1]) for e in exit_probs[p]]
                          for p in ("val", "test")},
        "exit_curves_val": exit_curve(exit_probs["val"], splits["val"][1]),
        "training": {"epochs": spec["epochs"], "seed": spec["seed"],
                     "optimizer": "AdamW one-cycle", "exit_loss_weights": spec["exit_weights"],
                     "torch": torch.__version__},
    }
    return card


def task_index(heavy_variants: list[str]) -> dict[str, Any]:
    """zoo.json's `tasks`: the digit task (the heavy variants) and the TASKS."""
    out: dict[str, Any] = {"digit": {"label_mod": 10, "models": heavy_variants}}
    for task, mod in TASKS.items():
        out[task] = {"label_mod": mod,
                     "models": [s["name"] for s in TASK_SPECS if s["task"] == task]}
    return out


def add_tasks(out: Path, jobs: int) -> None:
    """Train and add the task models to an existing zoo: their ONNX files and cards, and
    zoo.json's `tasks` and `models`; the other files stay byte for byte."""
    t0 = time.perf_counter()
    splits = make_splits()
    fitted = fit_all(out, jobs, TASK_SPECS)
    cards: dict[str, dict[str, Any]] = {}
    for spec in TASK_SPECS:
        path = out / f"{spec['name']}.onnx"
        sess = session(path)
        probs = {p: predict(sess, splits[p][0]) for p in ("val", "test")}
        cards[spec["name"]] = model_card(spec, path, fitted[spec["name"]]["params"], probs,
                                         splits)
    measure_latencies(cards, out)
    host = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "threads": 1,
            "latency": f"median of 50 runs after 10 warm-up runs, lowest of {LATENCY_ROUNDS} "
                       "rounds through all models"}
    for name, card in cards.items():
        card["measured_on"] = host
        (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    index = json.loads((out / "zoo.json").read_text())
    index["tasks"] = task_index(list(index["heavy_variants"]))
    index["models"] = [*index["models"],
                       *(s["name"] for s in TASK_SPECS if s["name"] not in index["models"])]
    (out / "zoo.json").write_text(json.dumps(index, indent=2) + "\n")
    print("\n".join(markdown_rows(cards)))
    print(f"task models built in {time.perf_counter() - t0:.0f} s")


def markdown_rows(cards: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| model | role | tier | params | size | acc val | acc test | ms b1 | ms b32 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, c in cards.items():
        parts = c.get("stages") or [c]
        size = sum(p["size_bytes"] for p in parts)
        b1 = sum(p["latency_ms_p50"]["1"] for p in parts)
        b32 = (f"{sum(p['latency_ms_p50']['32'] for p in parts):.3f}"
               if "32" in parts[0]["latency_ms_p50"] else "")
        rows.append(f"| `{name}` | {c['role']} | {c['tier'] or ''} | {c['params']:,} "
                    f"| {size / 1e3:.0f} kB | {c['accuracy']['val'] * 100:.1f}% "
                    f"| {c['accuracy']['test'] * 100:.1f}% | {b1:.4f} | {b32} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ZOO)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="training processes (one torch thread each); default 2")
    parser.add_argument("--tasks-only", action="store_true",
                        help="build only the task models (TASKS) into an existing zoo and add "
                             "them to its zoo.json, leaving every other file as it is")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.tasks_only:
        add_tasks(out, args.jobs)
        return
    t0 = time.perf_counter()
    splits = make_splits()
    dataset = out / "digits-noisy.npz"
    np.savez_compressed(dataset, **{f"{k}_{p}": v for p, (x, y) in splits.items()
                                    if p != "train" for k, v in (("x", x), ("y", y))})
    fitted = fit_all(out, args.jobs)
    print(f"training done after {time.perf_counter() - t0:.0f} s", flush=True)

    # Accuracy, then latency, in this process, now that no training runs beside them.
    probs: dict[str, dict[str, np.ndarray]] = {}
    cards: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        name = spec["name"]
        if spec["role"] == "early_exit":
            cards[name] = early_exit_card(spec, out, fitted[name], splits)
            continue
        path = out / f"{name}.onnx"
        sess = session(path)
        probs[name] = {p: predict(sess, splits[p][0]) for p in ("val", "test")}
        cards[name] = model_card(spec, path, fitted[name]["params"], probs[name], splits)

    measure_latencies(cards, out)
    heavy_variants = [h["name"] for h in HEAVIES]
    tasks = task_index(heavy_variants)
    y_val = splits["val"][1]
    for spec in SPECS:
        if spec["role"] != "light":
            continue
        card = cards[spec["name"]]
        light_val = probs[spec["name"]]["val"]
        card["threshold_curve_val"] = threshold_curve(light_val, probs[DEFAULT_HEAVY]["val"], y_val)
        card["threshold_curves_val"] = {h: threshold_curve(light_val, probs[h]["val"], y_val)
                                        for h in heavy_variants}
        card["ensemble_member_of"] = spec["ensemble_member_of"]

    lat32 = [cards[h]["latency_ms_p50"]["32"] for h in heavy_variants]
    if lat32 != sorted(lat32):
        print(f"WARNING: heavy variants not ordered by batch-32 latency: {lat32}")
    if lat32[-1] < 2.5:
        print(f"WARNING: {heavy_variants[-1]} batch-32 latency {lat32[-1]} ms < 2.5 ms")

    host = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "threads": 1,
            "latency": f"median of 50 runs (lights: 200) after 10 warm-up runs, lowest of "
                       f"{LATENCY_ROUNDS} rounds through all models"}
    for name, card in cards.items():
        card["measured_on"] = host
        (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    base_lights = [tier[0] for tier in LIGHTS]
    index = {
        "dataset": {"file": dataset.name, "dtype": "uint8", "name": "digits-noisy", "classes": 10,
                    "source": "sklearn.datasets.load_digits", "seed": SEED,
                    "noise_sigma": NOISE_SIGMA, "occlusion_p": OCCLUSION_P, "copies": COPIES,
                    "splits": {p: len(splits[p][1]) for p in ("val", "test")}},
        "tiers": {s["tier"]: s["name"] for s in base_lights},
        "heavy": DEFAULT_HEAVY,
        "models": [s["name"] for s in SPECS if s["role"] != "early_exit"],
        "heavy_variants": heavy_variants,
        "ensembles": {tier[0]["tier"]: [s["name"] for s in tier] for tier in LIGHTS},
        "early_exit": EARLY_EXIT["name"],
        "tasks": tasks,
    }
    (out / "zoo.json").write_text(json.dumps(index, indent=2) + "\n")

    too_big = [p.name for p in out.iterdir() if p.stat().st_size >= MAX_FILE_BYTES]
    if too_big:
        raise SystemExit(f"files of 2 MiB or more: {too_big}")
    for name, card in cards.items():
        if "stages" in card:
            lat = {st["file"]: st["latency_ms_p50"]["32"] for st in card["stages"]}
            print(f"{name:15s} exits(test)={card['exit_accuracy']['test']} b32={lat}")
        else:
            print(f"{name:15s} acc(test)={card['accuracy']['test']:.3f} "
                  f"size={card['size_bytes'] / 1e3:.0f}kB latency={card['latency_ms_p50']}")
    for ens, members in index["ensembles"].items():
        for p in ("val", "test"):
            mean = np.mean([probs[m][p] for m in members], axis=0)
            print(f"ensemble {ens} ({p}): mean-probs accuracy {accuracy(mean, splits[p][1])}")
    print("\n".join(markdown_rows(cards)))
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"zoo: {total / 1e6:.2f} MB; built in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
