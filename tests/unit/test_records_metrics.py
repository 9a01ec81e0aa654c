"""Records survive a crash; metric definitions are DESIGN.md's."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cascade_testbed.common.records import (
    FLUSH_WITHIN_S,
    FlushDeadline,
    GeneratedJournal,
    RecordWriter,
    SampleRecord,
    read_journal,
    read_records,
)
from cascade_testbed.emulated_devices.window import Window
from cascade_testbed.testbed.results.metrics import DeviceTally, latency_summary, summarize


def rec(device: str = "low-000", tier: str = "low", i: int = 0, *, latency: float = 50.0,
        source: str = "light", correct: bool = True, forwarded: bool = False,
        overrun: bool = False, cause: str = "", incarnation: int = 0) -> SampleRecord:
    return SampleRecord(
        device_id=device, tier=tier, sample_id=i, incarnation=incarnation, label=1,
        t_sched_s=i * 0.1, start_lag_ms=0.1,
        light_ms=30.0, light_real_ms=0.05, overrun=overrun, light_pred=1, light_conf=0.9,
        threshold=0.8, forwarded=forwarded, queue_ms=math.nan, compute_ms=math.nan,
        batch_size=0, heavy_model="", final_pred=1 if correct else 2, source=source,  # type: ignore[arg-type]
        cause=cause, correct=correct, latency_ms=latency, slo_met=latency <= 150,
        wall_epoch_s=1.7e9 + i)


class TestRecords:
    def test_round_trip(self, tmp_path: Path) -> None:
        w = RecordWriter(tmp_path / "d.csv")
        originals = [rec(i=i, latency=10.0 * i, forwarded=i % 2 == 0) for i in range(20)]
        for r in originals:
            w.write(r)
        w.close()
        back, bad = read_records(tmp_path / "d.csv")
        assert bad == 0 and len(back) == 20
        assert back[3].latency_ms == pytest.approx(30.0) and back[2].forwarded
        assert math.isnan(back[0].queue_ms)
        assert back[5].wall_epoch_s == pytest.approx(1.7e9 + 5, abs=1e-5)

    def test_torn_last_row_is_skipped(self, tmp_path: Path) -> None:
        """A crash mid-write leaves a readable prefix; the torn row is counted, not fatal."""
        w = RecordWriter(tmp_path / "d.csv")
        for i in range(5):
            w.write(rec(i=i))
        w.close()
        text = (tmp_path / "d.csv").read_text()
        (tmp_path / "d.csv").write_text(text[:-25])
        back, bad = read_records(tmp_path / "d.csv")
        assert len(back) == 4 and bad == 1

    def test_rows_are_visible_as_written(self, tmp_path: Path) -> None:
        w = RecordWriter(tmp_path / "d.csv")
        w.write(rec(cause="timeout", source="fallback"))
        back = read_records(tmp_path / "d.csv")[0]
        assert len(back) == 1 and back[0].cause == "timeout"
        w.close()

    def test_sigkill_loses_no_written_row_or_journal_line(self, tmp_path: Path) -> None:
        """A process killed without warning leaves every row and journal line it wrote."""
        code = (
            "import os, signal, sys\n"
            "from pathlib import Path\n"
            "from tests.unit.test_records_metrics import rec\n"
            "from cascade_testbed.common.records import GeneratedJournal, RecordWriter\n"
            "out = Path(sys.argv[1])\n"
            "w, j = RecordWriter(out / 'd.csv'), GeneratedJournal(out / 'd.gen')\n"
            "for i in range(50):\n"
            "    j.started(i)\n"
            "    if i < 47: w.write(rec(i=i))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=os.getcwd(),
                              timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert len(read_records(tmp_path / "d.csv")[0]) == 47
        assert read_journal(tmp_path / "d.gen") == set(range(50))

    def test_journal_skips_a_torn_line(self, tmp_path: Path) -> None:
        j = GeneratedJournal(tmp_path / "d.gen")
        for i in (0, 1, 12):
            j.started(i)
        j.close()
        (tmp_path / "d.gen").write_bytes((tmp_path / "d.gen").read_bytes() + b"1x")
        assert read_journal(tmp_path / "d.gen") == {0, 1, 12}
        assert read_journal(tmp_path / "missing.gen") == set()


class TestMetrics:
    def test_percentiles_are_nearest_rank(self) -> None:
        s = latency_summary(list(range(1, 101)))
        assert s["p50"] == 50 and s["p95"] == 95 and s["p99"] == 99 and s["max"] == 100

    def test_empty(self) -> None:
        assert latency_summary([])["p50"] is None

    def test_summary_definitions(self) -> None:
        """SLO satisfaction and forward rate are over generated samples, so a lost sample
        counts as a miss; accuracy is over final answers; throughput per second of run."""
        records = [rec(i=0, latency=100), rec(i=1, latency=200, source="heavy", forwarded=True),
                   rec(i=2, latency=120, correct=False, source="fallback", forwarded=True,
                       overrun=True),
                   rec("high-001", "high", 0, latency=10)]
        tallies = [DeviceTally("low-000", "low", generated=4, final_threshold=0.7),
                   DeviceTally("high-001", "high", generated=1, final_threshold=0.9)]
        s = summarize(records, tallies, slo_ms=150.0, duration_s=2.0)
        assert s["samples"] == {"generated": 5, "completed": 4, "aborted": 0, "lost": 1,
                                "light": 2, "heavy": 1, "fallback": 1, "rejected": 0,
                                "forwarded": 2, "causes": {}}
        assert s["slo_satisfaction"] == pytest.approx(3 / 5)
        assert s["accuracy"] == pytest.approx(3 / 4)
        assert s["forward_rate"] == pytest.approx(2 / 5)
        assert s["throughput_sps"] == pytest.approx(2.0)
        assert s["goodput_sps"] == pytest.approx(3 / 2.0)  # the 3 answers within 150 ms
        assert s["emulation"]["compute_overrun_fraction"] == pytest.approx(1 / 4)
        low = next(d for d in s["per_device"] if d["device_id"] == "low-000")
        assert low["lost"] == 1 and low["final_threshold"] == 0.7
        assert s["per_tier"]["high"]["slo_satisfaction"] == 1.0

    def test_aborted_samples_are_accounted_not_lost(self) -> None:
        """Samples a killed device was working on are `aborted`: not lost, but SLO misses."""
        records = [rec(i=i) for i in range(6)] + \
            [rec(i=6, source="rejected", cause="queue_full", forwarded=True),
             rec(i=7, source="fallback", cause="timeout", forwarded=True, latency=1000)]
        tallies = [DeviceTally("low-000", "low", generated=10, final_threshold=0.7,
                               aborted=2, incarnations=2)]
        s = summarize(records, tallies, slo_ms=150.0, duration_s=1.0)
        assert s["samples"]["aborted"] == 2 and s["samples"]["lost"] == 0
        assert s["samples"]["causes"] == {"queue_full": 1, "timeout": 1}
        assert s["slo_satisfaction"] == pytest.approx(7 / 10)
        assert s["per_device"][0]["incarnations"] == 2

    def test_device_without_tally_counts_its_records(self) -> None:
        s = summarize([rec(i=i) for i in range(3)], [], slo_ms=150.0, duration_s=1.0)
        assert s["samples"]["generated"] == 3 and s["samples"]["lost"] == 0


class TestWindow:
    def test_counts_and_reset(self) -> None:
        w = Window()
        for conf in (0.5, 0.9):
            w.on_generated(conf, 30.0)
        w.on_forwarded()
        w.on_answered("light", True, already_missed=False)
        w.on_overdue()
        w.on_answered("fallback", False, already_missed=True)  # counted once, when overdue
        r = w.take(0.5, 0.8, 3)
        assert (r.generated, r.forwarded, r.answered, r.slo_met, r.slo_missed, r.fallback) == \
            (2, 1, 2, 1, 1, 1)
        assert r.mean_light_confidence == pytest.approx(0.7) and r.epoch == 3
        assert w.take(0.5, 0.8, 3).generated == 0


class TestBufferedWriting:
    def test_buffered_rows_and_lines_reach_the_file_only_at_flush(self, tmp_path: Path) -> None:
        w = RecordWriter(tmp_path / "d.csv", buffered=True)
        j = GeneratedJournal(tmp_path / "d.gen", buffered=True)
        for i in range(3):
            j.started(i)
            w.write(rec(i=i))
        assert read_records(tmp_path / "d.csv") == ([], 0)  # the header only
        assert read_journal(tmp_path / "d.gen") == set()
        w.flush()
        j.flush()
        assert [r.sample_id for r in read_records(tmp_path / "d.csv")[0]] == [0, 1, 2]
        assert read_journal(tmp_path / "d.gen") == {0, 1, 2}
        j.started(3)
        w.write(rec(i=3))
        w.close()
        j.close()  # closing flushes
        assert len(read_records(tmp_path / "d.csv")[0]) == 4 and w.count == 4
        assert read_journal(tmp_path / "d.gen") == {0, 1, 2, 3}

    def test_sigkill_keeps_every_flushed_row(self, tmp_path: Path) -> None:
        code = (
            "import os, signal, sys\n"
            "from pathlib import Path\n"
            "from tests.unit.test_records_metrics import rec\n"
            "from cascade_testbed.common.records import GeneratedJournal, RecordWriter\n"
            "out = Path(sys.argv[1])\n"
            "w = RecordWriter(out / 'd.csv', buffered=True)\n"
            "j = GeneratedJournal(out / 'd.gen', buffered=True)\n"
            "for i in range(50):\n"
            "    j.started(i)\n"
            "    w.write(rec(i=i))\n"
            "    if i == 39: w.flush(); j.flush()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=os.getcwd(),
                              timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert len(read_records(tmp_path / "d.csv")[0]) == 40
        assert read_journal(tmp_path / "d.gen") == set(range(40))

    def test_flush_deadline(self) -> None:
        d = FlushDeadline()
        assert not d.must_flush(None)  # nothing buffered
        d.buffered(10.0)
        d.buffered(10.04)  # the first one sets the deadline
        assert d.due == 10.0 + FLUSH_WITHIN_S
        assert not d.must_flush(10.0 + FLUSH_WITHIN_S - 0.001)  # the next wake-up will do
        assert d.must_flush(10.0 + FLUSH_WITHIN_S + 0.001)  # too late: now
        assert d.must_flush(None)  # no wake-up planned: now
        d.flushed()
        assert d.due is None and not d.must_flush(None)
        assert FLUSH_WITHIN_S <= 0.05  # half of the 100 ms bar is left for a late loop
