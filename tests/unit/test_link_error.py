"""The emulation checks itself: the link timing error (the server's: when it acted on a held
message against when the link delivered it) and the faithfulness rule that judges it
(summary, last line, claims); each forwarded sample's reply lateness at the device (records),
its percentiles (summary) and the note it earns."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.records import FIELDS, REQUIRED_FIELDS, RecordWriter, read_records
from cascade_testbed.emulated_devices.device import _server_timed, reply_late_ms
from cascade_testbed.testbed.claims.jobs import unfaithful
from cascade_testbed.testbed.faithfulness import doubts, link_error_doubt, reply_late_note
from cascade_testbed.testbed.results.metrics import DeviceTally, summarize
from cascade_testbed.testbed.verdict import last_line, unfaithful_line
from tests.unit.test_records_metrics import rec


def test_the_lateness_is_what_the_round_trip_took_beyond_the_link_and_the_server() -> None:
    """Uplink due at 10.000 s; the server queued 3 ms and computed 5 ms; the reply was read
    at 10.0095 s: 1.5 ms more than the emulation accounts for."""
    res = wire.Result(sample_id=1, queue_us=3000, compute_us=5000)
    assert reply_late_ms(10.0, 10.0095, res) == pytest.approx(1.5)


@pytest.mark.parametrize(("status", "cause", "timed"), [
    (wire.ResultStatus.OK, "", True), (wire.ResultStatus.EXPIRED, "deadline", True),
    (wire.ResultStatus.REJECTED, "queue_full", True),
    (wire.ResultStatus.REJECTED, "link_backlog", False),  # answered on receipt, not held
    (wire.ResultStatus.FAILED, "model_error", False)])  # its compute time is not reported
def test_which_replies_measure_it(status: int, cause: str, timed: bool) -> None:
    assert _server_timed(wire.Result(sample_id=1, status=status, cause=cause)) is timed


class TestRecords:
    def test_the_column_round_trips_and_older_files_still_read(self, tmp_path: Path) -> None:
        at = FIELDS.index("reply_late_ms")
        assert at == len(REQUIRED_FIELDS)  # the first column older files may lack
        w = RecordWriter(tmp_path / "d.csv")
        w.write(dataclasses.replace(rec(i=0, forwarded=True), reply_late_ms=1.25))
        w.write(rec(i=1))
        w.close()
        back, bad = read_records(tmp_path / "d.csv")
        assert bad == 0 and back[0].reply_late_ms == 1.25 and math.isnan(back[1].reply_late_ms)
        # A file written before the column existed: the same rows without it (and the ones
        # after it, added later still).
        lines = (tmp_path / "d.csv").read_text().splitlines()
        old = "\n".join(",".join(line.split(",")[:at]) for line in lines) + "\n"
        (tmp_path / "old.csv").write_text(old)
        back, bad = read_records(tmp_path / "old.csv")
        assert bad == 0 and len(back) == 2 and math.isnan(back[0].reply_late_ms)

    def test_a_header_missing_a_required_column_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "x.csv").write_text("device_id,tier\nlow-000,low\n")
        with pytest.raises(ValueError, match="unexpected header"):
            read_records(tmp_path / "x.csv")


def test_the_summary_has_its_percentiles_over_the_samples_that_measured_it() -> None:
    records = [dataclasses.replace(rec(i=i, forwarded=True, source="heavy"),
                                   reply_late_ms=float(i)) for i in range(1, 101)]
    records.append(rec(i=200))  # not forwarded: NaN, not counted
    s = summarize(records, [DeviceTally("low-000", "low", 101, 0.8)], slo_ms=150,
                  duration_s=10)
    late = s["emulation"]["reply_late_ms"]
    assert late["n"] == 100 and late["p50"] == 50.0 and late["p99"] == 99.0
    empty = summarize([rec()], [DeviceTally("low-000", "low", 1, 0.8)], slo_ms=150,
                      duration_s=1)
    assert empty["emulation"]["reply_late_ms"]["n"] == 0
    assert empty["emulation"]["reply_late_ms"]["p99"] is None


class TestFaithfulness:
    def summary(self, link_p99: float | None, lag_p99: float = 1.0) -> dict[str, object]:
        return {"slo_ms": 150, "emulation": {
            "compute_overrun_fraction": 0.0, "loop_lag_ms": {"p99": lag_p99},
            "link_error_ms": {"p50": 1.0, "p99": link_p99, "n": 10}}}

    def test_a_link_error_p99_over_a_tenth_of_the_slo_is_unfaithful(self) -> None:
        assert link_error_doubt(self.summary(14.9)) is None
        why = link_error_doubt(self.summary(15.1))
        assert why is not None and "link timing error p99 15.1 ms > 15 ms" in why
        assert link_error_doubt(self.summary(None)) is None  # nothing measured
        assert doubts(self.summary(15.1, lag_p99=20.0)) == [
            "host overloaded (loop lag p99 20 ms > 15 ms)", why]

    def test_late_replies_earn_a_note_not_a_doubt(self) -> None:
        """Reading replies late is the density's (every run at 40 devices on 2 cores), so it
        is said, with its size, but it does not make the run unfaithful."""
        s = {"slo_ms": 150, "emulation": {"compute_overrun_fraction": 0.0,
                                          "loop_lag_ms": {"p99": 1.0},
                                          "reply_late_ms": {"p50": 2.6, "p99": 41.0, "n": 9}}}
        note = reply_late_note(s)
        assert note is not None and "p99 41.0 ms > 15 ms" in note and "median 2.6 ms" in note
        assert doubts(s) == []
        s["emulation"]["reply_late_ms"]["p99"] = 14.0  # type: ignore[index]
        assert reply_late_note(s) is None
        assert reply_late_note({"slo_ms": 150}) is None  # nothing measured

    def test_the_claims_rule_judges_it_too(self) -> None:
        got = unfaithful(self.summary(30.0))
        assert got is not None and "link timing error" in got
        assert unfaithful(self.summary(3.0)) is None
        older = {"slo_ms": 150, "emulation": {"compute_overrun_fraction": 0.0,
                                              "loop_lag_ms": {"p99": 1.0}}}
        assert unfaithful(older) is None  # summaries from before the link error stand

    def test_the_last_line_says_it(self) -> None:
        assert unfaithful_line(["a", "b"]) == "run not faithful: a; b"
        assert last_line(["x"], ["y"]) == "run failed: x; emulation not faithful: y"
        assert last_line(["x"]) == "run failed: x"
