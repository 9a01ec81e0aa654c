"""The CLI maps options onto the scenario and results onto exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cascade_testbed.common.config import ScenarioConfig, ScenarioError
from cascade_testbed.testbed import cli
from cascade_testbed.testbed.commands import runs
from cascade_testbed.testbed.orchestrator import RunResult
from cascade_testbed.testbed.verdict import run_problems

runner = CliRunner()


def fake_summary(lost: int = 0, **faults: int) -> dict[str, Any]:
    """A summary as `collect` writes it, with its problems judged by `testbed.verdict`."""
    empty = {k: None for k in ("p50", "p90", "p95", "p99", "p99.9", "mean", "max")}
    summary = {"scenario": "t", "policy": "static", "devices": 2, "mix": "1:1:1", "duration_s": 1.0,
            "slo_ms": 100.0, "samples": {"generated": 10, "completed": 10 - lost, "lost": lost,
                                         "light": 10 - lost, "heavy": 0, "fallback": 0,
                                         "rejected": 0},
            "slo_satisfaction": 1.0, "accuracy": 0.9, "throughput_sps": 10.0,
            "forward_rate": 0.0, "latency_ms": empty, "per_tier": {}, "per_device": [],
            "emulation": {"compute_overrun_fraction": 0.0, "start_lag_ms": empty,
                          "late_replies": 0}, "run": {"partial": False}, "resources": {},
               "faults": faults}
    summary["run"]["problems"] = run_problems(summary, 0.05)  # type: ignore[index]
    return summary


class TestOverrides:
    def test_options_replace_scenario_values(self) -> None:
        cfg = runs.apply_overrides(ScenarioConfig(), devices=7, policy="static", duration=3.0,
                                   slo_ms=90.0, mix="0:1:1", seed=4)
        assert (cfg.devices.count, cfg.policy.name, cfg.duration_s, cfg.slo_ms,
                cfg.devices.mix, cfg.seed) == (7, "static", 3.0, 90.0, "0:1:1", 4)

    def test_switching_policy_drops_the_old_params(self) -> None:
        base = ScenarioConfig()
        base = runs.apply_overrides(base, policy="multitasc")
        assert runs.apply_overrides(base, policy="static").policy.params == {}

    def test_invalid_override_is_refused(self) -> None:
        with pytest.raises(ScenarioError):
            runs.apply_overrides(ScenarioConfig(), mix="1:1")


class TestCommands:
    def test_up_passes_options_and_exits_zero(self, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
        seen = {}

        def fake_run(cfg: ScenarioConfig, run_dir: Path, progress: object,
                     **kw: object) -> RunResult:
            seen["cfg"], seen["dir"] = cfg, run_dir
            return RunResult(run_dir, fake_summary())

        monkeypatch.setattr(runs, "run_scenario", fake_run)
        res = runner.invoke(cli.app, ["up", "--devices", "3", "--policy", "static",
                                      "--duration", "2", "--out", str(tmp_path / "r")])
        assert res.exit_code == 0, res.output
        assert seen["cfg"].devices.count == 3 and seen["dir"] == tmp_path / "r"

    def test_lost_samples_fail_the_command(self, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
        monkeypatch.setattr(runs, "run_scenario",
                            lambda cfg, d, p, **kw: RunResult(d, fake_summary(lost=2)))
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r")])
        assert res.exit_code == 1 and "lost" in res.output
        assert res.output.strip().splitlines()[-1].startswith("run failed: 2 samples were lost")

    def test_an_unplanned_server_death_fails_the_run_and_says_so_last(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setattr(runs, "run_scenario", lambda cfg, d, p, **kw: RunResult(
            d, fake_summary(server_crashes=1, device_crashes=2)))
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r")])
        last = res.output.strip().splitlines()[-1]
        assert res.exit_code == 1 and "server deaths" in res.output
        assert "2 device processes crashed" in last and "the server died 1 time" in last

    def test_an_interrupted_run_exits_130(self, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
        monkeypatch.setattr(runs, "run_scenario", lambda cfg, d, p, **kw: RunResult(
            d, fake_summary(), interrupted=True))
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r")])
        assert res.exit_code == 130

    @pytest.mark.parametrize("args,needle", [
        (["--duration", "inf"], "duration_s"), (["--devices", "10000000"], "devices.count"),
        (["--slo-ms", "nan"], "slo_ms"), (["--max-fault-fallback", "2"], "max_fault_fallback"),
    ])
    def test_impossible_numbers_are_refused_before_anything_starts(
            self, args: list[str], needle: str) -> None:
        res = runner.invoke(cli.app, ["up", *args])
        assert res.exit_code == 2 and needle in res.output

    def test_a_device_count_beyond_the_hosts_memory_needs_force(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        from cascade_testbed.testbed import orchestrator

        monkeypatch.setattr(orchestrator.psutil, "virtual_memory",
                            lambda: type("Mem", (), {"available": 1 * 2**30})())
        with pytest.raises(orchestrator.RunError, match="--force"):
            orchestrator.run_scenario(ScenarioConfig(), tmp_path / "r")
        assert not (tmp_path / "r").exists()

    def test_unknown_policy(self) -> None:
        res = runner.invoke(cli.app, ["up", "--policy", "oracle"])
        assert res.exit_code == 2 and "unknown policy" in res.output

    def test_bad_scenario_file(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.toml"
        bad.write_text("[devices]\ncount = 'many'\n")
        res = runner.invoke(cli.app, ["run", str(bad)])
        assert res.exit_code == 2 and "devices.count" in res.output

    def test_report_needs_a_run_folder(self, tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["report", str(tmp_path)])
        assert res.exit_code == 2
