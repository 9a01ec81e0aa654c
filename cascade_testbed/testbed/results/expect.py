"""`--expect "slo_satisfaction>=0.9"`: a run as a pass/fail check. Pure: text in, expectations
out; a summary and expectations in, the unmet ones out as problems (`testbed.verdict`), so a
failed expectation ends the command like any other failed run (exit 1, `run failed: ...`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cascade_testbed.testbed.results.headline import ALIASES, METRICS, canonical, lookup

OPERATORS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt,
}
_PATTERN: Final = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")


class ExpectError(ValueError):
    """An expectation that cannot be read; its message says what is accepted."""


@dataclass(frozen=True, slots=True)
class Expectation:
    text: str
    """As the user wrote it, without spaces: how failures name it."""
    metric: str
    """The summary path it checks (aliases resolved)."""
    op: str
    bound: float

    def holds(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.bound)


def known_metrics() -> str:
    return ", ".join([*METRICS, *ALIASES])


def parse_expectation(text: str) -> Expectation:
    """`metric OP number`, OP one of >=, <=, >, <, ==; `ExpectError` for anything else."""
    match = _PATTERN.match(text)
    if not match:
        raise ExpectError(f"--expect {text[:80]!r}: write it as METRIC OP NUMBER, OP one of "
                          f"{', '.join(OPERATORS)} (e.g. \"slo_satisfaction>=0.9\")")
    name, op, number = match.groups()
    metric = canonical(name)
    if metric is None:
        raise ExpectError(f"--expect: unknown metric {name[:80]!r}; known: {known_metrics()}")
    try:
        bound = float(number)
    except ValueError:
        bound = math.nan
    if not math.isfinite(bound):
        raise ExpectError(f"--expect {text[:80]!r}: {number[:40]!r} is not a finite number")
    return Expectation(f"{name}{op}{number}", metric, op, bound)


def parse_all(texts: Iterable[str]) -> list[Expectation]:
    return [parse_expectation(t) for t in texts]


def unmet(summary: Mapping[str, Any], expectations: Iterable[Expectation]) -> list[str]:
    """One problem per expectation the summary does not meet (a missing value never meets
    one: a run without answers has no latency to be low)."""
    problems = []
    for e in expectations:
        value = lookup(summary, e.metric)
        if not e.holds(value):
            got = "no value" if value is None else f"{value:.6g}"
            problems.append(f"expected {e.text}, got {got}")
    return problems


def with_expectations(summary: dict[str, Any], expectations: list[Expectation]
                      ) -> dict[str, Any]:
    """The summary with the outcome of each expectation (`expectations`: text, metric, ok) and
    the unmet ones among its run's problems; without expectations, the summary itself.
    summary.json keeps what the run did, whatever was expected of it: this is what the command
    prints, judges and gives with --json."""
    if not expectations:
        return summary
    run = summary.get("run") or {}
    checks = [{"expect": e.text, "metric": e.metric, "ok": not unmet(summary, [e])}
              for e in expectations]
    problems = [*run.get("problems", []), *unmet(summary, expectations)]
    return {**summary, "run": {**run, "problems": problems}, "expectations": checks}
