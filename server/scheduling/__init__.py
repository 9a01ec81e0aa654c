"""Scheduler policies, chosen by name in the scenario (`[policy] name = ...`)."""

from __future__ import annotations

from typing import Any

from server.scheduling.base import Policy, PolicyError
from server.scheduling.baselines import DeviceOnlyPolicy, ServerOnlyPolicy, UniformAIMDPolicy
from server.scheduling.gears import GearsPolicy
from server.scheduling.multitasc import MultiTASCPolicy
from server.scheduling.multitasc_pp import MultiTASCPlusPlusPolicy
from server.scheduling.static import StaticPolicy

POLICIES: dict[str, Any] = {
    cls.name: cls for cls in (StaticPolicy, MultiTASCPolicy, MultiTASCPlusPlusPolicy,
                              ServerOnlyPolicy, DeviceOnlyPolicy, UniformAIMDPolicy, GearsPolicy)
}


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
    policy: Policy = cls(params or {})
    return policy
