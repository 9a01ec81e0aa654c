"""Names are names: the one check for every name that can reach a file path, a metric label or
a log line (scenario names, tiers, device ids, IDN nodes, models).

A name is 1-64 characters of ASCII letters, digits, `.`, `_` and `-`, starting with a letter or
a digit: never a path (no `/`, no `..` on its own, no leading dot), never a control character,
never longer than a log line should carry. Checked where names enter: the scenario loader, the
CLI and the server's door.
"""

from __future__ import annotations

import re
from typing import Final

NAME_MAX_LEN: Final = 64
_NAME: Final = re.compile(f"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX_LEN - 1}}}")
RULE: Final = (f"1-{NAME_MAX_LEN} characters of letters, digits, '.', '_' and '-', starting "
               "with a letter or a digit")


class BadName(ValueError):
    """A name that could become a path, or is not printable in one short line."""


def is_name(value: object, extra: str = "") -> bool:
    """`extra`: more characters allowed after the first (a policy may be called `multitasc++`)."""
    if not isinstance(value, str):
        return False
    return _NAME.fullmatch(value.translate({ord(c): "_" for c in extra}) if extra else value) \
        is not None


def check_name(value: object, what: str, extra: str = "") -> str:
    """`value` if it is a name, else `BadName` saying which field and what a name is (the
    value itself is shown only as a short, escaped prefix: it may be anything)."""
    if is_name(value, extra):
        return value  # type: ignore[return-value]
    raise BadName(f"{what} must be a name ({RULE}{', or ' + repr(extra) if extra else ''}); "
                  f"got {shown(value)}")


def shown(value: object, limit: int = 40) -> str:
    """A short, printable rendering of untrusted input for an error message or a log line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


POLICY_SPEC_MAX_LEN: Final = 200
_IDENT: Final = "[A-Za-z_][A-Za-z0-9_]*"
_POLICY_SPEC: Final = re.compile(f"{_IDENT}(?:\\.{_IDENT})*:{_IDENT}")
POLICY_RULE: Final = (f"a name ({RULE}, or '+'), or 'package.module:Class' of at most "
                      f"{POLICY_SPEC_MAX_LEN} characters")


def is_policy_spec(value: object) -> bool:
    """`package.module:Class`: dotted ASCII identifiers, a colon, an identifier. Checked before
    anything is imported, so a spec can never be a path or carry more than a name."""
    return isinstance(value, str) and len(value) <= POLICY_SPEC_MAX_LEN \
        and _POLICY_SPEC.fullmatch(value) is not None


def check_policy_name(value: object, what: str = "policy") -> str:
    """A built-in or entry-point policy name (`multitasc++`), or a `module:Class` spec."""
    if is_name(value, "+") or is_policy_spec(value):
        return value  # type: ignore[return-value]
    raise BadName(f"{what} must be {POLICY_RULE}; got {shown(value)}")


def policy_label(value: str) -> str:
    """A policy as it may appear in a run folder's name or a metric label: a policy name as it
    is, a spec with its colon made a dot (`examples.constant.ConstantPolicy`), cut to its last
    `NAME_MAX_LEN` characters when longer (the class is the telling end)."""
    if is_name(value, "+"):
        return value
    check_policy_name(value)
    label = value.replace(":", ".")[-NAME_MAX_LEN:].lstrip("._")
    return label or "policy"
