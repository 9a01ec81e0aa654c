"""Did a run do what its scenario asked? Pure: a summary (and what the scenario planned) in,
the run's problems out. Any problem makes `testbed up`/`run` exit non-zero and is printed last.

A run fails when samples were lost, when none was generated, when a device or the server
died without the scenario asking for it, when the server refused more than 1 % of the
forwarded samples for a reason that is not load (`refused_forwards`), or when more samples
than the scenario allows fell back for a cause that is not load (a lost connection, a failed
model, an error reply, a server shutting down): those are the testbed failing, not the system
under test shedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

NON_LOAD_CAUSES: Final = ("disconnected", "failed", "error", "shutdown")
"""Fallback causes that say something broke; timeout, expired, queue_full and admission are
how an overloaded cascade sheds, which is what experiments measure."""
DEFAULT_MAX_FAULT_FALLBACK: Final = 0.05
MAX_REFUSED_FORWARDS: Final = 0.01
"""Largest share of forwarded samples the server may refuse for a reason that is not load (a
bad tensor, a failed model) before the run counts as failed: such refusals mean the devices
send what the server cannot take, and the run's numbers describe a broken cascade. A share
of forwards, not of samples: a run that forwards 3 % of its samples and has all of them
refused is broken too."""
LOAD_REFUSALS: Final = frozenset({"overloaded"})
"""Error codes that are load (the server shedding), not a fault of what was sent."""

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The run ran but did not do what the scenario asked (a problem below)."""
EXIT_BAD_INPUT: Final = 2
"""The scenario or an option is invalid, or the run could not start."""
EXIT_INTERRUPTED: Final = 130
"""Stopped early by Ctrl-C (SIGINT); SIGTERM gives 143 and SIGHUP 129 (128 + the signal's
number, as a shell reports a process the signal killed), each after the same clean stop."""
EXIT_STOPPED: Final = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": 143, "SIGHUP": 129}


def fault_fallback_limit(configured: float | None, faults_planned: bool) -> float | None:
    """The share of non-load fallbacks a run may have: as configured; by default 5 %, or no
    limit when the scenario plans faults (its kills and cuts cause exactly these)."""
    if configured is not None:
        return configured
    return None if faults_planned else DEFAULT_MAX_FAULT_FALLBACK


def run_problems(summary: Mapping[str, Any], max_fault_fallback: float | None) -> list[str]:
    """What went wrong in a run, one short sentence each; empty for a run that did what its
    scenario asked. An interrupted run is judged on what it did before Ctrl-C."""
    problems = []
    samples = summary.get("samples") or {}
    generated = int(samples.get("generated") or 0)
    faults = summary.get("faults") or {}
    run = summary.get("run") or {}
    if generated == 0:
        problems.append("no sample was generated")
    if samples.get("lost"):
        problems.append(f"{samples['lost']} samples were lost (generated, never answered)")
    crashes = int(faults.get("device_crashes") or 0)
    if crashes:
        problems.append(f"{crashes} device process{'es' if crashes > 1 else ''} crashed "
                        "without a planned fault (logs/devices.log)")
    deaths = int(faults.get("server_crashes") or 0)
    if deaths:
        problems.append(f"the server died {deaths} time{'s' if deaths > 1 else ''} without a "
                        "planned fault (logs/server.log)")
    silent = len(run.get("devices_without_outcome") or ())
    if silent and not run.get("interrupted"):
        problems.append(f"{silent} device process{'es' if silent > 1 else ''} left no outcome")
    causes = samples.get("causes") or {}
    broken = {c: int(causes.get(c) or 0) for c in NON_LOAD_CAUSES if causes.get(c)}
    if generated and max_fault_fallback is not None:
        share = sum(broken.values()) / generated
        if share > max_fault_fallback:
            detail = ", ".join(f"{c} {n}" for c, n in broken.items())
            problems.append(f"{share:.1%} of samples fell back for a non-load cause ({detail}); "
                            f"the limit is {max_fault_fallback:.1%} (max_fault_fallback)")
    refused = refused_forwards(summary)
    if refused is not None:
        problems.append(refused)
    if run.get("disk_full"):
        problems.append(str(run["disk_full"]))
    stalls = run.get("stalls") or []
    if stalls and not run.get("stalls_explained"):
        worst = max(stalls, key=lambda st: float(st.get("duration_s") or 0))
        more = f" and {len(stalls) - 1} shorter time{'s' if len(stalls) > 2 else ''}" \
            if len(stalls) > 1 else ""
        problems.append(f"the server did not answer for {float(worst['duration_s']):.1f} s "
                        f"(run time {float(worst['start_s']):.1f}-{float(worst['end_s']):.1f} "
                        f"s){more} though its process was alive (events: server_stall)")
    return problems


