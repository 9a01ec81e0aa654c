"""`testbed claims` end to end where the answer is known: real servers and device processes,
a tuning run, then claims on the same three seeds. An arm against itself must not hold, an arm
against a deliberately crippled copy must hold, and a ratio whose baseline is 0 is judged.
The runs are short and small (the suite has minutes); the runner, the statistics, the
provenance and the JSON are the real ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cascade_testbed.testbed import cli
from cascade_testbed.testbed.claims import catalog
from cascade_testbed.testbed.claims.catalog import Claim, field_at

SCENARIO = """name = "known-answers"
duration_s = 0.6
slo_ms = 150
[devices]
count = 3
mix = "1:1:1"
rate_hz = 10
reply_timeout_ms = 1000
[server]
max_batch_size = 8
[sweep.variant.static]
policy = { name = "static" }
[sweep.variant.static-copy]
policy = { name = "static" }
[sweep.variant.crippled]
policy = { name = "static" }
[sweep.variant.device-only]
policy = { name = "device-only" }
"""
TUNING = """scenario = "known.toml"
seeds = [101, 102]
duration_s = 0.6
objective = "slo_satisfaction"
better = "lower"
[untuned]
static = "the reference arm"
static-copy = "the same arm again"
device-only = "nothing to tune"
[arms.crippled.mild]
server = { batch_base_ms = 6.0 }
[arms.crippled.slow400]
server = { batch_base_ms = 400.0 }
"""
CLAIMS = (
    Claim("itself", "an arm against itself", None, "-", "pt", "difference", "higher",
          "known.toml", "static", "static-copy", field_at("accuracy"), scale=100.0, seeds=3,
          no_check="a test"),
    Claim("crippled", "an arm against a crippled copy", None, "-", "pp", "difference",
          "higher", "known.toml", "static", "crippled", field_at("slo_satisfaction"),
          scale=100.0, seeds=3, no_check="a test"),
    Claim("zero", "forwarding against never forwarding", None, "-", "x", "ratio", "higher",
          "known.toml", "static", "device-only", field_at("forward_rate"), seeds=3,
          no_check="a test"),
)


def invoke(*args: str) -> Any:
    res = CliRunner().invoke(cli.app, ["claims", *args])
    return res


@pytest.mark.slow
def test_known_answers_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenarios = tmp_path / "scenarios"
    (scenarios / "tuning").mkdir(parents=True)
    (scenarios / "known.toml").write_text(SCENARIO)
    (scenarios / "tuning" / "known.toml").write_text(TUNING)
    monkeypatch.setattr(catalog, "CLAIMS", CLAIMS)
    monkeypatch.setattr(catalog, "SCENARIOS", scenarios)
    out = tmp_path / "claims"

    refused = invoke("--out", str(out), "--dry-run")
    assert refused.exit_code == 2 and "no chosen values" in refused.output

    tuned = invoke("--tune", "--out", str(tmp_path / "tuning"))
    assert tuned.exit_code == 0, tuned.output
    chosen = (scenarios / "tuning" / "chosen.toml").read_text()
    assert 'config = "slow400"' in chosen  # the lower SLO satisfaction, as the file asks

    res = invoke("--out", str(out))
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert line["commit"] and line["code_hash"] and line["runs_made_by"]
    by_id = {c["id"]: c for c in line["claims"]}

    itself = by_id["itself"]
    assert itself["per_seed"] == [0.0, 0.0, 0.0] and itself["holds"] is False
    assert itself["null"] == 0.0 and itself["seeds"] == 3
    crippled = by_id["crippled"]
    assert crippled["holds"] is True and crippled["ci95"][0] > 0
    assert all(v < 1.0 for v in crippled["baseline_values"])
    zero = by_id["zero"]
    assert zero["holds"] is True and zero["interval"] == "range" and zero["null"] == 1.0
    assert zero["baseline_values"] == [0.0, 0.0, 0.0] and "error" not in zero
    for claim in by_id.values():
        assert len(claim["attempts"]) == 6
        for attempt in claim["attempts"]:
            assert attempt["kept"] and attempt["attempt"] == 1 and attempt["commit"]
            assert attempt["scenario_hash"] and attempt["code_hash"] == line["code_hash"]
    runs = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/seed-*"))
    assert runs == sorted(f"known/{arm}/seed-{s}" for arm in ("crippled", "device-only",
                                                              "static", "static-copy")
                          for s in (1, 2, 3))
    for run in out.glob("*/*/seed-*"):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["samples"]["lost"] == 0 and summary["seed"] == int(run.name[5:])
        assert json.loads((run / "provenance.json").read_text())["commit"]
    crippled_cfg = (out / "known" / "crippled" / "seed-1" / "scenario.toml").read_text()
    assert "batch_base_ms = 400.0" in crippled_cfg  # the chosen value, from chosen.toml

    again = invoke("--out", str(out), "--dry-run")
    assert "(0 to do" in again.output  # every run is reused, nothing runs twice

    judged = invoke("--from", str(out))
    assert judged.exit_code == 0, judged.output
    rejudged = json.loads(judged.output.strip().splitlines()[-1])
    assert [(c["id"], c["holds"], c["per_seed"]) for c in rejudged["claims"]] == \
        [(c["id"], c["holds"], c["per_seed"]) for c in line["claims"]]
