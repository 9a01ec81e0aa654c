"""A short real run whose devices follow an Azure Functions trace and whose tiers declare
power models: every record carries its energy, and the summary has the energy and the
achieved-against-trace rate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from cascade_testbed.common.records import iter_record_files, read_records
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed.orchestrator import run_scenario

TRACE = Path(__file__).resolve().parents[2] / "scenarios" / "traces" / \
    "azure-functions-2019-synthetic.csv"


@pytest.mark.slow
def test_azure_arrivals_and_energy_in_records_and_summary(tmp_path: Path) -> None:
    cfg = scenario_from_dict({
        "name": "it-azure-energy", "duration_s": 4.0, "seed": 3, "policy": "static",
        "devices": {"count": 3, "arrival": "azure", "azure": {
            "file": str(TRACE), "functions": 3, "minute_s": 2.0, "start_minute": 600,
            "scale": 0.2, "within": "gamma", "cv": 1.5}},
        "tiers": {"low": {"power": {"active_w": 5.0, "tail_s": 0.0, "tail_j": 0.01}}},
        "server": {"power": {"active_w": 50.0, "idle_w": 5.0}},
    })
    s = run_scenario(cfg, tmp_path / "run").summary
    records = [r for p in iter_record_files(tmp_path / "run") for r in read_records(p)[0]]
    assert records and len(records) == s["samples"]["completed"]
    assert all(math.isfinite(r.energy_compute_j) and r.energy_compute_j > 0
               and math.isfinite(r.energy_radio_j) and r.energy_radio_j >= 0 for r in records)
    assert all(r.energy_radio_j > 0 for r in records if r.forwarded)
    low = [r for r in records if r.tier == "low"]
    assert all(r.energy_compute_j == pytest.approx(5.0 * r.light_ms / 1e3, rel=1e-3)
               for r in low)

    energy = s["energy"]
    assert energy["compute_radio_j_per_sample"] > 0 and energy["device_j_per_sample"] > 0
    assert set(energy["per_tier"]) == {"low", "mid", "high"}
    assert all(d["energy_j"] > 0 for d in s["per_device"])
    assert energy["server"]["active_w"] == 50.0 and energy["server"]["busy_s"] > 0
    assert energy["server_j"] > 0 and energy["total_j_per_sample"] > energy["device_j_per_sample"]

    arrivals = s["arrivals"]
    assert arrivals["period_s"] == 2.0 and arrivals["periods"] == 2
    assert len(arrivals["trace_sps"]) == len(arrivals["achieved_sps"]) == 2
    assert arrivals["achieved_samples"] == s["samples"]["completed"]
    assert arrivals["mean_abs_rel_error"] is not None and arrivals["mean_abs_rel_error"] < 0.5
    assert dataclasses.asdict(cfg)["devices"]["azure"]["window_minutes"] == 2
