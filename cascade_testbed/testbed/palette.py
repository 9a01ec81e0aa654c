"""Tier colours and line styles, defined once: the report's figures
(`testbed.results.figures`) draw with them, and the live view's page receives them from
`testbed.dashboard` in its rows and `/series`, so the two cannot drift apart.

Styles differ per tier in more than colour: where two tiers hold the same value (thresholds
often do) the lines lie on top of each other, so the weakest tier is drawn first and widest,
solid, and each stronger one narrower and dashed on top of it; every line stays visible and no
value is moved.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from cascade_testbed.common.config import TIER_ORDER


@dataclass(frozen=True)
class TierStyle:
    color: str
    """"#rrggbb": both matplotlib and the page's canvas take it."""
    dash: tuple[int, ...]
    """On/off lengths in points (matplotlib) or CSS pixels (uPlot); () is solid."""
    width: float


TIER_STYLES = {
    "low": TierStyle("#d62728", (), 3.0),
    "mid": TierStyle("#ff7f0e", (7, 3), 2.0),
    "high": TierStyle("#1f77b4", (2, 2), 1.5),
}
"""The default tiers (`common.config.TIER_ORDER`), weakest first."""
OTHER_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
"""For tiers a scenario names beyond the defaults, chosen by a stable hash of the name."""


def tier_style(tier: str) -> TierStyle:
    known = TIER_STYLES.get(tier)
    if known is not None:
        return known
    color = OTHER_COLORS[zlib.crc32(tier.encode()) % len(OTHER_COLORS)]
    return TierStyle(color, (4, 2, 1, 2), 1.5)


def tier_color(tier: str) -> str:
    return tier_style(tier).color


def tier_order(tiers: Iterable[str]) -> list[str]:
    """Default tiers weakest first, then any others by name: the same order everywhere."""
    rank = {t: i for i, t in enumerate(TIER_ORDER)}
    return sorted(tiers, key=lambda t: (rank.get(t, len(rank)), t))


def tier_styles(tiers: Iterable[str]) -> dict[str, dict[str, object]]:
    """JSON for the page: tier -> {"color", "dash", "width"}."""
    return {t: {"color": s.color, "dash": list(s.dash), "width": s.width}
            for t in tiers for s in (tier_style(t),)}
