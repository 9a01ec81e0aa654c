"""Scheduler policies, chosen by name in the scenario (`[policy] name = ...`)."""

from __future__ import annotations

from typing import Any

from server.scheduling.base import Policy, PolicyError
from server.scheduling.multitasc import MultiTASCPolicy
from server.scheduling.static import StaticPolicy

POLICIES: dict[str, Any] = {
    StaticPolicy.name: StaticPolicy,
    MultiTASCPolicy.name: MultiTASCPolicy,
}


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
    policy: Policy = cls(params or {})
    return policy
