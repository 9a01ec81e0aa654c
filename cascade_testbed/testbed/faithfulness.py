"""Was a run's emulation faithful? Pure: a summary in, the reasons it was not out. The one
rule a run's summary (`emulation.unfaithful`), its last line and the claims' retry rule
(`testbed.claims.jobs.unfaithful`) all apply: the host, not the system under test, decided
the latencies when light-model computations overran their emulated time, when the devices'
event loops ran late, or when the server acted on messages later than the emulated links
delivered them (the link timing error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

MAX_OVERRUN: Final = 0.01
"""The share of light-model computations that overran their emulated time (docs/density.md)."""
MAX_LAG_SHARE_OF_SLO: Final = 0.10
"""A device's event-loop lag p99 above 10 % of the SLO means the host, not the system under
test, decided the latencies (another job took the cores)."""
MAX_LINK_ERROR_SHARE_OF_SLO: Final = 0.10
"""The link timing error's p99 (docs/emulation.md) above 10 % of the SLO: the server acted on
messages later than their emulated links delivered them, by a share of the SLO that can
decide whether a sample meets it."""
MAX_REPLY_LATE_SHARE_OF_SLO: Final = 0.10
"""Above it, the devices' late reading of replies earns the run a note (not a doubt)."""


def _p99_over(summary: Mapping[str, Any], figure: str, share: float
              ) -> tuple[float, float] | None:
    """(p99, bound) when `emulation.<figure>`'s p99 exceeds `share` of the SLO; None when it
    does not, or was not measured."""
    p99 = ((summary.get("emulation") or {}).get(figure) or {}).get("p99")
    bound = share * float(summary.get("slo_ms") or 0.0)
    if p99 is None or bound <= 0 or float(p99) <= bound:
        return None
    return float(p99), bound


def doubts(summary: Mapping[str, Any]) -> list[str]:
    """Why the run's emulation cannot be trusted, one phrase each; empty when every figure
    the summary holds is within its bound (a figure it lacks is not judged here)."""
    out = []
    overrun = (summary.get("emulation") or {}).get("compute_overrun_fraction")
    if overrun is not None and float(overrun) > MAX_OVERRUN:
        out.append(f"host overloaded (compute overrun {float(overrun):.1%} > "
                   f"{MAX_OVERRUN:.0%})")
    if lag := _p99_over(summary, "loop_lag_ms", MAX_LAG_SHARE_OF_SLO):
        out.append(f"host overloaded (loop lag p99 {lag[0]:.0f} ms > {lag[1]:.0f} ms)")
    link = link_error_doubt(summary)
    if link is not None:
        out.append(link)
    return out


def reply_late_note(summary: Mapping[str, Any]) -> str | None:
    """A note when the devices read their replies late by more than
    `MAX_REPLY_LATE_SHARE_OF_SLO` of the SLO at p99: a batch's replies wake that many device
    processes at once, and on a host with fewer cores than devices the last reads its reply
    late. That time is in the recorded latencies, but it is the density of the emulation, the
    same in every run at that density, not a fault of this run; the note says how much."""
    over = _p99_over(summary, "reply_late_ms", MAX_REPLY_LATE_SHARE_OF_SLO)
    if over is None:
        return None
    p50 = (summary["emulation"]["reply_late_ms"].get("p50") or 0.0)
    return (f"devices read their replies late: p99 {over[0]:.1f} ms > {over[1]:.0f} ms (10% "
            f"of the SLO), median {float(p50):.1f} ms; the host's cores, not the emulated "
            "links, set that part of the tail latency (docs/emulation.md)")


def link_error_doubt(summary: Mapping[str, Any]) -> str | None:
    """The link timing error's p99 above `MAX_LINK_ERROR_SHARE_OF_SLO` of the SLO, or None
    (also when nothing was measured: no message was held)."""
    over = _p99_over(summary, "link_error_ms", MAX_LINK_ERROR_SHARE_OF_SLO)
    if over is None:
        return None
    return f"link timing error p99 {over[0]:.1f} ms > {over[1]:.0f} ms (10% of the SLO)"
