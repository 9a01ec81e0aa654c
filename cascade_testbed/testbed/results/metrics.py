"""Pure metric math over sample records: SLO satisfaction, accuracy, forward rate, percentiles.

Definitions are DESIGN.md's and the same everywhere: SLO satisfaction and forward rate are over
*generated* samples (a sample without an answer counts as a miss), accuracy over final answers,
throughput is final answers per second of the run. Every generated sample is `completed` (it
has a record), `aborted` (its device process was killed while working on it) or `lost` (neither:
a bug, expected to be 0). Percentiles are exact (nearest rank over every latency),
not bucketed, so they can be merged simply by concatenating records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade_testbed.common.looplag import lag_summary, merge
from cascade_testbed.common.records import CAUSES, SOURCES, SampleRecord

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


@dataclass(frozen=True, slots=True)
class DeviceTally:
    """What a device says about itself at the end, beside its records."""

    device_id: str
    tier: str
    generated: int
    final_threshold: float | None
    late_replies: int = 0
    aborted: int = 0
    """Samples in flight when one of its processes was killed."""
    incarnations: int = 1
    requests_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    loop_lag: tuple[Mapping[str, Any], ...] = ()
    """Loop-lag histograms of its processes (`common.looplag`), one per incarnation."""
    energy_idle_j: float = 0.0
    """Energy while not computing, and of radio traffic that is no sample's (reports,
    thresholds, late replies), over its processes (`testbed.results.energy`)."""
    energy_control_j: float = 0.0


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Exact nearest-rank percentiles (HdrHistogram's definition), mean and max."""
    arr = np.asarray(latencies_ms, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {k: None for k in (*PERCENTILES, "mean", "max")}
    out: dict[str, float | None] = {
        k: round(float(np.percentile(arr, p, method="inverted_cdf")), 3)
        for k, p in PERCENTILES.items()
    }
    out["mean"] = round(float(arr.mean()), 3)
    out["max"] = round(float(arr.max()), 3)
    return out


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 5) if den else None


def group_stats(records: Sequence[SampleRecord], generated: int, slo_ms: float,
                aborted: int = 0) -> dict[str, Any]:
    """Counts, rates and latency of one group (a device, a tier, or the whole run)."""
    counts = {s: 0 for s in SOURCES}
    causes = dict.fromkeys(CAUSES, 0)
    correct = forwarded = met = on_time = 0
    for r in records:
        counts[r.source] += 1
        if r.cause:
            causes[r.cause] = causes.get(r.cause, 0) + 1
        correct += r.correct
        forwarded += r.forwarded
        in_time = r.latency_ms <= slo_ms
        met += in_time
        on_time += in_time and r.correct
    completed = len(records)
    return {
        "samples": {"generated": generated, "completed": completed, "aborted": aborted,
                    "lost": max(generated - completed - aborted, 0), **counts,
                    "forwarded": forwarded,
                    "causes": {c: n for c, n in causes.items() if n}},
        "slo_satisfaction": _ratio(met, generated),
        "accuracy": _ratio(correct, completed),
        "accuracy_at_slo": _ratio(on_time, generated),
        "forward_rate": _ratio(forwarded, generated),
        "latency_ms": latency_summary([r.latency_ms for r in records]),
    }


