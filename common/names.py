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
