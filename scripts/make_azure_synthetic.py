"""Write the two small synthetic Azure Functions traces the tests and example scenarios use.

    python scripts/make_azure_synthetic.py            # -> scenarios/traces/

They follow the public datasets' layouts (docs/arrival-traces.md) but hold made-up functions
(ids are SHA-256 of "synthetic-<layout>-<i>"), drawn with a fixed seed, so the files are the
same on every machine:

* azure-functions-2019-synthetic.csv: 12 functions of one day, per-minute counts
  (`HashOwner,HashApp,HashFunction,Trigger,1..1440`): a diurnal sine, a few bursts, Poisson
  noise; their mean rates differ by a factor of ~40, so "the busiest N" is a real choice.
* azure-functions-2021-synthetic.csv: 6 functions over the first 30 minutes, one row per
  invocation (`app,func,end_timestamp,duration`, seconds, sorted by end as the dataset is),
  Poisson starts at per-function rates that change every 5 minutes, log-normal durations.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

SEED = 2029
OUT = Path(__file__).resolve().parent.parent / "scenarios" / "traces"
TRIGGERS = ("http", "queue", "timer", "event", "storage", "orchestration")


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_2019(rng: np.random.Generator, functions: int = 12) -> str:
    minutes = np.arange(1440)
    lines = ["HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in
                                                                  range(1, 1441))]
    for i in range(functions):
        mean = 60.0 / (1.0 + i) ** 1.5  # the busiest ~60 per minute, the quietest ~1.5
        phase = rng.uniform(0, 2 * np.pi)
        rate = mean * (1.0 + 0.6 * np.sin(2 * np.pi * minutes / 1440 + phase))
        for _ in range(3):  # bursts of a few minutes at 3-6x
            at = int(rng.integers(0, 1430))
            rate[at: at + int(rng.integers(2, 8))] *= rng.uniform(3, 6)
        counts = rng.poisson(rate)
        owner, app = _id(f"owner-{i // 4}"), _id(f"app-{i // 2}")
        trigger = TRIGGERS[i % len(TRIGGERS)]
        lines.append(",".join([owner, app, _id(f"synthetic-2019-{i}"), trigger,
                               *map(str, counts)]))
    return "\n".join(lines) + "\n"


def make_2021(rng: np.random.Generator, functions: int = 6, minutes: int = 30) -> str:
    rows = []
    for i in range(functions):
        app, func = _id(f"app2021-{i // 2}"), _id(f"synthetic-2021-{i}")
        for block in range(0, minutes, 5):
            per_min = rng.uniform(10, 50) / (1 + i) ** 0.7
            n = rng.poisson(per_min * 5)
            starts = np.sort(rng.uniform(block * 60, (block + 5) * 60, size=n))
            durations = rng.lognormal(np.log(0.3), 1.0, size=n)
            rows += [(s + d, d, app, func) for s, d in zip(starts, durations, strict=True)]
    rows.sort()
    lines = ["app,func,end_timestamp,duration"]
    lines += [f"{app},{func},{end:.3f},{d:.3f}" for end, d, app, func in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    (args.out / "azure-functions-2019-synthetic.csv").write_text(make_2019(rng))
    (args.out / "azure-functions-2021-synthetic.csv").write_text(make_2021(rng))
    print(f"wrote {args.out}/azure-functions-{{2019,2021}}-synthetic.csv")


if __name__ == "__main__":
    main()
