"""Results scripts can use, from a real run (real server, real device processes): --json on
stdout, --expect failing the command, one samples.csv, and compare on the run folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cascade_testbed", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_json_expect_samples_csv_and_compare(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = cli("up", "--devices", "3", "--duration", "3", "--policy", "static", "--json",
              "--expect", "lost==0", "--expect", "accuracy>1.5", "--out", str(out))
    # An accuracy above 1 cannot be met: the run fails on it, and says so last.
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("run failed: expected accuracy>1.5, got 0.")
    assert f"run folder: {out}" in " ".join(res.stderr.split())
    printed = json.loads(res.stdout)  # stdout is the JSON alone
    saved = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in printed.items() if k not in ("run", "expectations")} == \
        {k: v for k, v in saved.items() if k != "run"}
    assert [e["ok"] for e in printed["expectations"]] == [True, False]
    assert saved["run"]["problems"] == []  # the run itself did what it was asked

    with (out / "samples.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == saved["samples"]["completed"] > 0
    assert {r["device_id"] for r in rows} == {d["device_id"] for d in saved["per_device"]}
    per_device = sorted((out / "samples").glob("*.csv"))
    assert len(per_device) == 3  # the crash-safe files stay
    # One header instead of three: no bigger than the per-device files together.
    assert (out / "samples.csv").stat().st_size <= sum(p.stat().st_size for p in per_device)

    same = cli("compare", str(out), str(out), "--json")
    assert same.returncode == 0, same.stderr
    diffs = {m["metric"]: m["diff"] for m in json.loads(same.stdout)["metrics"]}
    assert diffs["slo_satisfaction"] == 0.0 and diffs["samples.generated"] == 0.0


@pytest.mark.slow
def test_output_into_a_pipe_is_plain_and_whole(tmp_path: Path) -> None:
    """stdout to a pipe, as in `testbed up > log.txt` or `| cat`: no source locations, no
    lines cut with an ellipsis, no redrawn bar, no table row wrapped at 80 columns."""
    res = cli("up", "--devices", "3", "--duration", "2", "--policy", "static",
              "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    assert "console.py:" not in text and "…" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert any(ln.endswith(" running") for ln in lines)  # phase lines, time-stamped
    last = [ln for ln in lines if ln.startswith("running ")][-1]
    assert "connected " in last and "finished 3" in last  # the last poll, with its counts
    rows = [ln for ln in lines if ln.startswith("│")]
    assert len(rows) == 3  # one row per tier, each on one line
    assert all(ln.count("│") == 8 for ln in rows)
    uss = next(ln for ln in lines if ln.startswith("device USS"))
    assert " MB mean / " in uss and " max " in uss and " - max" not in uss
    title = next(ln for ln in lines if "policy=static" in ln)
    assert title.strip().endswith("slo=150ms")