def summarize(records: Iterable[SampleRecord], devices: Sequence[DeviceTally], *,
              slo_ms: float, duration_s: float, tier_order: Sequence[str] = ()
              ) -> dict[str, Any]:
    """The numbers of summary.json (everything but run metadata, which the harness adds).
    Tiers are listed in `tier_order`, then any others by name."""
    by_device: dict[str, list[SampleRecord]] = {d.device_id: [] for d in devices}
    all_records: list[SampleRecord] = []
    for r in records:
        by_device.setdefault(r.device_id, []).append(r)
        all_records.append(r)
    tallies = {d.device_id: d for d in devices}
    # A device that died before reporting still generated at least what it recorded.
    generated = {dev: max(tallies[dev].generated if dev in tallies else 0, len(recs))
                 for dev, recs in by_device.items()}
    aborted = {dev: tallies[dev].aborted if dev in tallies else 0 for dev in by_device}
    overall = group_stats(all_records, sum(generated.values()), slo_ms, sum(aborted.values()))
    per_device = []
    tiers: dict[str, list[str]] = {}
    for dev, recs in sorted(by_device.items()):
        tally = tallies.get(dev)
        tier = tally.tier if tally else (recs[0].tier if recs else "?")
        tiers.setdefault(tier, []).append(dev)
        stats = group_stats(recs, generated[dev], slo_ms, aborted[dev])
        per_device.append({
            "device_id": dev, "tier": tier,
            "samples": stats["samples"]["completed"], "generated": generated[dev],
            "aborted": aborted[dev], "lost": stats["samples"]["lost"],
            "incarnations": tally.incarnations if tally else 1,
            "slo_satisfaction": stats["slo_satisfaction"], "accuracy": stats["accuracy"],
            "forward_rate": stats["forward_rate"],
            "final_threshold": tally.final_threshold if tally else None,
            "late_replies": tally.late_replies if tally else 0,
            "latency_ms": {k: stats["latency_ms"][k] for k in ("p50", "p95", "p99")},
        })
    rank = {t: i for i, t in enumerate(tier_order)}
    per_tier = {
        tier: {"devices": len(devs), **group_stats(
            [r for d in devs for r in by_device[d]], sum(generated[d] for d in devs), slo_ms,
            sum(aborted[d] for d in devs))}
        for tier, devs in sorted(tiers.items(), key=lambda kv: (rank.get(kv[0], len(rank)),
                                                                kv[0]))
    }
    n = len(all_records)
    return {
        "samples": overall["samples"],
        "slo_satisfaction": overall["slo_satisfaction"],
        "accuracy": overall["accuracy"],
        "accuracy_at_slo": overall["accuracy_at_slo"],
        "goodput_sps": round(sum(r.latency_ms <= slo_ms for r in all_records) / duration_s, 3)
        if duration_s > 0 else None,
        "throughput_sps": round(n / duration_s, 3) if duration_s > 0 else None,
        "forward_rate": overall["forward_rate"],
        "latency_ms": overall["latency_ms"],
        "per_tier": per_tier,
        "per_device": per_device,
        "communication": _communication(devices, sum(generated.values())),
        "answered_by": _answered_by(all_records),
        "emulation": {
            "compute_overrun_fraction": _ratio(sum(r.overrun for r in all_records), n) or 0.0,
            "start_lag_ms": latency_summary([r.start_lag_ms for r in all_records]),
            "loop_lag_ms": lag_summary(merge(h for d in devices for h in d.loop_lag)),
            "late_replies": sum(d.late_replies for d in devices),
            "reply_late_ms": reply_late_summary(all_records),
        },
    }


def reply_late_summary(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """How late the devices read their replies: percentiles over the samples that measured
    it (forwarded, with a reply), and how many did (`n`)."""
    errors = [r.reply_late_ms for r in records if r.reply_late_ms == r.reply_late_ms]
    return {**latency_summary(errors), "n": len(errors)}


STOP_EVENTS = ("interrupted", "disk_full")
"""Harness events after which devices generate nothing more."""


def arrivals_s(events: Iterable[Mapping[str, Any]], planned_s: float) -> float:
    """Seconds during which samples arrived: the planned duration, or, when Ctrl-C or a full
    disk stopped the run early, the time from run time 0 (`run_clock`) to that stop. A
    throughput over the planned duration would understate an interrupted run's."""
    start = stop = None
    for e in events:
        if e.get("kind") == "run_clock" and start is None:
            start = float(e["start_at"])
        elif e.get("kind") in STOP_EVENTS and e.get("source", "harness") == "harness" \
                and stop is None:
            stop = float(e["t"])
    if stop is None:
        return planned_s
    if start is None:  # stopped while starting: nothing arrived
        return 0.0
    return min(max(stop - start, 0.0), planned_s)


def _answered_by(records: Sequence[SampleRecord]) -> dict[str, int]:
    """Heavy answers by the server model that gave them (an agreement tier's own answers are
    named `agreement(...)`, escalated ones by its final model): what reached which tier."""
    counts: dict[str, int] = {}
    for r in records:
        if r.source == "heavy":
            counts[r.heavy_model] = counts.get(r.heavy_model, 0) + 1
    return dict(sorted(counts.items()))


def _communication(devices: Sequence[DeviceTally], generated: int) -> dict[str, Any]:
    """Device -> server traffic as the devices counted it on their sockets."""
    sent = sum(d.requests_sent for d in devices)
    nbytes = sum(d.bytes_sent for d in devices)
    return {"requests": sent, "bytes_sent": nbytes,
            "bytes_received": sum(d.bytes_received for d in devices),
            "requests_per_sample": _ratio(sent, generated),
            "bytes_sent_per_sample": _ratio(nbytes, generated)}
