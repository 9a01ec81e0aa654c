"""A real run on Mahimahi link traces: records arrive, the traces shape them, and the summary
reports the link timing error and the replies' lateness it measured."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cascade_testbed.common.link_trace import TRACES_DIR, file_sha256
from cascade_testbed.common.records import iter_record_files, read_records
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed.orchestrator import run_scenario


@pytest.mark.slow
def test_a_run_on_link_traces_measures_its_link_error(tmp_path: Path) -> None:
    """Tier `walk` on the synthetic walking traces with 20 ms of delay each way; tier `gap`
    on an uplink with one opportunity every 2 s, longer than the reply timeout, so its
    forwarded samples fall back unless they catch the one opportunity."""
    (tmp_path / "gap.up").write_text("1\n2000\n")
    link = {"delay_ms": 20.0, "jitter_ms": 0.0}
    cfg = scenario_from_dict({
        "name": "link-trace-it", "duration_s": 3.0, "slo_ms": 200, "seed": 5,
        "devices": {"count": 4, "mix": "1:1", "rate_hz": 10, "reply_timeout_ms": 500},
        "policy": "static",
        "tiers": {
            "walk": {"model": "light-low", "compute_ms": 5.0, "threshold": 0.999,
                     "uplink": {**link, "trace": "synthetic-lte-walking.up"},
                     "downlink": {**link, "trace": "synthetic-lte-walking.down"}},
            "gap": {"model": "light-low", "compute_ms": 5.0, "threshold": 0.999,
                    "uplink": {**link, "trace": str(tmp_path / "gap.up")}},
        }})
    result = run_scenario(cfg, tmp_path / "run")
    s = result.summary
    assert s["samples"]["lost"] == 0 and s["samples"]["generated"] > 4 * 3 * 10 * 0.6
    records = [r for p in iter_record_files(tmp_path / "run") for r in read_records(p)[0]]
    walk = [r for r in records if r.tier == "walk" and r.source == "heavy"]
    assert len(walk) > 10
    # Two delays, a light model and the server's time at least; each reply measured.
    assert min(r.latency_ms for r in walk) >= 40.0 + 5.0
    assert all(math.isfinite(r.reply_late_ms) for r in walk)
    gap = [r for r in records if r.tier == "gap" and r.forwarded]
    assert gap and sum(r.cause == "timeout" for r in gap) >= 0.5 * len(gap)
    late = s["emulation"]["reply_late_ms"]
    assert late["n"] >= len(walk) and late["p50"] is not None and late["p99"] is not None
    # The server's own account: every forwarded sample and report it held till its link
    # delivered it, and how late it acted on each.
    link = s["emulation"]["link_error_ms"]
    assert link["n"] >= late["n"] and link["p99"] is not None
    assert link == s["server"]["held_late_ms"]
    assert isinstance(s["emulation"]["unfaithful"], list)
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["link_traces"][str(tmp_path / "gap.up")] == file_sha256(tmp_path / "gap.up")
    assert file_sha256(TRACES_DIR / "synthetic-lte-walking.up") in prov["link_traces"].values()
