"""A user's policy in a whole run: the `testbed` command, the real server and real device
processes, the example `ConstantPolicy` named by its entry point and by spec (the run that
fails at start, and a user's own module subclassing it beside modules named like the
testbed's parts). Runs from a folder outside the repository, so the policy is found as an
installed package would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cascade_testbed.common.events import read_events

TESTBED = Path(sys.executable).with_name("testbed")


def run_testbed(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("TESTBED_POLICY", None)
    return subprocess.run([str(TESTBED), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def thresholds(run_dir: Path) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """(what the server gave each device when it joined, each device's last threshold as the
    device recorded it, each device's tier)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    joined = {e["device"]: e["threshold"] for e in read_events(run_dir / "events.jsonl")
              if e["source"] == "server" and e["kind"] == "join"}
    final = {d["device_id"]: d["final_threshold"] for d in summary["per_device"]}
    tiers = {d["device_id"]: d["tier"] for d in summary["per_device"]}
    return joined, final, tiers


@pytest.mark.slow
def test_run_uses_the_entry_point_name_and_the_params(tmp_path: Path) -> None:
    scenario = tmp_path / "constant.toml"
    scenario.write_text('name = "ep"\nduration_s = 3\n[devices]\ncount = 4\nrate_hz = 10\n'
                        '[policy]\nname = "constant"\n'
                        'params = { threshold = 0.42, tiers = { low = 0.17 } }\n')
    run_dir = tmp_path / "by-name"
    res = run_testbed(["run", str(scenario), "--out", str(run_dir)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    joined, final, tiers = thresholds(run_dir)
    want = {dev: 0.17 if tier == "low" else 0.42 for dev, tier in tiers.items()}
    assert {"low", "mid", "high"} <= set(tiers.values())
    assert joined == want and final == want


@pytest.mark.slow
def test_a_value_only_the_policy_can_judge_fails_the_start_in_one_line(tmp_path: Path) -> None:
    """Kinds are checked by the harness; a range is the constructor's to check, in the server
    process as it starts: the run stops there with the policy's own words and exit 2."""
    scenario = tmp_path / "bad.toml"
    scenario.write_text('name = "bad"\nduration_s = 3\n[devices]\ncount = 2\n'
                        '[policy]\nname = "cascade_testbed.examples.constant:ConstantPolicy"\n'
                        'params = { threshold = 1.5 }\n')
    res = run_testbed(["run", str(scenario), "--out", str(tmp_path / "bad")], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "threshold must be a number in [0, 1]" in res.stdout
    assert "Traceback" not in res.stdout


@pytest.mark.slow
def test_a_users_server_common_and_examples_modules_beside_the_policy(tmp_path: Path) -> None:
    """A researcher's folder holds `server.py`, `common.py` and an `examples` package of their
    own beside their policy. The testbed's parts live under `cascade_testbed`, so neither side
    shadows the other: the run works, and the policy gets its values from the user's modules
    (a threshold no built-in would choose)."""
    (tmp_path / "server.py").write_text("THRESHOLD = 0.37\n")
    (tmp_path / "common.py").write_text("LOW = 0.13\n")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "__init__.py").write_text('NAME = "users-own"\n')
    (tmp_path / "mypolicy.py").write_text(textwrap.dedent("""\
        import common
        import examples
        import server

        from cascade_testbed.examples.constant import ConstantPolicy


        class MyPolicy(ConstantPolicy):
            name = examples.NAME

            def __init__(self, params=None):
                super().__init__({"threshold": server.THRESHOLD, "tiers": {"low": common.LOW}})
        """))
    run_dir = tmp_path / "users-modules"
    res = run_testbed(["up", "--devices", "3", "--duration", "2", "--policy", "mypolicy:MyPolicy",
                       "--out", str(run_dir)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    joined, final, tiers = thresholds(run_dir)
    want = {dev: 0.13 if tier == "low" else 0.37 for dev, tier in tiers.items()}
    assert {"low", "mid", "high"} == set(tiers.values())
    assert joined == want and final == want
    status = json.loads((run_dir / "summary.json").read_text())
    assert status["policy"] == "mypolicy:MyPolicy"
