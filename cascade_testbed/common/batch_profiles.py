"""Emulated batch-latency profiles of heavy models, shared by the server (which pads each batch
to its profile) and the planner (which plans gears on the same numbers). Pure, but for reading
model cards through the zoo."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cascade_testbed.common.config import AcceleratorConfig, ServerConfig
from cascade_testbed.common.modelzoo import Zoo, ZooError
from cascade_testbed.common.zoo_checks import REFERENCE_BATCH

__all__ = ["REFERENCE_BATCH"]  # batch size whose measured latency compares models' costs


@dataclass(frozen=True, slots=True)
class BatchProfile:
    """Emulated accelerator: a batch of b takes base + per_sample * b milliseconds, b padded
    up to the smallest of `shapes` that holds it when the accelerator only runs those sizes
    (a batch larger than every shape runs in passes of the largest)."""

    base_ms: float
    per_sample_ms: float
    shapes: tuple[int, ...] = ()

    def target_s(self, batch_size: int) -> float:
        if not self.shapes or batch_size <= 0:
            return (self.base_ms + self.per_sample_ms * batch_size) / 1e3
        largest = self.shapes[-1]
        passes, rest = divmod(batch_size, largest)
        total = passes * (self.base_ms + self.per_sample_ms * largest)
        if rest:
            padded = next(s for s in self.shapes if s >= rest)
            total += self.base_ms + self.per_sample_ms * padded
        return total / 1e3

    def scaled(self, factor: float) -> BatchProfile:
        """The same accelerator `factor` times slower (a share of a network, a slower node)."""
        return BatchProfile(self.base_ms * factor, self.per_sample_ms * factor, self.shapes)


def on_accelerator(profile: BatchProfile, acc: AcceleratorConfig) -> BatchProfile:
    """`profile` as the accelerator `acc` runs it (its docstring says how each kind does)."""
    if acc.kind == "conventional-npu":
        return BatchProfile(profile.base_ms, profile.per_sample_ms, acc.batch_shapes)
    if acc.kind == "fluid-npu":
        return BatchProfile(profile.base_ms * acc.fixed_share, profile.per_sample_ms)
    return profile


def utilisation(profile: BatchProfile, batch_size: int) -> float:
    """The share of a batch's time spent on its own samples' work (not on the fixed cost nor
    on padding): what fluid batching raises at small batch sizes."""
    t = profile.target_s(batch_size)
    return profile.per_sample_ms * batch_size / 1e3 / t if t > 0 and not math.isinf(t) else 0.0


def heavy_model_names(server: ServerConfig, zoo: Zoo) -> list[str]:
    """The heavy models a server loads: its default first, then the ones it may switch to."""
    default = server.heavy_model or zoo.heavy
    return [default, *(n for n in server.heavy_models if n != default)]


def profile_for(zoo: Zoo, name: str, default: str, base: BatchProfile,
                overrides: dict[str, Any]) -> BatchProfile:
    """The emulated batch profile of heavy model `name`: the scenario's override, the
    server's profile for the default model, or that profile scaled by how much costlier
    `name` measured on this host (cards' latency at batch 32)."""
    if name in overrides:
        o = overrides[name]
        return BatchProfile(float(o["base_ms"]), float(o["per_sample_ms"]))
    if name == default:
        return base
    try:
        ratio = (float(zoo.card(name)["latency_ms_p50"][REFERENCE_BATCH])
                 / float(zoo.card(default)["latency_ms_p50"][REFERENCE_BATCH]))
    except (KeyError, ZooError) as exc:
        raise ZooError(f"no profile for {name!r} and no batch-{REFERENCE_BATCH} latency "
                       f"in the cards to scale one: {exc}") from None
    return BatchProfile(base.base_ms * ratio, base.per_sample_ms * ratio)
