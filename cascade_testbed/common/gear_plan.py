"""A CascadeServe gear plan: for every integer load level (generated samples/s over all
devices), the gear to run. Written by `testbed plan`, read by the `gears` policy."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.files import MIB, read_text

PLAN_VERSION = 1
CASCADE_NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,63})>([A-Za-z0-9][A-Za-z0-9._-]{0,63})"
                          r"@(0(?:\.[0-9]{1,6})?|1(?:\.0{1,6})?)")
"""A gear's heavy model `first>final@theta`: a server-side confidence cascade of two heavy
models (`server.heavy_model.ConfidenceTier`)."""


def cascade_name(first: str, final: str, theta: float) -> str:
    """The name of a server-side cascade (matches `CASCADE_NAME` for theta in [0, 1])."""
    return f"{first}>{final}@{round(theta, 6):g}"


@dataclass(frozen=True, slots=True)
class Gear:
    heavy_model: str
    thresholds: dict[str, float]
    """Forwarding threshold per device tier."""
    max_batch_size: int
    accuracy: float
    """Expected accuracy over all samples (validation split, tier mix)."""
    forward_rate: float
    """Expected share of generated samples sent to the server."""
    load_split: dict[str, float]
    """Share of the server's load that comes from each tier."""
    cost_ms: float
    """Server time per generated sample at the largest batch (ms)."""
    p95_server_ms: float = 0.0
    """Simulated server p95 (queue + batch) at the highest load this gear serves."""
    replicas: int = 1
    """Replicas of the accelerator this gear provisions (the load split evenly over them)."""


@dataclass(frozen=True)
class GearPlan:
    gears: tuple[Gear, ...]
    """Most accurate (costliest) first."""
    table: tuple[int, ...]
    """Gear index for load level q = 0, 1, 2, ... (samples/s); beyond the end, the last."""
    slo_ms: float = 0.0
    server_budget_ms: float = 0.0
    """The part of the SLO left to the server once devices and links have taken theirs."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.gears or not self.table:
            raise ValueError("a gear plan needs at least one gear and one load level")
        if any(not 0 <= g < len(self.gears) for g in self.table):
            raise ValueError("gear plan table refers to a gear that does not exist")

    def lookup(self, rate_sps: float) -> int:
        """The gear for a measured load: level ceil(rate), clamped to the table."""
        q = max(math.ceil(rate_sps - 1e-9), 0)
        return self.table[min(q, len(self.table) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "slo_ms": self.slo_ms,
                "server_budget_ms": self.server_budget_ms, "meta": self.meta,
                "gears": [asdict(g) for g in self.gears], "table": list(self.table)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GearPlan:
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"gear plan version {data.get('version')!r} is not "
                             f"{PLAN_VERSION}; re-run `testbed plan`")
        return cls(gears=tuple(Gear(**g) for g in data["gears"]),
                   table=tuple(int(i) for i in data["table"]),
                   slo_ms=float(data.get("slo_ms", 0.0)),
                   server_budget_ms=float(data.get("server_budget_ms", 0.0)),
                   meta=dict(data.get("meta", {})))


def read_plan(path: str | Path) -> GearPlan:
    try:
        return GearPlan.from_dict(json.loads(read_text(path, 16 * MIB, "gear plan")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"cannot read gear plan {path}: {exc}") from None


def write_plan(plan: GearPlan, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
    return out
