"""The headline figures of a summary by name, for scripts (`--expect`, `testbed compare`). Pure.

A name is a dotted path into summary.json (`latency_ms.p95`, `samples.lost`); the few short
forms people type (`latency.p95_ms`, `lost`, `throughput`) are aliases of those paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

ENERGY_METRICS: Final = (
    "energy.compute_radio_j_per_sample", "energy.device_j_per_sample", "energy.total_j_per_sample",
    "energy.j_per_device", "energy.total_j", "energy.compute_j", "energy.radio_j",
    "energy.idle_j", "energy.control_radio_j", "energy.server_j",
)
"""summary.json's `energy` figures (testbed.results.energy, docs/energy.md), in joules:
per answered sample (compute + radio), all device energy per generated sample, that plus
the server's, and totals."""
COMPARED: Final = (
    "goodput_sps", "slo_satisfaction", "accuracy", "latency_ms.p95", "accuracy_at_slo",
    "forward_rate", "latency_ms.p50", "latency_ms.p99", "throughput_sps", "samples.generated",
    "samples.lost", "samples.fallback", "samples.rejected",
    *("energy.device_j_per_sample", "energy.compute_radio_j_per_sample",
      "energy.total_j_per_sample"),
)
"""What `testbed compare` lists, in this order: first what tells policies apart (answers
within the SLO per second, SLO satisfaction, accuracy, p95), last the offered load."""
METRICS: Final = (
    "goodput_sps", "slo_satisfaction", "accuracy", "accuracy_at_slo", "forward_rate",
    "throughput_sps", "latency_ms.p50", "latency_ms.p90", "latency_ms.p95", "latency_ms.p99",
    "latency_ms.p99.9", "latency_ms.mean", "latency_ms.max",
    "samples.generated", "samples.completed", "samples.aborted", "samples.lost",
    "samples.light", "samples.heavy", "samples.fallback", "samples.rejected",
    "communication.requests_per_sample", "communication.bytes_sent_per_sample",
    "emulation.compute_overrun_fraction", "emulation.late_replies", "run.startup_s",
    "emulation.link_error_ms.p50", "emulation.link_error_ms.p99",
    "emulation.reply_late_ms.p50", "emulation.reply_late_ms.p99",
    *ENERGY_METRICS, "arrivals.mean_abs_rel_error",
)
"""Every name `--expect` accepts (besides the aliases)."""
ALIASES: Final = {
    **{f"latency.{p}_ms": f"latency_ms.{p}" for p in ("p50", "p90", "p95", "p99", "p99.9",
                                                       "mean", "max")},
    "throughput": "throughput_sps",
    "goodput": "goodput_sps",
    **{k: f"samples.{k}" for k in ("generated", "completed", "aborted", "lost")},
    "energy_per_sample": "energy.device_j_per_sample",
    "rate_error": "arrivals.mean_abs_rel_error",
}
LABELS: Final = {
    "goodput_sps": "goodput_sps (answers within the SLO /s)",
    "throughput_sps": "throughput_sps (answers /s: the offered load once all are answered)",
}
"""How `testbed compare` names a figure whose name alone misleads."""
FRACTIONS: Final = frozenset({"slo_satisfaction", "accuracy", "accuracy_at_slo",
                              "forward_rate", "emulation.compute_overrun_fraction",
                              "arrivals.mean_abs_rel_error"})
"""Shares in [0, 1]: shown in %."""


def canonical(name: str) -> str | None:
    """The path a metric name stands for, None when it is not a known metric."""
    name = ALIASES.get(name, name)
    return name if name in METRICS else None


def lookup(summary: Mapping[str, Any], path: str) -> float | None:
    """The number at a dotted path of a summary; None when absent or not a number. Keys may
    contain dots themselves (`p99.9`): the longest key that matches is taken."""
    node: Any = summary
    parts = path.split(".")
    while parts:
        if not isinstance(node, Mapping):
            return None
        for i in range(len(parts), 0, -1):
            key = ".".join(parts[:i])
            if key in node:
                node, parts = node[key], parts[i:]
                break
        else:
            return None
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)
