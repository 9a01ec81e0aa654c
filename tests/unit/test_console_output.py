"""What a person reads: the summary's header and notes, the progress in a pipe or a file
(plain lines, nothing redrawn, the last poll's numbers last), and `testbed report`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cascade_testbed.testbed import cli
from cascade_testbed.testbed.console import (
    PIPE_WIDTH,
    HarnessConsole,
    LiveProgress,
    live_text,
    summary_tables,
)
from tests.unit.test_cli import fake_summary

runner = CliRunner()


def render(summary: dict[str, Any]) -> str:
    sink = io.StringIO()
    HarnessConsole(file=sink).print(summary_tables(summary))
    return sink.getvalue()


def a_summary(**run: Any) -> dict[str, Any]:
    s = fake_summary()
    s["duration_s"] = 60.0
    s["run"].update({"arrivals_s": 60.0, **run})
    s["per_tier"] = {"low": {"devices": 2, "slo_satisfaction": 1.0, "accuracy": 0.9,
                             "forward_rate": 0.5, "latency_ms": {"p95": 80.0}}}
    s["resources"] = {"device_uss_mb": {"mean": 9.2, "max": 9.4, "sampled": 2}}
    return s


class TestSummary:
    def test_a_full_run_says_its_planned_duration(self) -> None:
        assert "duration=60s slo=" in render(a_summary())

    def test_an_interrupted_run_says_how_long_it_ran_and_why(self) -> None:
        text = render(a_summary(interrupted=True, stopped_by="SIGINT", arrivals_s=12.34))
        assert "duration=12.3s of 60s (stopped by Ctrl-C)" in text
        text = render(a_summary(interrupted=True, stopped_by="SIGTERM", arrivals_s=5.0))
        assert "duration=5.0s of 60s (stopped by SIGTERM)" in text

    def test_a_run_cut_short_otherwise_says_so(self) -> None:
        assert "duration=20.0s of 60s (stopped early)" in render(a_summary(arrivals_s=20.0))

    def test_the_device_uss_max_is_on_its_line(self) -> None:
        line = next(ln for ln in render(a_summary()).splitlines() if "device USS" in ln)
        assert "9.2 MB mean / 9.4 max" in line

    def test_in_a_pipe_nothing_wraps_or_is_cut(self) -> None:
        text = render(a_summary())
        assert "…" not in text and "console.py:" not in text
        row = next(ln for ln in text.splitlines() if "low" in ln)
        assert row.count("│") == 8  # the whole per-tier row on one line


class TestPipe:
    def test_a_pipe_is_wide_and_a_set_width_holds(self,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("COLUMNS", "80")  # a parent's terminal
        assert HarnessConsole(file=io.StringIO()).width == PIPE_WIDTH
        assert HarnessConsole(file=io.StringIO(), width=50).width == 50

    def test_progress_prints_plain_lines_and_the_last_poll_last(self) -> None:
        sink = io.StringIO()
        with LiveProgress(HarnessConsole(file=sink)) as progress:
            progress.phase("starting 3 devices")
            for done in range(4):
                progress.registered(done, 3)
            progress.phase("running")
            for t in range(10):
                live = {"connected": 3 if t < 9 else 0, "queue": t, "throughput_sps": 30.0,
                        "arrival_sps": 30.0, "mean_threshold": 0.5,
                        "done_devices": 3 if t == 9 else 0}
                progress.running(t * 0.3, 3.0, live)
        lines = sink.getvalue().splitlines()
        assert "\x1b" not in sink.getvalue()  # nothing redrawn
        assert lines[0].endswith(" starting 3 devices") and "console.py" not in lines[0]
        assert "registering devices 3/3" in lines
        # a line every few seconds, not one per update; the last poll's numbers at the end
        assert 1 <= sum(ln.startswith("running ") for ln in lines) <= 2
        assert lines[-1] == ("running 2.7/3 s · connected 0 (peak 3) · finished 3 · queue 9 · "
                             "served 30/s of 30/s arriving · mean threshold 0.50")

    def test_the_live_line_counts_finished_devices(self) -> None:
        assert live_text({"connected": 40, "peak": 40, "queue": 0}).startswith(
            "connected 40 · queue 0")
        assert live_text({"connected": 2, "peak": 40, "done_devices": 38}).startswith(
            "connected 2 (peak 40) · finished 38 · ")
        assert live_text({"done_devices": 0}) == ""  # before the first poll answered


class TestReport:
    def test_report_prints_the_tables_once_and_no_json(self, tmp_path: Path) -> None:
        (tmp_path / "summary.json").write_text(json.dumps(a_summary()))
        res = runner.invoke(cli.app, ["report", str(tmp_path), "--no-figures"])
        assert res.exit_code == 0, res.output
        assert res.stdout.count("SLO satisfaction") == 1
        assert res.stdout.count("per tier") == 1
        assert "{" not in res.stdout and '"policy"' not in res.stdout

    def test_report_json_is_the_summary_once_on_stdout(self, tmp_path: Path) -> None:
        (tmp_path / "summary.json").write_text(json.dumps(a_summary()))
        res = runner.invoke(cli.app, ["report", str(tmp_path), "--json", "--no-figures"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["policy"] == "static"
        assert res.stderr.count("SLO satisfaction") == 1 and "{" not in res.stderr