DOMINANT_SHARE: Final = 0.5
"""One device with more than this share of the fallbacks (or of the server's rate-limit
refusals) is named in the summary's notes."""
MIN_COUNT_FOR_NOTES: Final = 20


def tenancy_notes(fallbacks_by_device: Mapping[str, int], limited_by_device: Mapping[str, int],
                  run_devices: set[str], *, forwarded: int, heavy: int,
                  server_arrivals: int) -> list[str]:
    """What a shared server did to its tenants that the totals hide: one device taking most of
    the fallbacks, one client taking most of the rate limiting, or this run's devices starved
    of heavy answers while the server was busy with other clients. Notes, not problems: the
    system under test may do any of these on purpose."""
    notes = []
    total = sum(fallbacks_by_device.values())
    if total >= MIN_COUNT_FOR_NOTES and len(run_devices) >= 3:
        device, n = max(fallbacks_by_device.items(), key=lambda kv: kv[1])
        if n > DOMINANT_SHARE * total:
            notes.append(f"device {device} has {n / total:.0%} of the light answers given "
                         f"for the server ({n} of {total} fallbacks and rejections)")
    limited = sum(limited_by_device.values())
    if limited >= MIN_COUNT_FOR_NOTES:
        device, n = max(limited_by_device.items(), key=lambda kv: kv[1])
        if n > DOMINANT_SHARE * limited:
            who = f"device {device}" if device in run_devices else \
                f"{device}, a client that is not one of this run's devices,"
            notes.append(f"{who} was rate limited {n} times ({n / limited:.0%} of the server's "
                         "rate-limit refusals)")
    others = server_arrivals - forwarded
    if forwarded >= MIN_COUNT_FOR_NOTES and heavy < 0.5 * forwarded and others > forwarded:
        notes.append(f"this run's devices got the heavy model's answer for {heavy / forwarded:.0%}"
                     f" of their {forwarded} forwarded samples while the server took {others} "
                     "requests from other clients")
    return notes


def refused_forwards(summary: Mapping[str, Any],
                     limit: float = MAX_REFUSED_FORWARDS) -> str | None:
    """The problem sentence when more than `limit` of the forwarded samples were refused by
    the server for a non-load reason (an `error` reply: bad tensor, malformed, ...; or a
    `failed` result: the model failed), with the counts by reason and the first reason."""
    samples = summary.get("samples") or {}
    forwarded = int(samples.get("forwarded") or 0)
    refusals = summary.get("refusals") or {}
    by_reason = {str(k): int(v) for k, v in (refusals.get("by_reason") or {}).items()
                 if str(k) not in LOAD_REFUSALS and int(v) > 0}
    failed = int((samples.get("causes") or {}).get("failed") or 0)
    if failed:
        by_reason["model_failed"] = failed
    refused = sum(by_reason.values())
    if not forwarded or refused / forwarded <= limit:
        return None
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))
    first = str(refusals.get("first") or "")
    return (f"the server refused {refused} of {forwarded} forwarded samples "
            f"({refused / forwarded:.1%}, limit {limit:.0%}) for a non-load reason ({detail})"
            + (f"; first: {first}" if first else ""))


def exit_code(problems: list[str], interrupted: bool, stopped_by: str = "SIGINT") -> int:
    if interrupted:
        return EXIT_STOPPED.get(stopped_by, EXIT_INTERRUPTED)
    return EXIT_FAILED if problems else EXIT_OK


def stopped_line(stopped_by: str) -> str:
    """The last line of a run a signal stopped early (without other problems)."""
    what = "Ctrl-C" if stopped_by in ("", "SIGINT") else stopped_by
    return f"run stopped by {what}: the numbers cover the run until then"


def last_line(problems: list[str], doubts: list[str] | None = None) -> str:
    """The one line a failed run ends with (and why its emulation was not faithful, if it
    was not: `testbed.faithfulness`)."""
    return "run failed: " + "; ".join(problems) + (
        f"; emulation not faithful: {'; '.join(doubts)}" if doubts else "")


def unfaithful_line(doubts: list[str]) -> str:
    """The last line of a run that did what was asked but whose emulation was not faithful:
    a flag, not a failure (the exit code stays 0)."""
    return "run not faithful: " + "; ".join(doubts)


def partial_reasons(run: Mapping[str, Any]) -> list[str]:
    """Why a summary is partial (its `run` part), one phrase each: the harness did not finish,
    the run was interrupted, device processes left no outcome, rows were torn."""
    why = []
    if not run.get("harness_ended", True):
        why.append("the harness did not finish")
    if run.get("interrupted"):
        why.append("it was interrupted")
    if run.get("devices_without_outcome"):
        why.append(f"{len(run['devices_without_outcome'])} device processes left no outcome")
    if run.get("torn_rows"):
        why.append(f"{run['torn_rows']} torn rows")
    return why
