"""Build a run's summary.json from what its processes left on disk.

Works the same for a run that ended cleanly, one hit by faults, and one whose harness was
killed: records, journals of started samples, device outcomes and events are all written as
the run goes, so the summary can always be rebuilt (`testbed report`), and says when it is
partial.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.config import ScenarioConfig, device_specs
from cascade_testbed.common.events import read_events
from cascade_testbed.common.files import DiskFull, run_path, whole_file, write_whole
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.common.records import (
    FIELDS,
    SampleRecord,
    format_row,
    read_journal,
    read_records,
)
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.faithfulness import doubts, reply_late_note
from cascade_testbed.testbed.results.arrivals import trace_rates
from cascade_testbed.testbed.results.cost import provisioned
from cascade_testbed.testbed.results.energy import energy_summary, server_busy_s
from cascade_testbed.testbed.results.metrics import DeviceTally, arrivals_s, summarize
from cascade_testbed.testbed.results.nodes import node_figures
from cascade_testbed.testbed.results.series import idn_summary
from cascade_testbed.testbed.timeline import activity
from cascade_testbed.testbed.verdict import (
    EXIT_STOPPED,
    fault_fallback_limit,
    run_problems,
    tenancy_notes,
)

FAULT_EVENTS = ("device_kill", "device_restart", "server_kill", "server_restart", "link_down",
                "node_kill")
EVENT_FILES = ("events.harness.jsonl", "events.server.jsonl")


@dataclass
class RunFacts:
    """What only the live harness knows; absent when a summary is rebuilt from disk."""

    interrupted: bool = False
    startup_s: float | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    disk_full: str = ""
    """"disk full while writing <file>" when the run stopped for it."""
    stopped_by: str = ""
    """The signal that stopped the run early (SIGINT, SIGTERM, SIGHUP)."""


@dataclass
class _Incarnation:
    device_id: str
    tier: str
    incarnation: int
    records: list[SampleRecord] = field(default_factory=list)
    started: set[int] = field(default_factory=set)
    outcome: dict[str, Any] | None = None


def collect(run_dir: Path, facts: RunFacts | None = None,
            cfg: ScenarioConfig | None = None) -> dict[str, Any]:
    """Write and return summary.json for `run_dir`."""
    cfg = cfg or load_scenario(run_dir / "scenario.toml")
    specs = device_specs(cfg)
    tiers = {s.device_id: s.tier for s in specs}
    incs, torn = _read_incarnations(run_dir, tiers)
    facts = facts or RunFacts()
    try:
        events = merge_events(run_dir)
    except DiskFull as exc:  # the parts stay on disk; the summary can still be built
        facts.disk_full = facts.disk_full or str(exc)
        events = _read_event_parts(run_dir)
    kinds = Counter(e.get("kind") for e in events)
    exited = {(str(e.get("device")), int(e.get("incarnation", 0))) for e in events
              if e.get("kind") == "device_exit"}
    tallies, records, unexplained, lost_in_clean = _tally(incs, exited)
    arrived_s = arrivals_s(events, cfg.duration_s)
    summary = summarize(records, tallies, slo_ms=cfg.slo_ms, duration_s=arrived_s,
                        tier_order=tuple(cfg.tiers))
    interrupted = facts.interrupted or "interrupted" in kinds
    stopped_by = facts.stopped_by or next(
        (str(e.get("signal")) for e in events if e.get("kind") == "interrupted"
         and e.get("signal") in EXIT_STOPPED), "SIGINT") if interrupted else ""
    harness_ended = "run_end" in kinds
    expected = {dev for dev, spans in zip(tiers, activity(cfg), strict=True) if spans}
    missing = sorted(expected - {i.device_id for i in incs.values()})
    meta: dict[str, Any] = {
        "scenario": cfg.name, "policy": cfg.policy.name, "devices": cfg.devices.count,
        "mix": cfg.devices.mix, "duration_s": cfg.duration_s, "slo_ms": cfg.slo_ms,
        "seed": cfg.seed, "rate_hz": cfg.devices.rate_hz, "arrival": cfg.devices.arrival,
        "reply_timeout_ms": cfg.devices.reply_timeout_ms,
        "policy_params": {k: v for k, v in cfg.policy.params.items() if k != "plan"},
    }
    status = {
        "interrupted": interrupted,
        "stopped_by": stopped_by,
        "partial": interrupted or not harness_ended or torn > 0 or bool(unexplained)
        or bool(missing),
        "harness_ended": harness_ended,
        "devices_without_outcome": unexplained + missing,
        "torn_rows": torn,
        "arrivals_s": round(arrived_s, 3),
        "samples_lost_by_clean_processes": lost_in_clean,
        "startup_s": round(facts.startup_s, 3) if facts.startup_s is not None else None,
    }
    faults = {kind: kinds.get(kind, 0) for kind in FAULT_EVENTS}
    faults["injected"] = sum(e.get("kind") == "fault" for e in events)
    faults["device_crashes"] = sum(e.get("kind") == "device_exit" and not e.get("planned")
                                   and not e.get("disk_full") and not e.get("clean")
                                   for e in events)
    faults["server_crashes"] = sum(e.get("kind") == "server_exit" and not e.get("planned")
                                   for e in events)
    if facts.disk_full:
        status["disk_full"] = facts.disk_full
    status["stalls"] = [{k: e.get(k) for k in ("start_s", "end_s", "duration_s", "polls")}
                        for e in events if e.get("kind") == "server_stall"]
    # A planned server kill leaves the server unanswering while it restarts.
    status["stalls_explained"] = any(f.kind == "kill_server" for f in cfg.faults)
    out = {**meta, **summary, "run": status, "faults": faults, "server": facts.server,
           "resources": facts.resources, "refusals": _refusals(incs.values())}
    run_start = next((float(e["start_at"]) for e in events
                      if e.get("kind") == "run_clock"), None)
    if not cfg.idn.nodes:
        out["cost"] = provisioned(events, cfg.server.replicas, run_start, arrived_s,
                                  int(summary["samples"]["generated"]))
    if cfg.idn.nodes:
        out["idn"] = {"policy": cfg.idn.policy, **idn_summary(
            records, cfg.idn.alpha_ms, *model_accuracies(cfg), run_start=run_start)}
    _energy_and_arrivals(out, cfg, specs, records, tallies, events, facts, run_start, arrived_s)
    placed = next((e for e in events if e.get("kind") == "placement"), None)
    if placed is not None:  # a run over a Ray cluster (docs/cluster.md)
        out["nodes"] = node_figures(placed, summary["per_device"], {
            str(e.get("node")) for e in events if e.get("kind") == "node_lost"})
    try:
        write_samples(run_path(run_dir, "samples", suffix=".csv"), records)
    except DiskFull as exc:  # the per-device files still hold every record
        facts.disk_full = facts.disk_full or str(exc)
        status["disk_full"] = facts.disk_full
    limit = fault_fallback_limit(cfg.max_fault_fallback, bool(cfg.faults))
    notes = tenancy_notes(
        Counter(r.device_id for r in records if r.source in ("fallback", "rejected")),
        (facts.server or {}).get("rate_limited") or {}, set(tiers),
        forwarded=int(summary["samples"]["forwarded"]), heavy=int(summary["samples"]["heavy"]),
        server_arrivals=int(((facts.server or {}).get("totals") or {}).get("arrivals") or 0))
    # The link timing error is the server's: when it acted on each held message against
    # when its emulated uplink delivered it (its status's `held.late`).
    out["emulation"]["link_error_ms"] = (facts.server or {}).get("held_late_ms") or \
        {"p50": None, "p99": None, "n": 0}
    late = reply_late_note(out)
    status["notes"] = [*notes, *([late] if late else [])]
    status["problems"] = run_problems(out, limit)
    out["emulation"]["unfaithful"] = doubts(out)
    try:
        write_whole(run_dir / "summary.json", json.dumps(out, indent=2))
    except DiskFull as exc:  # the summary is still returned (and printed), just not saved
        status["disk_full"] = status.get("disk_full") or str(exc)
        status["problems"] = run_problems(out, limit)
    return out


def _energy_and_arrivals(out: dict[str, Any], cfg: ScenarioConfig, specs: list[Any],
                         records: list[SampleRecord], tallies: list[DeviceTally],
                         events: list[dict[str, Any]], facts: RunFacts,
                         run_start: float | None, arrived_s: float) -> None:
    """summary.json's `energy` (and each device's `energy_j`) and, for a trace-driven run,
    `arrivals` (achieved against the trace's rate per period)."""
    generated = {d["device_id"]: int(d["generated"]) for d in out["per_device"]}
    cost = out.get("cost") or {}
    energy = energy_summary(
        records, tallies, generated, {d["device_id"]: d["tier"] for d in out["per_device"]},
        tuple(cfg.tiers), cfg.server.power, server_busy_s(facts.server, events),
        cost.get("replica_seconds") if "replica_seconds" in cost else None)
    for d in out["per_device"]:
        d["energy_j"] = energy["by_device_j"].get(d["device_id"])
    out["energy"] = energy
    rates = trace_rates(specs, activity(cfg), records, run_start, arrived_s)
    if rates is not None:
        out["arrivals"] = rates


def _refusals(incs: Any) -> dict[str, Any]:
    """Forwarded samples the server refused with an `error` reply, by reason, over every
    device process, and the first reason given (what the run's verdict quotes)."""
    by_reason: Counter[str] = Counter()
    first = ""
    for inc in sorted(incs, key=lambda i: (i.device_id, i.incarnation)):
        out = inc.outcome or {}
        refused = out.get("refused")
        if isinstance(refused, dict):
            by_reason.update({str(k): int(v) for k, v in refused.items()
                              if isinstance(v, int) and v > 0})
        first = first or str(out.get("refusal") or "")
    return {"by_reason": dict(sorted(by_reason.items())), "first": first}


def write_samples(path: Path, records: list[SampleRecord]) -> None:
    """Every device's records in one CSV (`device_id` is a column), for one `pandas.read_csv`.
    Written beside the per-device files, which stay: those are the crash-safe record; this is
    a copy made once at the end, whole or not at all (a temporary file, then a rename)."""
    with whole_file(path, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows(format_row(r) for r in records)


def _read_incarnations(run_dir: Path, tiers: dict[str, str]
                       ) -> tuple[dict[tuple[str, int], _Incarnation], int]:
    incs: dict[tuple[str, int], _Incarnation] = {}

    def get(device_id: str, incarnation: int, tier: str) -> _Incarnation:
        key = (device_id, incarnation)
        if key not in incs:
            incs[key] = _Incarnation(device_id, tier, incarnation)
        return incs[key]

    torn = 0
    samples = run_dir / "samples"
    for path in sorted(samples.glob("*.csv")):
        recs, bad = read_records(path)
        torn += bad
        for r in recs:
            get(r.device_id, r.incarnation, r.tier).records.append(r)
    for path in sorted((run_dir / "devices").glob("*.json")):
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError:
            torn += 1
            continue
        inc = get(d["device_id"], d.get("incarnation", 0), d["tier"])
        inc.outcome = d
    for path in sorted(samples.glob("*.gen")):
        device_id, _, k = path.stem.partition("~")
        get(device_id, int(k or 0), tiers.get(device_id, "?")).started = read_journal(path)
    return incs, torn


def _tally(incs: dict[tuple[str, int], _Incarnation], exited: set[tuple[str, int]]
           ) -> tuple[list[DeviceTally], list[SampleRecord], list[str], int]:
    """Per device, over its incarnations: generated, aborted, final threshold. Samples started
    by a process that died count as aborted; by one that ended cleanly, as lost."""
    by_device: dict[str, list[_Incarnation]] = {}
    for inc in incs.values():
        by_device.setdefault(inc.device_id, []).append(inc)
    tallies, records, unexplained = [], [], []
    lost_in_clean = 0
    for device_id, group in sorted(by_device.items()):
        group.sort(key=lambda i: i.incarnation)
        generated = aborted = late = 0
        traffic = [0, 0, 0]
        energy = [0.0, 0.0]
        lags = []
        threshold = None
        for inc in group:
            done_ids = {r.sample_id for r in inc.records}
            missing = len(inc.started - done_ids)
            out = inc.outcome
            generated += max(out["generated"] if out else 0, len(inc.started | done_ids))
            if out is None:
                aborted += missing
                if (device_id, inc.incarnation) not in exited:
                    unexplained.append(f"{device_id}#{inc.incarnation}")
            else:
                lost_in_clean += missing
                threshold = out["final_threshold"]
                late += out.get("late_replies", 0)
                if out.get("loop_lag"):
                    lags.append(out["loop_lag"])
                for i, key in enumerate(("requests_sent", "bytes_sent", "bytes_received")):
                    traffic[i] += int(out.get(key, 0))
                joules = out.get("energy")
                for i, key in enumerate(("idle_j", "control_radio_j")):
                    value = joules.get(key, 0.0) if isinstance(joules, dict) else 0.0
                    energy[i] += float(value) if isinstance(value, int | float) else 0.0
            records.extend(inc.records)
        tallies.append(DeviceTally(device_id, group[0].tier, generated, threshold, late,
                                   aborted, len(group), requests_sent=traffic[0],
                                   bytes_sent=traffic[1], bytes_received=traffic[2],
                                   loop_lag=tuple(lags), energy_idle_j=energy[0],
                                   energy_control_j=energy[1]))
    return tallies, records, unexplained, lost_in_clean


def _event_parts(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in EVENT_FILES] + \
        sorted(run_dir.glob("events.node-*.jsonl"))  # IDN nodes


def _read_event_parts(run_dir: Path) -> list[dict[str, Any]]:
    events = read_events(run_dir / "events.jsonl") + \
        [e for p in _event_parts(run_dir) for e in read_events(p)]
    events.sort(key=lambda e: e.get("t", 0))
    return events


def merge_events(run_dir: Path) -> list[dict[str, Any]]:
    """One events.jsonl in time order from the harness's and the server's files; returns the
    events. `DiskFull` if it cannot be written (the parts are then left as they are)."""
    parts = _event_parts(run_dir)
    merged = run_dir / "events.jsonl"
    if not any(p.is_file() for p in parts):
        return read_events(merged)
    events = _read_event_parts(run_dir)
    # Whole or not at all: the parts are removed only once the merge is safely on disk, so a
    # full disk leaves them (and any earlier events.jsonl) as they were.
    write_whole(merged, "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    for p in parts:
        p.unlink(missing_ok=True)
    return events


def model_accuracies(cfg: ScenarioConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Validation accuracy of every heavy model in the zoo and of each tier's light model."""
    zoo = open_zoo(cfg.zoo)
    heavy = {m: float(zoo.card(m)["accuracy"]["val"])
             for m in zoo.index.get("heavy_variants") or [zoo.heavy]}
    for m in cfg.idn.catalog:
        heavy[m] = float(zoo.card(m)["accuracy"]["val"])
    light = {t: float(zoo.card(s.model)["accuracy"]["val"]) for t, s in cfg.tiers.items()}
    return heavy, light
