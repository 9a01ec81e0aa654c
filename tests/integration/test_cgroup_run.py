"""A real run with `devices.cpu_limit = "cgroup"` where the host permits it (skipped with the
reason elsewhere): the devices run in their cgroups under their tiers' quotas, unpadded, and
the cgroups are gone afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_testbed.common.records import iter_record_files, read_records
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed import cgroups
from cascade_testbed.testbed.orchestrator import run_scenario


def _why_not() -> str | None:
    try:
        cgroups.probe(cgroups.host_hierarchy(), "test-probe")
    except cgroups.CgroupUnavailable as exc:
        return str(exc)
    return None


WHY_NOT = _why_not()


@pytest.mark.slow
@pytest.mark.skipif(WHY_NOT is not None, reason=f"cgroups not permitted here: {WHY_NOT}")
def test_a_cgroup_run_throttles_instead_of_padding(tmp_path: Path) -> None:
    cfg = scenario_from_dict({"name": "cgroup-it", "duration_s": 2.0, "seed": 2,
                              "policy": "static",
                              "devices": {"count": 3, "rate_hz": 10, "cpu_limit": "cgroup"}})
    result = run_scenario(cfg, tmp_path / "run")
    s = result.summary
    assert s["samples"]["lost"] == 0 and s["samples"]["generated"] > 3 * 2 * 10 * 0.6
    text = (tmp_path / "run" / "events.jsonl").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    placed = next(e for e in events if e["kind"] == "cpu_limit")
    assert set(placed["tiers"]) == {"low", "mid", "high"}
    assert all(t["quota_us"] >= cgroups.MIN_QUOTA_US for t in placed["tiers"].values())
    assert not Path(placed["run_dir"]).exists()  # removed with the run
    # Not padded: the light model's time is its real (throttled) one, not the 6-30 ms target.
    assert s["emulation"]["compute_overrun_fraction"] == 0.0
    light = sorted(r.light_ms for f in iter_record_files(tmp_path / "run")
                   for r in read_records(f)[0] if r.tier == "low")
    assert light and light[len(light) // 2] < 15.0  # padded, its median would be 30 ms
