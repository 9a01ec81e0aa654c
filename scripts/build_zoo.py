"""Build the embedded model zoo from scikit-learn's digits: data split, models, cards.

Deterministic (seeded data corruption and training). Needs the `zoo` extra (torch, scikit-learn,
onnx, onnxscript): `pip install -e '.[zoo]'`, then `python scripts/build_zoo.py`. The outputs in
testbed/zoo/ are committed, so running the testbed never needs this script or its packages.

Why a noisy variant: on clean digits a small MLP already reaches ~97%, which leaves the heavy
model nothing to add and the cascade nothing to decide. Shifts, pixel noise and occlusions open
a gap of 8-30 points between the device tiers and the server's CNN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

ZOO = Path(__file__).resolve().parents[1] / "testbed" / "zoo"
SEED = 20230623  # MultiTASC's arXiv date; any fixed value works
NOISE_SIGMA = 3.0  # on the digits' 0..16 pixel scale
OCCLUSION_P = 0.3
COPIES = {"train": 30, "val": 6, "test": 6}
SPLIT = {"train": 1077, "val": 360}  # the rest (360 originals) is the test split


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


def mlp(hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    width = 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def cnn(c1: int = 32, c2: int = 64, fc: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 16, fc), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(fc, 10),
    )


SPECS: list[dict[str, Any]] = [
    {"name": "light-low", "role": "light", "tier": "low", "arch": "mlp[16]",
     "build": lambda: mlp([16]), "epochs": 10},
    {"name": "light-mid", "role": "light", "tier": "mid", "arch": "mlp[48]",
     "build": lambda: mlp([48]), "epochs": 10},
    {"name": "light-high", "role": "light", "tier": "high", "arch": "mlp[128,128]",
     "build": lambda: mlp([128, 128]), "epochs": 10},
    {"name": "heavy-cnn", "role": "heavy", "tier": None, "arch": "cnn[32,64,64|128]",
     "build": cnn, "epochs": 15},
]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(SEED)
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    yt = torch.from_numpy(y)
    lr, batch = 2e-3, 128
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(yt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def export(model: nn.Module, path: Path) -> None:
    """ONNX with a dynamic batch axis, input `input` [N,64] float32, output `probs` [N,10]."""
    wrapped = nn.Sequential(model, nn.Softmax(dim=-1)).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(wrapped, (torch.zeros(2, 64),), input_names=["input"],
                                output_names=["probs"], dynamic_shapes=({0: batch},),
                                dynamo=True, opset_version=18, external_data=False)
    assert program is not None
    program.save(str(path), external_data=False)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    probs: np.ndarray = sess.run(None, {"input": x.astype(np.float32) / 255.0})[0]
    return probs


def latency_ms(sess: ort.InferenceSession, batch_sizes: list[int], reps: int) -> dict[str, float]:
    """Median wall time of one run per batch size, single-threaded, after warm-up."""
    out = {}
    for b in batch_sizes:
        x = np.random.default_rng(0).random((b, 64), dtype=np.float32)
        for _ in range(10):
            sess.run(None, {"input": x})
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            sess.run(None, {"input": x})
            times.append(time.perf_counter() - t)
        out[str(b)] = round(float(np.median(times)) * 1e3, 4)
    return out


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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ZOO)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits()
    dataset = out / "digits-noisy.npz"
    np.savez_compressed(dataset, **{f"{k}_{p}": v for p, (x, y) in splits.items()
                                    if p != "train" for k, v in (("x", x), ("y", y))})
    probs: dict[str, dict[str, np.ndarray]] = {}
    cards: dict[str, dict[str, Any]] = {}
    for spec in SPECS:
        model = train(spec["build"](), *splits["train"], epochs=spec["epochs"])
        path = out / f"{spec['name']}.onnx"
        export(model, path)
        sess = session(path)
        probs[spec["name"]] = {p: predict(sess, splits[p][0]) for p in ("val", "test")}
        sizes = [1] if spec["role"] == "light" else [1, 2, 4, 8, 16, 32, 64]
        cards[spec["name"]] = {
            "name": spec["name"], "role": spec["role"], "tier": spec["tier"],
            "arch": spec["arch"], "file": path.name, "sha256": sha256(path),
            "size_bytes": path.stat().st_size,
            "params": sum(p.numel() for p in model.parameters()),
            "input": {"name": "input", "shape": [None, 64], "dtype": "float32",
                      "scale": "uint8 pixels / 255"},
            "output": {"name": "probs", "shape": [None, 10]},
            "accuracy": {p: round(float((probs[spec["name"]][p].argmax(1) == splits[p][1])
                                        .mean()), 4) for p in ("val", "test")},
            "latency_ms_p50": latency_ms(sess, sizes, reps=200 if spec["role"] == "light" else 50),
            "training": {"epochs": spec["epochs"], "seed": SEED, "optimizer": "AdamW one-cycle",
                         "torch": torch.__version__},
        }
    heavy = next(s["name"] for s in SPECS if s["role"] == "heavy")
    for spec in SPECS:
        if spec["role"] == "light":
            cards[spec["name"]]["threshold_curve_val"] = threshold_curve(
                probs[spec["name"]]["val"], probs[heavy]["val"], splits["val"][1])
    host = {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "threads": 1}
    for name, card in cards.items():
        card["measured_on"] = host
        (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    index = {
        "dataset": {"file": dataset.name, "name": "digits-noisy", "classes": 10,
                    "source": "sklearn.datasets.load_digits", "seed": SEED,
                    "noise_sigma": NOISE_SIGMA, "occlusion_p": OCCLUSION_P, "copies": COPIES,
                    "splits": {p: len(splits[p][1]) for p in ("val", "test")}},
        "tiers": {s["tier"]: s["name"] for s in SPECS if s["role"] == "light"},
        "heavy": heavy,
        "models": [s["name"] for s in SPECS],
    }
    (out / "zoo.json").write_text(json.dumps(index, indent=2) + "\n")
    for name, card in cards.items():
        print(f"{name:11s} acc(test)={card['accuracy']['test']:.3f} "
              f"size={card['size_bytes'] / 1e3:.0f}kB latency={card['latency_ms_p50']}")


if __name__ == "__main__":
    main()
