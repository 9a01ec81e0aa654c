"""`testbed claims --quick` end to end on one real claim: both arms run as real processes on
the same three seeds, and the last line of the output is the JSON the issue specifies. The
runs are made shorter and smaller than quick mode's (the suite has minutes, not the claim's
real budget); the claim's scenario, arms, metric and statistics are the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.config import DevicesConfig
from testbed import cli
from testbed.claims import catalog


def test_one_claim_runs_end_to_end_and_ends_with_its_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = DevicesConfig(count=6, mix="1:1:1", rate_hz=10.0, reply_timeout_ms=150.0)
    monkeypatch.setitem(catalog.QUICK, "multitasc-40.toml",
                        {"duration_s": 3.0, "devices": small})
    out = tmp_path / "claims"
    res = CliRunner().invoke(cli.app, ["claims", "--quick", "--only", "multitasc-vs-static",
                                       "--seeds", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    (claim,) = line["claims"]
    assert claim["id"] == "multitasc-vs-static" and claim["unit"] == "pp"
    assert claim["seeds"] == 3 and len(claim["per_seed"]) == 3
    low, high = claim["ci95"]
    assert low <= claim["measured"] <= high and isinstance(claim["holds"], bool)
    runs = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/seed-*"))
    assert runs == [f"multitasc-40/{arm}/seed-{s}" for arm in ("multitasc", "static")
                    for s in (1, 2, 3)]
    for run in out.glob("*/*/seed-*"):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["samples"]["lost"] == 0 and summary["seed"] == int(run.name[5:])
    # Again: every run is reused, nothing runs twice.
    again = CliRunner().invoke(cli.app, ["claims", "--quick", "--only", "multitasc-vs-static",
                                         "--seeds", "3", "--out", str(out), "--dry-run"])
    assert "(0 to do" in again.output
