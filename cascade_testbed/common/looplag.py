"""Event-loop lag as a mergeable histogram: pure arithmetic, shared by the devices (which
record it) and the harness (which merges every device's into summary.json).

Lag is how late a timer callback ran after it was due. Fixed 50 µs buckets, kept sparse, so a
device's whole run fits in a few dozen numbers and merging devices is adding counts; a
percentile is the upper edge of the bucket that holds its nearest rank (never optimistic by
more than one bucket), the max is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BUCKET_US = 50
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}


@dataclass(slots=True)
class LagHistogram:
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    max_s: float = 0.0

    def add(self, lateness_s: float) -> None:
        """One timer firing `lateness_s` after it was due (early counts as on time)."""
        lateness_s = max(lateness_s, 0.0)
        b = int(lateness_s * 1e6 // BUCKET_US)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        self.max_s = max(self.max_s, lateness_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (keys become strings in JSON; `merge` accepts both)."""
        return {"bucket_us": BUCKET_US, "n": self.n, "max_ms": round(self.max_s * 1e3, 3),
                "counts": {str(b): c for b, c in sorted(self.counts.items())}}


def merge(parts: Iterable[Mapping[str, Any] | None]) -> LagHistogram:
    """Several histograms (as `to_dict` wrote them; None for a device without one) in one."""
    out = LagHistogram()
    for p in parts:
        if not p:
            continue
        if p.get("bucket_us", BUCKET_US) != BUCKET_US:
            raise ValueError(f"loop lag buckets of {p['bucket_us']} µs, expected {BUCKET_US}")
        for b, c in p.get("counts", {}).items():
            out.counts[int(b)] = out.counts.get(int(b), 0) + int(c)
        out.n += int(p.get("n", 0))
        out.max_s = max(out.max_s, float(p.get("max_ms", 0.0)) / 1e3)
    return out


def percentile_ms(hist: LagHistogram, q: float) -> float | None:
    """Upper edge (ms) of the bucket holding the nearest-rank `q`-th percentile, capped at
    the exact max."""
    if hist.n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * hist.n))
    seen = 0
    for b in sorted(hist.counts):
        seen += hist.counts[b]
        if seen >= rank:
            return round(min((b + 1) * BUCKET_US / 1e3, hist.max_s * 1e3), 3)
    raise AssertionError("unreachable: ranks never exceed the total")


def lag_summary(hist: LagHistogram) -> dict[str, float | int | None]:
    """Percentiles, max and number of probes, for summary.json."""
    out: dict[str, float | int | None] = {k: percentile_ms(hist, q)
                                          for k, q in PERCENTILES.items()}
    out["max"] = round(hist.max_s * 1e3, 3) if hist.n else None
    out["n"] = hist.n
    return out
