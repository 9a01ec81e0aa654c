"""summary.json's `nodes`: what each node of a cluster run held and how its samples fared, from
the run's `placement` event alone (so `testbed report` rebuilds it from the folder)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def node_figures(placed: Mapping[str, Any], per_device: Sequence[Mapping[str, Any]],
                 lost: set[str]) -> dict[str, dict[str, Any]]:
    """summary.json's `nodes`: for each node that ran devices, how many of each tier, their
    samples (generated, completed, aborted, lost, SLO satisfaction), whether it had the server
    and whether it was lost. `placed` is a `placement_event`; `per_device` the summary's."""
    by_id = {d["device_id"]: d for d in per_device}
    out: dict[str, dict[str, Any]] = {}
    for name, info in placed["nodes"].items():
        mine = [(d, tier) for d, (node, tier) in placed["devices"].items() if node == name]
        if not mine:
            continue
        rows = [by_id[d] for d, _ in mine if d in by_id]
        completed = sum(int(r["samples"]) for r in rows)
        met = sum(r["slo_satisfaction"] * r["samples"] for r in rows
                  if r.get("slo_satisfaction") is not None)
        out[name] = {
            "devices": len(mine), "ip": info["ip"], "head": info["head"],
            "tiers": dict(sorted(Counter(t for _, t in mine).items())),
            "generated": sum(int(r["generated"]) for r in rows), "completed": completed,
            "aborted": sum(int(r["aborted"]) for r in rows),
            "lost": sum(int(r.get("lost") or 0) for r in rows),
            "slo_satisfaction": round(met / completed, 4) if completed else None,
            "server": name == placed["server"], "lost_node": name in lost}
        idn = sorted(n for n, at in (placed.get("idn_nodes") or {}).items() if at == name)
        if idn:
            out[name]["idn_nodes"] = idn
    return out
