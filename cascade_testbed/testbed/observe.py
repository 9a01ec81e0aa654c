"""What the harness reads off a running run: the server's status, memory of the processes.
Small functions with explicit inputs, so the orchestrator stays about control."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Sequence
from typing import Any

import psutil

from cascade_testbed.common.looplag import lag_summary, merge


def fetch_status(url: str, token: str = "", timeout_s: float = 0.5) -> dict[str, Any] | None:
    """GET /v1/status (with the run's token), or None if the server does not answer in time."""
    request = urllib.request.Request(f"{url}/v1/status", headers={
        "Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            status: dict[str, Any] = json.load(resp)
    except (OSError, ValueError):
        return None
    return status


def live_view(status: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the progress line shows."""
    thresholds = [d["threshold"] for d in status.get("devices", {}).values()]
    return {"connected": len(thresholds), "queue": status["queue"]["length"],
            "throughput_sps": status["throughput_sps"], "arrival_sps": status["arrival_rate_sps"],
            "mean_threshold": sum(thresholds) / len(thresholds) if thresholds else None,
            "heavy_model": status.get("heavy_model")}


def server_facts(statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Server counters summed over its processes (a killed one counts up to its last status);
    `rate_limited` counts by device the requests refused over their budget."""
    totals: dict[str, float] = {}
    shed: dict[str, float] = {}
    limited: dict[str, float] = {}
    for status in statuses:
        for k, v in (status.get("totals") or {}).items():
            totals[k] = totals.get(k, 0) + v
        for k, v in (status.get("shed") or {}).items():
            shed[k] = shed.get(k, 0) + v
        for k, v in (status.get("rate_limited") or {}).items():
            limited[k] = limited.get(k, 0) + v
    last = statuses[-1] if statuses else {}
    return {"heavy_model": last.get("heavy_model"), "processes": len(statuses),
            "totals": totals, "shed": shed, "rate_limited": limited,
            "policy_step_us": last.get("policy_step_us") or {},
            "held_late_ms": lag_summary(merge((s.get("held") or {}).get("late")
                                              for s in statuses))}


def sample_resources(device_pids: Sequence[int], server_pid: int | None) -> dict[str, Any]:
    """Unique memory (USS) of each device process, what one more device costs, and the
    server's RSS."""
    uss = []
    for pid in device_pids:
        try:
            uss.append(psutil.Process(pid).memory_full_info().uss / 2**20)
        except (psutil.Error, TypeError, ValueError):
            continue
    server_rss = None
    if server_pid is not None:
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            server_rss = psutil.Process(server_pid).memory_info().rss / 2**20
    return {
        "device_uss_mb": {"mean": round(sum(uss) / len(uss), 2) if uss else None,
                          "max": round(max(uss), 2) if uss else None, "sampled": len(uss)},
        "server_rss_mb": round(server_rss, 2) if server_rss else None,
        "cpu_count": psutil.cpu_count(),
        "load_avg_1m": round(psutil.getloadavg()[0], 2),
    }
