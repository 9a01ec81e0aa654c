"""Scheduler policies, chosen in the scenario (`[policy] name = ...`) by a built-in name, an
installed entry point's name, or `package.module:Class` (see `plugins` and docs/policies.md)."""

from __future__ import annotations

from cascade_testbed.server.scheduling.base import Policy, PolicyError
from cascade_testbed.server.scheduling.plugins import BUILTINS, check_policy, make_policy, resolve

POLICIES = BUILTINS
"""The built-in policies by name."""

__all__ = ["POLICIES", "Policy", "PolicyError", "check_policy", "make_policy", "resolve"]
