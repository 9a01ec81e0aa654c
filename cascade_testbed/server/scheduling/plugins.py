"""Finding a policy class by what a scenario or the command line calls it: a built-in name
(`multitasc`), the name of an entry point of the group `cascade_testbed.policies` an installed
package declares (`constant = "cascade_testbed.examples.constant:ConstantPolicy"`), or a
`package.module:Class` spec. Pure lookup: no sockets, no asyncio. The server builds its
policy through here, and the harness checks a scenario's policy and params through here
before it starts any process.

This is the one place the four packages import a module by name: a user's policy is named in
a scenario, so no reading of the source can follow it. The spec is checked before anything is
imported (`common.names.is_policy_spec`), and the class must subclass `Policy`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cascade_testbed.common.names import check_policy_name, is_name, is_policy_spec, shown
from cascade_testbed.server.scheduling.base import Policy, PolicyError, check_params
from cascade_testbed.server.scheduling.baselines import (
    DeviceOnlyPolicy,
    ServerOnlyPolicy,
    UniformAIMDPolicy,
)
from cascade_testbed.server.scheduling.gears import GearsPolicy
from cascade_testbed.server.scheduling.multitasc import MultiTASCPolicy
from cascade_testbed.server.scheduling.multitasc_pp import MultiTASCPlusPlusPolicy
from cascade_testbed.server.scheduling.static import StaticPolicy

ENTRY_POINT_GROUP = "cascade_testbed.policies"
BUILTINS: dict[str, type] = {
    cls.name: cls for cls in (StaticPolicy, MultiTASCPolicy, MultiTASCPlusPlusPolicy,
                              ServerOnlyPolicy, DeviceOnlyPolicy, UniformAIMDPolicy, GearsPolicy)
}
"""The policies of this package, by name; a built-in name wins over an entry point's."""
_PROTECTED = ("cascade_testbed.testbed", "cascade_testbed.emulated_devices")
"""Packages a policy cannot live in: the server must not import the harness or the devices."""


@dataclass(frozen=True, slots=True)
class PolicySpec:
    module: str
    attr: str

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


def parse_spec(text: str) -> PolicySpec:
    """`package.module:Class` -> its parts, or `PolicyError` (nothing is imported here)."""
    if not is_policy_spec(text):
        raise PolicyError(f"policy spec must be 'package.module:Class' (dotted identifiers, "
                          f"a colon, an identifier); got {shown(text)}")
    module, attr = text.split(":")
    inside = next((p for p in _PROTECTED if module == p or module.startswith(p + ".")), None)
    if inside:
        raise PolicyError(f"policy {text!r}: a policy cannot live in the "
                          f"{inside!r} package (the server never imports it)")
    return PolicySpec(module, attr)


