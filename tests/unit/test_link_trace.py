"""Mahimahi link traces: the format, the FIFO byte accounting against hand-computed delivery
times, the scenario's trace paths, and `testbed trace convert`'s conversion."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cascade_testbed.common.config import LinkSpec, ScenarioError
from cascade_testbed.common.link_trace import (
    TRACES_DIR,
    LinkTrace,
    LinkTraceError,
    format_trace,
    parse_link_trace,
    parse_throughput_csv,
    read_link_trace,
    resolve_link_trace,
    throughput_to_trace,
)
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.emulated_devices.emulation import Impairment, Link, trace_phase
from cascade_testbed.emulated_devices.link_trace import TraceCapacity, TraceQueue

CONSTANT = parse_link_trace("1\n")
"""One opportunity a millisecond: 1,500 bytes/ms = 12 Mbit/s."""


def queue(text: str) -> TraceQueue:
    return TraceQueue(TraceCapacity(parse_link_trace(text)))


class TestFormat:
    def test_repeated_lines_are_several_opportunities_in_one_millisecond(self) -> None:
        trace = parse_link_trace("5\n5\n\n8\n")
        assert (list(trace.times_ms), list(trace.counts)) == ([5, 8], [2, 1])
        assert trace.mean_mbps() == LinkTrace((5, 8), (2, 1)).mean_mbps()
        assert trace.period_ms == 8 and trace.opportunities == 3
        assert CONSTANT.mean_mbps() == pytest.approx(12.0)

    @pytest.mark.parametrize(("text", "why"), [
        ("", "no timestamps"), ("0\n0\n", "must be > 0"), ("3\n2\n", "must not decrease"),
        ("1\nx\n", "line 2"), ("-1\n", "line 1"), ("1.5\n", "line 1"),
        ("4\n\n5\n3\n", "line 4: 3 comes after 5")])
    def test_bad_traces_are_refused_with_where(self, text: str, why: str) -> None:
        with pytest.raises(LinkTraceError, match=why):
            parse_link_trace(text)

    def test_the_shipped_traces_load(self) -> None:
        shipped = sorted(TRACES_DIR.glob("*.up")) + sorted(TRACES_DIR.glob("*.down"))
        assert len(shipped) >= 4
        for path in shipped:
            trace = read_link_trace(path)
            assert trace.period_ms >= 10_000 and 0.1 < trace.mean_mbps() < 100, path.name


class TestCapacity:
    def test_counts_and_times_wrap_around_the_period(self) -> None:
        cap = TraceCapacity(parse_link_trace("5\n5\n8\n"))  # at 5, 5, 8, 13, 13, 16, 21, ...
        assert [cap.count_until(t) for t in (0, 4.9, 5, 8, 12.9, 13, 16, 20.5, 21)] == \
            [0, 0, 2, 3, 3, 5, 6, 6, 8]
        assert [cap.time_of(k) for k in range(1, 10)] == [5, 5, 8, 13, 13, 16, 21, 21, 24]


class TestQueue:
    def test_a_constant_trace_is_a_constant_rate(self) -> None:
        """Trace `1` against a 12 Mbit/s serialisation, both with 5 ms of delay: the same
        deliveries for messages of whole packets arriving on whole milliseconds."""
        spec = LinkSpec(delay_ms=5.0, jitter_ms=0.0, bandwidth_mbps=12.0)
        rate = Link(spec, np.random.default_rng(0))
        traced = Link(spec, np.random.default_rng(0), trace=CONSTANT)
        sends = [(0.0, 1500), (0.0, 3000), (0.010, 1500), (0.010, 4500), (0.020, 15000)]
        want = [0.006, 0.008, 0.016, 0.019, 0.035]
        for (now, nbytes), expected in zip(sends, want, strict=True):
            assert rate.transmit(now, nbytes) == pytest.approx(expected, abs=1e-9)
            assert traced.transmit(now, nbytes) == pytest.approx(expected, abs=1e-9)

    def test_a_gap_holds_messages_until_the_next_opportunity(self) -> None:
        q = queue("1\n2\n3\n10\n")  # at 1, 2, 3, 10, 11, 12, 13, 20, ...
        assert q.depart(0, 4500) == 3
        assert q.depart(3.5, 1500) == 10  # the gap 4-9 ms carries nothing
        assert q.depart(4.0, 1500) == 11
        assert q.depart(5.0, 3000) == 13  # 12 and 13

    def test_the_trace_wraps_around_at_its_last_timestamp(self) -> None:
        q = queue("5\n5\n8\n")  # period 8: at 5, 5, 8, 13, 13, 16, 21, 21, 24
        assert q.depart(9.0, 3000) == 13
        assert q.depart(20.0, 4500) == 24  # 21, 21, 24

    def test_opportunities_with_nothing_queued_are_wasted(self) -> None:
        q = queue("1\n")
        assert q.depart(0.0, 500) == 1  # 1,000 bytes of opportunity 1 left
        assert q.depart(0.5, 500) == 1  # queued before it occurred: shares it
        assert q.depart(1.0, 500) == 2  # not queued when it occurred: its rest was wasted
        assert q.depart(5.5, 1500) == 6  # 3, 4, 5 wasted on an idle link
        assert q.depart(5.5, 2000) == 8  # 7 and 500 bytes of 8
        assert q.depart(6.0, 1000) == 8  # the rest of 8
        assert q.depart(6.0, 1) == 9

    def test_an_opportunity_at_the_arrival_millisecond_is_already_gone(self) -> None:
        """mm-link serves the opportunities due before it enqueues a packet arriving then."""
        assert queue("1\n").depart(3.0, 1500) == 4

    def test_delay_cuts_reset_and_the_origin(self) -> None:
        spec = LinkSpec(delay_ms=10.0, jitter_ms=0.0)
        link = Link(spec, np.random.default_rng(0), trace=parse_link_trace("1\n2\n3\n10\n"))
        link.set_origin(100.0)  # trace time 0 is loop time 100 s
        assert link.transmit(100.0, 1500) == pytest.approx(100.011)
        link.reset()
        link.impair([Impairment(100.0, 100.0105, 1.0)])  # a cut until 10.5 ms
        assert link.transmit(100.002, 1500) == pytest.approx(100.011 + 0.010)  # at 11 ms
        assert link.allowance_s(1500) == pytest.approx(0.010 + 2.5e-3)  # 4 per 10 ms

    def test_a_phase_starts_the_device_further_along_the_trace(self) -> None:
        """A 10 ms trace with opportunities at 1, 2, 3 and 10 ms: at phase 0 a message at run
        time 0 leaves at 1 ms; half a period along (trace time 5 ms) it waits for the one at
        trace time 10 ms, run time 5 ms."""
        trace = parse_link_trace("1\n2\n3\n10\n")
        spec = LinkSpec(delay_ms=0.0, jitter_ms=0.0)
        aligned = Link(spec, np.random.default_rng(0), trace=trace)
        aligned.set_origin(100.0)
        assert aligned.transmit(100.0, 1500) == pytest.approx(100.001)
        halfway = Link(spec, np.random.default_rng(0), trace=trace)
        halfway.set_origin(100.0, phase=0.5)
        assert halfway.transmit(100.0, 1500) == pytest.approx(100.005)

    def test_spread_phases_cover_the_period_evenly_and_aligned_is_zero(self) -> None:
        phases = sorted(trace_phase(i, "spread") for i in range(12))
        assert all(0.0 <= f < 1.0 for f in phases) and len(set(phases)) == 12
        gaps = [b - a for a, b in zip(phases, [*phases[1:], phases[0] + 1.0], strict=True)]
        assert max(gaps) < 3 / 12  # no stretch of the period left to few devices
        assert {trace_phase(i, "aligned") for i in range(12)} == {0.0}
        with pytest.raises(ScenarioError, match="trace_phase"):
            LinkSpec(trace_phase="random")

    def test_a_long_trace_below_its_capacity_keeps_up(self) -> None:
        """200,000 lines of one opportunity each (12 Mbit/s) under 700 bytes every 0.5 ms
        (11.2 Mbit/s): every message leaves within two opportunities of its arrival."""
        q = TraceQueue(TraceCapacity(parse_link_trace(format_trace(range(1, 200_001)))))
        for i in range(20_000):
            assert 0 < q.depart(i * 0.5, 700) - i * 0.5 <= 2.0


class TestScenarioPaths:
    def write(self, tmp_path: Path, trace: str) -> Path:
        path = tmp_path / "s.toml"
        path.write_text(f'[tiers.low.uplink]\ntrace = "{trace}"\n')
        return path

    def test_relative_to_the_scenario_then_the_shipped_traces(self, tmp_path: Path) -> None:
        (tmp_path / "mine.up").write_text("1\n")
        cfg = load_scenario(self.write(tmp_path, "mine.up"))
        assert cfg.tiers["low"].uplink.trace == str((tmp_path / "mine.up").resolve())
        cfg = load_scenario(self.write(tmp_path, "synthetic-lte-walking.up"))
        assert cfg.tiers["low"].uplink.trace == str(TRACES_DIR / "synthetic-lte-walking.up")
        assert cfg.tiers["low"].downlink.trace == ""

    @pytest.mark.parametrize(("trace", "why"), [
        ("missing.up", "not found"), (".", "not a regular file"), ("/dev/zero", "not a regular")])
    def test_a_trace_that_is_not_a_file_is_refused_naming_the_field(
            self, tmp_path: Path, trace: str, why: str) -> None:
        with pytest.raises(ScenarioError, match=f"tiers.low.uplink.trace: .*{why}"):
            load_scenario(self.write(tmp_path, trace))

    def test_a_symlink_is_checked_where_it_leads(self, tmp_path: Path) -> None:
        (tmp_path / "fifo").symlink_to("/dev/null")
        with pytest.raises(LinkTraceError, match="not a regular file"):
            resolve_link_trace("fifo", tmp_path)

    def test_control_characters_are_not_a_path(self) -> None:
        with pytest.raises(LinkTraceError, match="printable"):
            resolve_link_trace("a\nb", None)
        with pytest.raises(ScenarioError):
            LinkSpec(trace="a\x00b")


class TestConvert:
    def test_a_constant_rate_becomes_the_constant_trace(self) -> None:
        out = throughput_to_trace([(0.0, 12.0)])
        assert out == list(range(1, 1001))

    def test_fractions_carry_over_and_silences_stay(self) -> None:
        out = throughput_to_trace([(0.0, 6.0), (1.0, 0.0), (2.0, 12.0)])
        assert out[:3] == [2, 4, 6] and len([t for t in out if t <= 1000]) == 500
        assert not [t for t in out if 1000 < t <= 2000]
        assert out[-1] == 3000 and len(out) == 1500

    def test_a_log_ending_in_a_silence_keeps_its_length(self) -> None:
        out = throughput_to_trace([(10.0, 12.0), (11.0, 0.0)])
        assert out[-2:] == [1000, 2000]

    def test_csv_with_a_header_and_comments(self) -> None:
        rows = parse_throughput_csv("time_s,mbps\n0, 1.5 # start\n\n1,2\n")
        assert rows == [(0.0, 1.5), (1.0, 2.0)]
        with pytest.raises(LinkTraceError, match="line 3"):
            parse_throughput_csv("0,1\n1,2\nx,y\n")

    @pytest.mark.parametrize("rows", [[], [(0.0, 0.0)], [(1.0, 1.0), (0.5, 1.0)],
                                      [(0.0, math.nan)]])
    def test_bad_logs_are_refused(self, rows: list[tuple[float, float]]) -> None:
        with pytest.raises(LinkTraceError):
            throughput_to_trace(rows)


class TestConvertCommand:
    def test_testbed_trace_convert_writes_a_trace_that_loads(self, tmp_path: Path) -> None:
        from typer.testing import CliRunner

        from cascade_testbed.testbed import cli

        log = tmp_path / "log.csv"
        log.write_text("seconds,mbps\n0,12\n1,24\n")
        res = CliRunner().invoke(cli.app, ["trace", "convert", str(log), str(tmp_path / "t.up"),
                                           "--scale", "0.5"])
        assert res.exit_code == 0, res.output
        trace = read_link_trace(tmp_path / "t.up")
        assert trace.period_ms == 2000 and trace.opportunities == 500 + 1000
        bad = CliRunner().invoke(cli.app, ["trace", "convert", str(tmp_path / "none.csv"),
                                           str(tmp_path / "x")])
        assert bad.exit_code == 2 and "bad input" in bad.output
        assert not (tmp_path / "x").exists()
