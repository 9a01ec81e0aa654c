"""What a run provisioned: replica-seconds of the server's emulated accelerator over the
arrivals, from the server's `replicas` events. Pure.

A system's cost is what it provisions, busy or idle (CascadeServe counts the GPUs a system
needs): the server starts with `server.replicas` and every `replicas` event changes the count
from its time on. Counted over the time samples arrived (run time 0 to the end of arrivals),
the same window for every arm, so an arm is not charged for the harness's start-up or drain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def provisioned(events: Iterable[Mapping[str, Any]], initial: int, start: float | None,
                arrivals_s: float, generated: int) -> dict[str, Any]:
    """{replica_seconds, per_1000_samples, mean_replicas, peak_replicas} over
    [start, start + arrivals_s]; the counts of server events only."""
    changes = sorted((float(e["t"]), int(e["replicas"])) for e in events
                     if e.get("kind") == "replicas" and e.get("source", "server") == "server"
                     and "replicas" in e and "t" in e)
    if start is None or arrivals_s <= 0:
        return {"replica_seconds": 0.0, "per_1000_samples": None, "mean_replicas": None,
                "peak_replicas": initial}
    end = start + arrivals_s
    count, t, seconds, peak = initial, start, 0.0, initial
    for at, n in changes:
        if at <= start:
            count = n
            peak = n
            continue
        if at >= end:
            break
        seconds += count * (at - t)
        t, count = at, n
        peak = max(peak, n)
    seconds += count * (end - t)
    return {"replica_seconds": round(seconds, 3),
            "per_1000_samples": round(1000.0 * seconds / generated, 4) if generated else None,
            "mean_replicas": round(seconds / arrivals_s, 3), "peak_replicas": peak}