def load_spec(text: str) -> type:
    """Import the module a spec names and return its class, checked to be a `Policy`."""
    spec = parse_spec(text)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise PolicyError(f"policy {text!r}: cannot import {spec.module!r} ({exc})") from None
    except Exception as exc:  # the user's module failed while it was imported
        raise PolicyError(f"policy {text!r}: importing {spec.module!r} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    cls = getattr(module, spec.attr, None)
    if cls is None:
        raise PolicyError(f"policy {text!r}: module {spec.module!r} has no {spec.attr!r}")
    return check_class(cls, text)


def check_class(cls: object, where: str) -> type:
    """`cls` is a concrete subclass of `Policy` with a usable `name` and a constructor that
    takes the params table; otherwise one line saying what is wrong."""
    what = f"class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
    if not isinstance(cls, type) or Policy not in cls.__mro__ or cls is Policy:
        raise PolicyError(f"policy {where!r}: {what}, not a subclass of "
                          "cascade_testbed.server.scheduling.base.Policy")
    missing = [m for m in ("join", "leave", "step") if getattr(cls, m) is getattr(Policy, m)]
    if missing:
        raise PolicyError(f"policy {where!r}: {cls.__name__} does not define "
                          f"{', '.join(missing)}")
    if not is_name(getattr(cls, "name", None), "+"):
        raise PolicyError(f"policy {where!r}: {cls.__name__}.name must be a short name "
                          f"(letters, digits, '.', '_', '-', '+'); got "
                          f"{shown(getattr(cls, 'name', None))}")
    try:
        inspect.signature(cls).bind({})
    except (TypeError, ValueError):
        raise PolicyError(f"policy {where!r}: {cls.__name__}(params) must accept the params "
                          "table as its one argument") from None
    defaults = getattr(cls, "DEFAULTS", {})
    if not isinstance(defaults, Mapping) or not all(isinstance(k, str) for k in defaults):
        raise PolicyError(f"policy {where!r}: {cls.__name__}.DEFAULTS must be a dict of "
                          "parameter name -> default")
    return cls


def entry_points() -> dict[str, str]:
    """Installed policies: entry-point name -> `module:Class`, for names that are names and
    values that are specs (others are left out: `testbed policies` shows them as broken)."""
    return {ep.name: ep.value for ep in _group()
            if is_name(ep.name, "+") and is_policy_spec(ep.value)}


def _group() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def resolve(name: str) -> type:
    """The policy class for a built-in name, an entry-point name or a spec."""
    try:
        check_policy_name(name)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    if name in BUILTINS:
        return BUILTINS[name]
    if is_policy_spec(name):
        return load_spec(name)
    installed = entry_points()
    if name in installed:
        return load_spec(installed[name])
    known = ", ".join(sorted({*BUILTINS, *installed}))
    raise PolicyError(f"unknown policy {name!r}; known: {known} (or 'package.module:Class')")


def declared_params(cls: type) -> dict[str, Any]:
    """A policy's parameters and their defaults: its `DEFAULTS`, the table `check_params`
    merges the scenario's `[policy] params` over (every built-in declares one)."""
    return dict(getattr(cls, "DEFAULTS", {}))


def check_policy(name: str, params: Mapping[str, Any] | None = None) -> type:
    """What the harness runs before any process starts: the policy resolves, and its params
    have known names and the right kinds. Returns the class."""
    cls = resolve(name)
    check_params(name, params or {}, declared_params(cls))
    return cls


def make_policy(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    """Build the policy a scenario names (the server's one way to get its scheduler)."""
    policy: Policy = resolve(name)(dict(params or {}))
    return policy


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """One line of `testbed policies`."""

    name: str
    source: str
    """"built-in", or "entry point" with the distribution that declares it."""
    target: str
    """`module:Class`."""
    params: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    error: str = ""
    """Why it cannot be used (an entry point that does not load); "" when it can."""


def available() -> list[PolicyEntry]:
    """Every policy that can be named: the built-ins, then the installed entry points (each
    loaded, so a broken one shows its error instead of failing a run later)."""
    out = [PolicyEntry(name, "built-in", f"{cls.__module__}:{cls.__qualname__}",
                       declared_params(cls), _first_line(cls)) for name, cls in BUILTINS.items()]
    for ep in sorted(_group(), key=lambda e: e.name):
        dist = getattr(ep.dist, "name", None) or "?"
        source, name = f"entry point ({dist})", ep.name
        if not is_name(name, "+"):
            out.append(PolicyEntry(shown(name), source, shown(ep.value),
                                   error="the entry point's name is not a name"))
            continue
        if name in BUILTINS:
            out.append(PolicyEntry(name, source, shown(ep.value),
                                   error="shadowed by the built-in of the same name"))
            continue
        try:
            cls = load_spec(ep.value)
        except PolicyError as exc:
            out.append(PolicyEntry(name, source, shown(ep.value), error=str(exc)))
            continue
        out.append(PolicyEntry(name, source, ep.value, declared_params(cls), _first_line(cls)))
    return out


def _first_line(cls: type) -> str:
    """The first sentence of the class's own docstring (not `Policy`'s), else its module's."""
    own = cls.__dict__.get("__doc__")
    doc = inspect.cleandoc(own) if own else inspect.getdoc(inspect.getmodule(cls)) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    return para.split(". ")[0].rstrip(".")
