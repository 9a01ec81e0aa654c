"""The CLI for scripts: --json, --expect, compare, --version, and text that rich must not
eat. The run itself is faked (its summary is what `collect` would write)."""

from __future__ import annotations

import io
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.testbed import cli
from cascade_testbed.testbed.commands import runs
from cascade_testbed.testbed.orchestrator import RunResult
from tests.unit.test_cli import fake_summary

runner = CliRunner()


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Runs `up`/`run` without processes; records the run folders it was given."""
    seen: list[Path] = []

    def run(cfg: ScenarioConfig, run_dir: Path, progress: object, **kw: object) -> RunResult:
        seen.append(run_dir)
        return RunResult(run_dir, fake_summary())

    monkeypatch.setattr(runs, "run_scenario", run)
    return seen


class TestJson:
    def test_stdout_is_the_summary_alone(self, fake_run: list[Path], tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["up", "--json", "--out", str(tmp_path / "r")])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data == fake_summary()
        assert "SLO satisfaction" in res.stderr and "run folder" in res.stderr

    def test_without_json_the_table_is_on_stdout(self, fake_run: list[Path],
                                                 tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r")])
        assert "SLO satisfaction" in res.stdout

    def test_a_bad_option_leaves_stdout_empty(self, fake_run: list[Path]) -> None:
        res = runner.invoke(cli.app, ["up", "--json", "--mix", "1:1"])
        assert res.exit_code == 2 and res.stdout == "" and "mix" in res.stderr

    def test_report(self, tmp_path: Path) -> None:
        (tmp_path / "summary.json").write_text(json.dumps(fake_summary()))
        res = runner.invoke(cli.app, ["report", str(tmp_path), "--json", "--no-figures"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["policy"] == "static"


class TestExpect:
    def test_a_met_expectation_passes(self, fake_run: list[Path], tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r"), "--expect",
                                      "slo_satisfaction>=0.9", "--expect", "lost==0"])
        assert res.exit_code == 0, res.output

    def test_a_failed_one_fails_the_run_and_says_so_last(self, fake_run: list[Path],
                                                          tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r"), "--json",
                                      "--expect", "accuracy>=0.95", "--expect",
                                      "throughput>1"])
        assert res.exit_code == 1
        assert res.stderr.strip().splitlines()[-1] == \
            "run failed: expected accuracy>=0.95, got 0.9"
        data = json.loads(res.stdout)
        assert data["expectations"] == [
            {"expect": "accuracy>=0.95", "metric": "accuracy", "ok": False},
            {"expect": "throughput>1", "metric": "throughput_sps", "ok": True}]
        assert data["run"]["problems"] == ["expected accuracy>=0.95, got 0.9"]

    def test_an_unknown_metric_stops_before_the_run(self, fake_run: list[Path],
                                                    tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r"), "--expect",
                                      "slo>=0.9"])
        assert res.exit_code == 2 and fake_run == []
        assert "unknown metric 'slo'" in res.output and "slo_satisfaction" in res.output

    def test_sweep_checks_its_expectations_before_running(self, tmp_path: Path) -> None:
        scenario = tmp_path / "s.toml"
        scenario.write_text('name = "x"\nduration_s = 1\n[sweep]\ndevices = [1, 2]\n')
        res = runner.invoke(cli.app, ["sweep", str(scenario), "--out", str(tmp_path / "o"),
                                      "--expect", "accuracy>>1"])
        assert res.exit_code == 2 and not (tmp_path / "o").exists()


class TestCompare:
    def write(self, folder: Path, **values: Any) -> None:
        folder.mkdir(parents=True)
        summary = fake_summary()
        summary.update(values)
        (folder / "summary.json").write_text(json.dumps(summary))

    def test_seed_folders_get_an_interval(self, tmp_path: Path) -> None:
        for k, (sa, sb) in enumerate(((0.8, 0.9), (0.7, 0.75), (0.9, 0.97)), start=1):
            self.write(tmp_path / "a" / f"seed-{k}", seed=k, slo_satisfaction=sa)
            self.write(tmp_path / "b" / f"seed-{k}", seed=k, slo_satisfaction=sb)
        res = runner.invoke(cli.app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"),
                                      "--json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        slo = next(m for m in data["metrics"] if m["metric"] == "slo_satisfaction")
        assert slo["diff"] == pytest.approx(0.0733333) and slo["n"] == 3
        assert slo["ci95"][0] < slo["diff"] < slo["ci95"][1]
        table = runner.invoke(cli.app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
        assert "+7.33 pp" in table.stdout and "paired over 3 runs" in table.stdout

    def test_two_runs(self, tmp_path: Path) -> None:
        self.write(tmp_path / "a", throughput_sps=10.0)
        self.write(tmp_path / "b", throughput_sps=12.5)
        res = runner.invoke(cli.app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"),
                                      "--json"])
        tp = next(m for m in json.loads(res.stdout)["metrics"]
                  if m["metric"] == "throughput_sps")
        assert tp["diff"] == 2.5 and tp["ci95"] is None
        figures = [m["metric"] for m in json.loads(res.stdout)["metrics"]]
        assert figures[:4] == ["goodput_sps", "slo_satisfaction", "accuracy", "latency_ms.p95"]
        table = runner.invoke(cli.app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
        assert "offered load" in table.stdout  # throughput is labelled for what it is

    def test_not_a_run(self, tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["compare", str(tmp_path), str(tmp_path)])
        assert res.exit_code == 2 and "cannot compare" in res.output


class TestText:
    def test_version(self) -> None:
        res = runner.invoke(cli.app, ["--version"])
        assert res.exit_code == 0 and res.stdout.strip() == \
            f"testbed {version('cascade-testbed')}"

    def test_help_keeps_brackets(self) -> None:
        res = runner.invoke(cli.app, ["sweep", "--help"])
        assert "scenario's [sweep] axes" in res.stdout and "with a [sweep] table" in res.stdout

    def test_errors_keep_colons_and_brackets(self, tmp_path: Path) -> None:
        res = runner.invoke(cli.app, ["up", "--mix", "a:b:c"])
        assert res.exit_code == 2 and "'a:b:c'" in res.output
        scenario = tmp_path / "s.toml"
        scenario.write_text('name = "x"\n')
        res = runner.invoke(cli.app, ["sweep", str(scenario)])
        assert res.exit_code == 2 and "has no [sweep] table" in res.output

    def test_the_run_folder_is_printed_before_the_run(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        printed: list[str] = []

        def run(cfg: ScenarioConfig, run_dir: Path, progress: object, **kw: object
                ) -> RunResult:
            printed.append(sink.getvalue())
            return RunResult(run_dir, fake_summary())

        sink = io.StringIO()
        monkeypatch.setattr(runs, "run_scenario", run)
        # a console of its own: setting `file` on the shared one would pin it, after the test,
        # to whatever stream was current (the next CliRunner would see nothing)
        monkeypatch.setattr(runs, "console", Console(file=sink, emoji=False))
        runner.invoke(cli.app, ["up", "--out", str(tmp_path / "r")])
        assert f"run folder: {tmp_path / 'r'}" in printed[0].replace("\n", "")
