"""What the harness does at which run time: the actions of faults and of devices joining and
leaving. Pure: plans are computed from the scenario before the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cascade_testbed.common.config import ScenarioConfig

ActionKind = Literal["kill_device", "restart_device", "kill_server", "restart_server",
                     "link_down", "link_up", "join_device", "kill_node"]


@dataclass(frozen=True, slots=True, order=True)
class Action:
    at_s: float
    """Run time at which the harness acts."""
    kind: ActionKind
    target: str = ""
    """A device id; a node name for kill_node; empty for the server."""
    signal: str = "kill"
    fault: int = -1
    """Index of the scenario fault this comes from (-1: not a fault)."""
    detail: str = ""
    until_s: float | None = None
    """join_device: when the device leaves again (run time)."""


Interval = tuple[float, float]


def activity(cfg: ScenarioConfig) -> list[tuple[Interval, ...]]:
    """For each device (by index), the run-time intervals in which it is connected. Without
    phases every device is there for the whole run; with them, device i is there while the
    current phase's count is above i, so phases add and remove the last devices first."""
    n, end = cfg.devices.count, cfg.duration_s
    phases = cfg.devices.phases
    if not phases:
        return [((0.0, end),)] * n
    bounds = [p.at_s for p in phases] + [end]
    out: list[tuple[Interval, ...]] = []
    for i in range(n):
        spans: list[Interval] = []
        for k, phase in enumerate(phases):
            start, stop = bounds[k], min(bounds[k + 1], end)
            if phase.count > i and stop > start:
                if spans and spans[-1][1] == start:
                    spans[-1] = (spans[-1][0], stop)
                else:
                    spans.append((start, stop))
        out.append(tuple(spans))
    return out


def join_actions(device_ids: list[str], spans: list[tuple[Interval, ...]]) -> list[Action]:
    """A `join_device` for every interval after a device's first (its first process covers
    the first one; each later one is a new process)."""
    return [Action(start, "join_device", dev, until_s=stop)
            for dev, intervals in zip(device_ids, spans, strict=True)
            for start, stop in intervals[1:]]
