"""The summary's `energy`: device energy (from the records' columns and the devices' own
idle and control figures), per sample, per device and per tier, and the server's (busy time
from the batcher x active power, the rest of the provisioned replica-seconds x idle power).
Pure; the joules come from `common.energy`'s literature power models (docs/energy.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cascade_testbed.common.config import ServerPowerSpec
from cascade_testbed.common.energy import server_j
from cascade_testbed.common.records import SampleRecord
from cascade_testbed.testbed.results.metrics import DeviceTally

NOTE = ("modelled from literature power figures (docs/energy.md), not measured on this host")


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 6)


def _per(num: float, den: float) -> float | None:
    return _r(num / den) if den else None


def _bucket() -> dict[str, float]:
    return {"samples": 0, "compute_j": 0.0, "radio_j": 0.0, "idle_j": 0.0,
            "control_radio_j": 0.0}


def device_energy(records: Iterable[SampleRecord], devices: Sequence[DeviceTally]
                  ) -> dict[str, dict[str, float]]:
    """device id -> its samples' compute and radio joules, its idle and control joules."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        b = out.setdefault(r.device_id, _bucket())
        b["samples"] += 1
        if math.isfinite(r.energy_compute_j):
            b["compute_j"] += r.energy_compute_j
        if math.isfinite(r.energy_radio_j):
            b["radio_j"] += r.energy_radio_j
    for d in devices:
        b = out.setdefault(d.device_id, _bucket())
        b["idle_j"] += d.energy_idle_j
        b["control_radio_j"] += d.energy_control_j
    for b in out.values():
        b["total_j"] = b["compute_j"] + b["radio_j"] + b["idle_j"] + b["control_radio_j"]
    return out


def _group(buckets: Iterable[Mapping[str, float]], generated: int) -> dict[str, Any]:
    tot = _bucket()
    n = 0
    for b in buckets:
        n += 1
        for k in tot:
            tot[k] += b[k]
    total = tot["compute_j"] + tot["radio_j"] + tot["idle_j"] + tot["control_radio_j"]
    return {
        "devices": n,
        "total_j": _r(total),
        "compute_j": _r(tot["compute_j"]), "radio_j": _r(tot["radio_j"]),
        "idle_j": _r(tot["idle_j"]), "control_radio_j": _r(tot["control_radio_j"]),
        "compute_radio_j_per_sample": _per(tot["compute_j"] + tot["radio_j"], tot["samples"]),
        "device_j_per_sample": _per(total, generated),
        "j_per_device": _per(total, n),
    }


def energy_summary(records: Sequence[SampleRecord], devices: Sequence[DeviceTally],
                   generated: Mapping[str, int], tier_of: Mapping[str, str],
                   tier_order: Sequence[str], server_power: ServerPowerSpec,
                   busy_s: float | None, provisioned_s: float | None) -> dict[str, Any]:
    """summary.json's `energy`.

    `compute_radio_j_per_sample`: the records' own energy (compute + radio) per answered sample;
    `device_j_per_sample`: all device energy (idle and control traffic too) per generated
    sample; `total_j_per_sample` adds the server's. `generated` is per device."""
    per_dev = device_energy(records, devices)
    out: dict[str, Any] = {"note": NOTE, **_group(per_dev.values(), sum(generated.values()))}
    tiers: dict[str, list[str]] = {}
    for dev in sorted(per_dev):
        tiers.setdefault(tier_of.get(dev, "?"), []).append(dev)
    rank = {t: i for i, t in enumerate(tier_order)}
    out["per_tier"] = {
        tier: _group((per_dev[d] for d in devs), sum(generated.get(d, 0) for d in devs))
        for tier, devs in sorted(tiers.items(), key=lambda kv: (rank.get(kv[0], len(rank)),
                                                                kv[0]))}
    out["by_device_j"] = {d: _r(b["total_j"]) for d, b in sorted(per_dev.items())}
    if busy_s is None or provisioned_s is None:
        out["server"] = None
        out["server_j"] = None
        out["total_j"] = out["total_j"]
        out["total_j_per_sample"] = None
        return out
    srv = server_j(server_power, busy_s, max(provisioned_s, busy_s))
    out["server"] = {"active_w": server_power.active_w, "idle_w": server_power.idle_w,
                     "busy_s": _r(busy_s), "provisioned_s": _r(max(provisioned_s, busy_s)),
                     **{k: _r(v) for k, v in srv.items()}}
    out["server_j"] = _r(srv["total_j"])
    n = sum(generated.values())
    out["total_j_per_sample"] = _per((out["total_j"] or 0.0) + srv["total_j"], n)
    return out


def server_busy_s(server_facts: Mapping[str, Any] | None,
                  events: Iterable[Mapping[str, Any]]) -> float | None:
    """The batcher's busy seconds over the run: the live harness's last status of each server
    process, else the totals its `server_stop` events carry (a rebuilt summary)."""
    totals = (server_facts or {}).get("totals") or {}
    if isinstance(totals.get("busy_s"), int | float):
        return float(totals["busy_s"])
    busy = [float(e["totals"]["busy_s"]) for e in events if e.get("kind") == "server_stop"
            and isinstance(e.get("totals"), dict)
            and isinstance(e["totals"].get("busy_s"), int | float)]
    return sum(busy) if busy else None
