"""Write the synthetic cellular link traces shipped in cascade_testbed/common/traces/links/
(Mahimahi format).

Real traces cannot be downloaded where this testbed is built, so these come from a documented
model with a fixed seed; they are named `synthetic-*` so that no one takes them for
measurements. Public measured traces load unchanged (docs/emulation.md says where they are).

The model, one 100 ms step at a time:
- a three-state Markov chain (a Gilbert-Elliott channel with an extra outage state): `good`,
  `degraded`, `outage`, with the per-step transition probabilities of each profile below;
  one chain per profile drives both directions, so the uplink and the downlink fade together;
- within `good` and `degraded` the rate is the state's mean times exp(x), where x is an AR(1)
  log-normal fading process, x' = 0.9 x + N(0, sigma), independent per direction;
- `outage` carries nothing.
The [seconds, Mbit/s] log this gives becomes a trace through `cascade_testbed.common.link_trace`'s
`throughput_to_trace`, exactly what `testbed trace convert` does with a measured log.

    python scripts/make_link_traces.py            # rewrites the shipped traces
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cascade_testbed.common.link_trace import TRACES_DIR, format_trace, throughput_to_trace

SEED = 29
STEP_S = 0.1
DURATION_S = 60.0
STATES = ("good", "degraded", "outage")


@dataclass(frozen=True)
class Profile:
    name: str
    transitions: tuple[tuple[float, float, float], ...]
    """Row i: probabilities of moving from state i to each state in one step."""
    down_mbps: tuple[float, float]
    """Mean downlink rate in `good` and `degraded`."""
    up_mbps: tuple[float, float]
    sigma: float
    """Step of the log-rate's AR(1) fading."""


PROFILES = (
    Profile("lte-walking",
            transitions=((0.97, 0.028, 0.002), (0.06, 0.93, 0.01), (0.3, 0.5, 0.2)),
            down_mbps=(12.0, 3.0), up_mbps=(4.0, 1.0), sigma=0.15),
    Profile("lte-driving",
            transitions=((0.90, 0.08, 0.02), (0.12, 0.84, 0.04), (0.1, 0.3, 0.6)),
            down_mbps=(9.0, 1.5), up_mbps=(3.0, 0.5), sigma=0.3),
)


def states(profile: Profile, steps: int, rng: np.random.Generator) -> list[int]:
    out, state = [], 0
    for _ in range(steps):
        out.append(state)
        state = int(rng.choice(3, p=profile.transitions[state]))
    return out


def rates(chain: list[int], means: tuple[float, float], sigma: float,
          rng: np.random.Generator) -> list[tuple[float, float]]:
    """[seconds, Mbit/s] rows of one direction."""
    x, rows = 0.0, []
    for i, state in enumerate(chain):
        x = 0.9 * x + float(rng.normal(0.0, sigma))
        mbps = 0.0 if state == 2 else means[state] * float(np.exp(x))
        rows.append((round(i * STEP_S, 3), round(mbps, 4)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TRACES_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = round(DURATION_S / STEP_S)
    for k, profile in enumerate(PROFILES):
        rng = np.random.default_rng([SEED, k])
        chain = states(profile, steps, rng)
        for direction, means in (("down", profile.down_mbps), ("up", profile.up_mbps)):
            times = throughput_to_trace(rates(chain, means, profile.sigma, rng))
            path = args.out / f"synthetic-{profile.name}.{direction}"
            path.write_text(format_trace(times))
            outage = sum(s == 2 for s in chain) * STEP_S
            print(f"{path}: {len(times)} opportunities, "
                  f"{len(times) * 1500 * 8 / DURATION_S / 1e6:.2f} Mbit/s mean, "
                  f"{outage:.1f} s in outage")


if __name__ == "__main__":
    main()
