"""Turn a scenario's `[[faults]]` into a timeline the harness executes. Pure: no processes here.

Process faults (kill and restart a device or the server) become timed `FaultAction`s the
orchestrator carries out; link faults (cuts, packet loss) become `LinkFault` windows handed to
the devices at start, which apply them to their emulated links. Targets are drawn from a
generator seeded by the scenario, so a scenario always injects the same faults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cascade_testbed.common.config import FaultSpec, LinkFault, ScenarioConfig, ScenarioError
from cascade_testbed.testbed.timeline import Action as FaultAction


@dataclass(frozen=True, slots=True)
class FaultPlan:
    actions: tuple[FaultAction, ...] = ()
    """Sorted by time. link_down / link_up are there only so the events show them."""
    links: dict[str, tuple[LinkFault, ...]] = field(default_factory=dict)

    @property
    def injected(self) -> int:
        """Faults injected: every kill and every link window counts once."""
        return sum(a.kind in ("kill_device", "kill_server", "kill_node", "link_down")
                   for a in self.actions)


def occurrences(fault: FaultSpec, duration_s: float) -> list[float]:
    """Run times of a fault's injections that fall inside the run."""
    if fault.at_s >= duration_s:
        return []
    if fault.every_s is None:
        return [fault.at_s]
    n = math.ceil((duration_s - fault.at_s) / fault.every_s)
    return [fault.at_s + k * fault.every_s for k in range(n)]


def pick_targets(fault: FaultSpec, devices: Sequence[tuple[str, str]],
                 rng: np.random.Generator, where: str) -> list[str]:
    """The device ids a fault hits: named ones, else `count` drawn from its tier (or all)."""
    known = [d for d, _ in devices]
    if fault.devices:
        unknown = sorted(set(fault.devices) - set(known))
        if unknown:
            raise ScenarioError(f"{where}: unknown devices {unknown}")
        return list(fault.devices)
    pool = [d for d, tier in devices if fault.tier is None or tier == fault.tier]
    if not pool:
        return []
    chosen = rng.choice(len(pool), size=min(fault.count, len(pool)), replace=False)
    return [pool[i] for i in sorted(chosen)]


def plan_faults(cfg: ScenarioConfig, devices: Sequence[tuple[str, str]]) -> FaultPlan:
    """The run's fault timeline for `devices` given as (device id, tier) pairs."""
    actions: list[FaultAction] = []
    links: dict[str, list[LinkFault]] = {}
    end = cfg.duration_s
    for i, fault in enumerate(cfg.faults):
        where = f"faults[{i}] ({fault.kind})"
        for k, at in enumerate(occurrences(fault, end)):
            if fault.kind == "kill_node":  # a cluster run checks the name against its nodes
                actions.append(FaultAction(at, "kill_node", str(fault.node), fault.signal, i))
                continue
            if fault.kind == "kill_server":
                actions.append(FaultAction(at, "kill_server", signal=fault.signal, fault=i))
                if fault.restart_after_s is not None and at + fault.restart_after_s < end:
                    actions.append(FaultAction(at + fault.restart_after_s, "restart_server",
                                               fault=i))
                continue
            rng = np.random.default_rng([cfg.seed, 0xFA17, i, k])
            for dev in pick_targets(fault, devices, rng, where):
                if fault.kind == "kill_device":
                    actions.append(FaultAction(at, "kill_device", dev, fault.signal, i))
                    if fault.restart_after_s is not None and at + fault.restart_after_s < end:
                        actions.append(FaultAction(at + fault.restart_after_s,
                                                   "restart_device", dev, fault=i))
                    continue
                loss = 1.0 if fault.kind == "cut_link" else fault.loss
                stop = min(at + fault.duration_s, end)
                links.setdefault(dev, []).append(LinkFault(at, stop, loss, fault.direction))
                what = "cut" if loss >= 1 else f"loss {loss:g}"
                detail = f"{what} ({fault.direction})"
                actions.append(FaultAction(at, "link_down", dev, fault=i, detail=detail))
                actions.append(FaultAction(stop, "link_up", dev, fault=i, detail=detail))
    return FaultPlan(tuple(sorted(actions)),
                     {dev: tuple(sorted(w, key=lambda f: f.start_s)) for dev, w in links.items()})
