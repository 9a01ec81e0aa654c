"""Names never become paths, inputs are bounded regular files, the connection and report checks
and the run verdict, tested as plain functions (docs/security.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.config import DevicesConfig, IdnConfig, IdnNode, ScenarioError
from cascade_testbed.common.events import EventLog
from cascade_testbed.common.files import (
    DiskFull,
    InputFileError,
    OutsideRunFolder,
    check_regular,
    file_mode,
    read_text,
    resolve_token,
    run_path,
    write_whole,
)
from cascade_testbed.common.logsetup import RateLimit
from cascade_testbed.common.modelzoo import ZooError, open_zoo
from cascade_testbed.common.names import BadName, check_name, is_name
from cascade_testbed.common.records import GeneratedJournal, RecordWriter
from cascade_testbed.common.scenario_file import load_scenario, scenario_from_dict
from cascade_testbed.server.connection_limits import Admit, ConnectionLimits, Limits, Refuse
from cascade_testbed.server.report_check import IN_FLIGHT_SLACK, ReportTotals, check_report
from cascade_testbed.testbed.orchestrator import default_run_dir
from cascade_testbed.testbed.verdict import (
    exit_code,
    fault_fallback_limit,
    partial_reasons,
    run_problems,
    stopped_line,
)

TRAVERSALS = ["..", ".", "../../../escaped", "a/b", "/etc/passwd", "x/../../../escaped-name",
              "..\\x", "", "a\x00b", "new\nline", "é", "x" * 65, ".hidden", "-flag", "~1"]


class TestNames:
    @pytest.mark.parametrize("name", ["low", "low-000", "heavy-cnn-xl", "edge.1", "A_b-9"])
    def test_plain_names_pass(self, name: str) -> None:
        assert check_name(name, "x") == name

    @pytest.mark.parametrize("name", TRAVERSALS)
    def test_anything_path_like_or_unprintable_is_refused(self, name: str) -> None:
        assert not is_name(name)
        with pytest.raises(BadName, match="must be a name"):
            check_name(name, "tier")

    def test_the_refusal_shows_only_a_short_prefix_of_the_value(self) -> None:
        with pytest.raises(BadName) as err:
            check_name("/" * 100_000, "device id")
        assert len(str(err.value)) < 300

    def test_a_policy_name_may_carry_plus_signs(self) -> None:
        assert is_name("multitasc++", extra="+") and not is_name("multitasc++")
        assert not is_name("+x", extra="+")


class TestScenarioNames:
    """Every name a scenario gives that could reach a path is refused at the loader."""

    @pytest.mark.parametrize("name", TRAVERSALS[:8])
    def test_scenario_name(self, name: str) -> None:
        with pytest.raises(ScenarioError, match="scenario name"):
            scenario_from_dict({"name": name})

    @pytest.mark.parametrize("tier", ["../../../escaped-tier", "a/b", ".."])
    def test_tier_names(self, tier: str) -> None:
        with pytest.raises(ScenarioError, match="tier name"):
            scenario_from_dict({"tiers": {tier: {"model": "light-low", "compute_ms": 10}},
                                "devices": {"mix": "1"}})

    def test_models_fault_targets_and_idn_nodes(self) -> None:
        for data, field in [
            ({"tiers": {"low": {"model": "../../x"}}}, "tier model"),
            ({"server": {"heavy_model": "/abs/path"}}, "server model"),
            ({"faults": [{"kind": "kill_device", "at_s": 1, "devices": ["../x"]}]},
             "fault device"),
        ]:
            with pytest.raises(ScenarioError, match=field):
                scenario_from_dict(data)
        with pytest.raises(ScenarioError, match="idn node name"):
            IdnConfig(nodes=(IdnNode("../../../log", devices=1.0),))

    def test_default_run_folder_stays_under_runs(self) -> None:
        cfg = scenario_from_dict({"name": "heterogeneous", "policy": {"name": "multitasc++"}})
        path = default_run_dir(cfg, Path("runs"))
        assert path.parent == Path("runs") and "/" not in path.name


class TestNumbers:
    @pytest.mark.parametrize("data,needle", [
        ({"duration_s": float("inf")}, "duration_s"),
        ({"slo_ms": float("nan")}, "slo_ms"),
        ({"devices": {"rate_hz": 1e9}}, "rate_hz"),
        ({"devices": {"rate_hz": float("inf")}}, "rate_hz"),
        ({"devices": {"count": 10_000_000}}, "devices.count"),
        ({"devices": {"reply_timeout_ms": -1}}, "reply_timeout_ms"),
        ({"server": {"batch_base_ms": float("inf")}}, "batch_base_ms"),
        ({"tiers": {"low": {"uplink": {"delay_ms": float("nan")}}}}, "delay_ms"),
        ({"seed": -1}, "seed"),
        ({"max_fault_fallback": 1.5}, "max_fault_fallback"),
    ])
    def test_every_number_is_finite_and_in_range(self, data: dict[str, object],
                                                 needle: str) -> None:
        with pytest.raises(ScenarioError, match=needle):
            scenario_from_dict(data)

    def test_a_trace_that_scales_past_the_rate_bound_is_refused(self) -> None:
        with pytest.raises(ScenarioError, match="scaled rates"):
            DevicesConfig(arrival="trace", trace_points=((0.0, 10.0),), trace_scale=500.0)


class TestInputFiles:
    def test_a_fifo_is_refused_without_opening_it(self, tmp_path: Path) -> None:
        fifo = tmp_path / "trace.csv"
        os.mkfifo(fifo)
        with pytest.raises(InputFileError, match="not a regular file"):
            read_text(fifo, 1024, "trace")  # opening it would block forever

    @pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
    def test_devices_are_refused(self, device: str) -> None:
        with pytest.raises(InputFileError, match="not a regular file"):
            check_regular(device, 1024, "trace")

    def test_a_file_over_its_limit_is_refused(self, tmp_path: Path) -> None:
        big = tmp_path / "big.csv"
        big.write_bytes(b"x" * 2048)
        with pytest.raises(InputFileError, match="limit"):
            read_text(big, 1024, "trace")

    def test_scenario_files_and_their_traces_say_what_is_wrong(self, tmp_path: Path) -> None:
        fifo = tmp_path / "fifo.csv"
        os.mkfifo(fifo)
        scenario = tmp_path / "s.toml"
        scenario.write_text('[devices]\narrival = "trace"\ntrace = "fifo.csv"\n')
        with pytest.raises(ScenarioError, match="not a regular file"):
            load_scenario(scenario)
        (tmp_path / "bin.csv").write_bytes(os.urandom(512))
        scenario.write_text('[devices]\narrival = "trace"\ntrace = "bin.csv"\n')
        with pytest.raises(ScenarioError):
            load_scenario(scenario)
        with pytest.raises(ScenarioError, match="not a regular file"):
            load_scenario("/dev/zero")

    def test_the_zoo_looks_models_up_in_its_index_only(self, tmp_path: Path) -> None:
        zoo = open_zoo()
        assert zoo.card("light-low")["name"] == "light-low"
        (tmp_path / "secret.json").write_text('{"token": "x"}')
        for name in ["../../../../tmp/x", str(tmp_path / "secret"), "zoo", "nope"]:
            with pytest.raises(ZooError, match="not in the zoo"):
                zoo.card(name)

    def test_token_sources_in_order(self, tmp_path: Path) -> None:
        path = tmp_path / "token"
        path.write_text("from-file\n")
        env = {"TESTBED_TOKEN": "from-env"}
        assert resolve_token("cli", path, env) == "from-file"
        assert resolve_token("cli", None, env) == "cli"
        assert resolve_token(None, None, env) == "from-env"
        assert resolve_token(None, None, {}) == ""
        path.write_text("\n")
        with pytest.raises(InputFileError, match="empty"):
            resolve_token(None, path, {})


class TestRunFolder:
    def test_run_files_are_named_parts_inside_the_folder(self, tmp_path: Path) -> None:
        assert run_path(tmp_path, "samples", "low-000~2", suffix=".csv") == \
            tmp_path / "samples" / "low-000~2.csv"
        for parts in [("samples", "../../x"), ("..", "x"), ("samples", "low~../x"),
                      ("samples", "a/b")]:
            with pytest.raises((BadName, OutsideRunFolder)):
                run_path(tmp_path, *parts)

    def test_a_symlink_out_of_the_folder_is_not_followed(self, tmp_path: Path) -> None:
        run = tmp_path / "run"
        run.mkdir()
        (run / "samples").symlink_to(tmp_path)
        with pytest.raises(OutsideRunFolder):
            run_path(run, "samples", "low-000", suffix=".csv")


    @pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
    def test_whole_files_follow_the_umask_as_opened_ones_do(self, tmp_path: Path, umask: int,
                                                          mode: int) -> None:
        before = os.umask(umask)
        try:
            write_whole(tmp_path / "summary.json", "{}")
            (tmp_path / "scenario.toml").write_text("")
        finally:
            os.umask(before)
        assert file_mode() == 0o666 & ~before  # read without changing it
        for name in ("summary.json", "scenario.toml"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


class TestDiskFull:
    """/dev/full refuses every write with ENOSPC, as a full disk does."""

    def test_a_record_write_says_disk_full_and_names_the_file(self) -> None:
        with pytest.raises(DiskFull, match="disk full while writing /dev/full"):
            RecordWriter(Path("/dev/full"))
        journal = GeneratedJournal(Path("/dev/full"))
        with pytest.raises(DiskFull, match="disk full"):
            journal.started(1)
        journal.close()

    def test_the_event_log_never_raises_and_remembers_why_it_stopped(self) -> None:
        log = EventLog(Path("/dev/full"), "harness")
        log.emit("run_start")
        log.emit("run_end")
        assert log.failure is not None and "disk full" in str(log.failure)
        log.close()

    def test_a_whole_write_leaves_the_old_file_and_no_temporary(self, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
        target = tmp_path / "summary.json"
        target.write_text("old")

        def full(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(DiskFull, match=r"disk full while writing .*summary\.json"):
            write_whole(target, "new")
        assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


class TestConnectionLimits:
    def limits(self, **kw: float) -> ConnectionLimits[str]:
        base = {"max_connections": 4, "max_per_peer": 3, "max_pending": 2,
                "header_timeout_s": 10.0}
        return ConnectionLimits(Limits(**{**base, **kw}))  # type: ignore[arg-type]

    def test_caps_refuse_with_a_reason(self) -> None:
        lim = self.limits(max_pending=4)
        for i in range(3):
            assert isinstance(lim.open(f"a{i}", "1.1.1.1", 0.0), Admit)
        assert lim.open("a3", "1.1.1.1", 0.0) == Refuse("too many connections from this "
                                                        "address")
        assert isinstance(lim.open("b0", "2.2.2.2", 0.0), Admit)
        assert lim.open("c0", "3.3.3.3", 0.0) == Refuse("too many connections")
        lim.close("a0")
        assert isinstance(lim.open("c0", "3.3.3.3", 0.0), Admit)
        assert lim.refused == {"too many connections from this address": 1,
                               "too many connections": 1}

    def test_a_full_pending_list_evicts_the_longest_waiting(self) -> None:
        lim = self.limits()
        lim.open("slow1", "p", 0.0)
        lim.open("slow2", "q", 1.0)
        assert lim.open("honest", "r", 2.0) == Admit("slow1")
        lim.started("honest")
        assert lim.pending_count == 1 and lim.open_count == 2 and lim.evicted == 1

    def test_connections_without_a_request_time_out_in_order(self) -> None:
        lim = self.limits()
        lim.open("a", "p", 0.0)
        lim.open("b", "p", 4.0)
        lim.started("b")
        assert lim.next_deadline() == 10.0
        assert lim.overdue(9.9) == [] and lim.overdue(10.0) == ["a"]
        assert lim.next_deadline() is None and lim.open_count == 1 and lim.timed_out == 1

    def test_closing_twice_or_an_unknown_connection_is_harmless(self) -> None:
        lim = self.limits()
        lim.open("a", "p", 0.0)
        lim.close("a")
        lim.close("a")
        lim.close("never")
        assert lim.open_count == 0


def report(**kw: float) -> wire.Report:
    base = {"window_s": 0.5, "generated": 5, "forwarded": 2, "answered": 5, "slo_met": 4,
            "slo_missed": 1, "fallback": 0, "threshold": 0.8, "mean_light_confidence": 0.7,
            "light_ms_mean": 12.0}
    return wire.Report(**{**base, **kw})  # type: ignore[arg-type]


class TestReportCheck:
    def test_a_plausible_report_passes_and_is_totalled(self) -> None:
        totals = ReportTotals()
        assert check_report(report(), totals) is None
        assert (totals.generated, totals.forwarded, totals.decided) == (5, 2, 5)

    @pytest.mark.parametrize("fields,needle", [
        ({"slo_missed": 1_000_000}, "slo_missed"),
        ({"generated": -1}, "generated"),
        ({"window_s": 0.0}, "window_s"),
        ({"window_s": 1e9}, "window_s"),
        ({"threshold": 1.5}, "threshold"),
        ({"mean_light_confidence": -0.1}, "mean_light_confidence"),
        ({"slo_met": 6, "answered": 5}, "exceed answered"),
    ])
    def test_impossible_reports_are_refused_and_leave_the_totals(
            self, fields: dict[str, float], needle: str) -> None:
        totals = ReportTotals(generated=10)
        assert needle in (check_report(report(**fields), totals) or "")
        assert totals == ReportTotals(generated=10)

    def test_more_decided_than_ever_generated_is_refused_over_a_session(self) -> None:
        totals = ReportTotals()
        lie = report(generated=0, answered=400, slo_met=0, slo_missed=400)
        results = [check_report(lie, totals) for _ in range(4)]
        assert results[:2] == [None, None]  # within what may have been in flight
        assert all(r and "generated" in r for r in results[3:])
        assert totals.decided <= IN_FLIGHT_SLACK


class TestRateLimit:
    def test_per_key_windows_and_the_count_of_what_was_dropped(self) -> None:
        rl = RateLimit(per_key=2, window_s=10.0, max_keys=2)
        assert [rl.allow("a", t) for t in (0, 1, 2, 3)] == [True, True, False, False]
        assert rl.check("a", 10.5) == (True, 2)
        assert rl.allow("b", 0) and rl.allow("c", 0)  # "a" is forgotten: bounded memory
        assert len(rl._windows) == 2


class TestVerdict:
    def summary(self, **kw: object) -> dict[str, object]:
        base: dict[str, object] = {
            "samples": {"generated": 1000, "lost": 0, "causes": {}},
            "faults": {"device_crashes": 0, "server_crashes": 0}, "run": {}}
        return {**base, **kw}

    def test_a_clean_run_has_no_problem(self) -> None:
        assert run_problems(self.summary(), 0.05) == []

    def test_each_failure_is_named(self) -> None:
        s = self.summary(samples={"generated": 1000, "lost": 3,
                                  "causes": {"disconnected": 560, "timeout": 40}},
                         faults={"device_crashes": 2, "server_crashes": 1},
                         run={"disk_full": "disk full while writing samples/low-000.csv"})
        lost, crashed, died, fell_back, disk = run_problems(s, 0.05)
        assert lost.startswith("3 samples were lost")
        assert crashed.startswith("2 device processes crashed")
        assert died.startswith("the server died 1 time without a planned fault")
        assert fell_back.startswith("56.0% of samples fell back for a non-load cause "
                                    "(disconnected 560)")
        assert disk == "disk full while writing samples/low-000.csv"

    def test_load_shedding_is_not_a_failure_and_nothing_generated_is(self) -> None:
        shed = self.summary(samples={"generated": 1000, "lost": 0,
                                     "causes": {"queue_full": 800, "timeout": 100}})
        assert run_problems(shed, 0.05) == []
        assert run_problems(self.summary(samples={"generated": 0, "lost": 0}), 0.05) == \
            ["no sample was generated"]

    def test_planned_faults_lift_the_default_limit_unless_one_is_set(self) -> None:
        assert fault_fallback_limit(None, faults_planned=False) == 0.05
        assert fault_fallback_limit(None, faults_planned=True) is None
        assert fault_fallback_limit(0.2, faults_planned=True) == 0.2

    def test_a_partial_summary_says_why(self) -> None:
        assert partial_reasons({"harness_ended": True}) == [] == partial_reasons({})
        assert partial_reasons({"harness_ended": False, "interrupted": True,
                                "devices_without_outcome": ["low-000", "mid-001"],
                                "torn_rows": 3}) == [
            "the harness did not finish", "it was interrupted",
            "2 device processes left no outcome", "3 torn rows"]



@pytest.mark.parametrize("stopped_by,code,said", [
    ("SIGINT", 130, "run stopped by Ctrl-C"), ("SIGTERM", 143, "run stopped by SIGTERM"),
    ("SIGHUP", 129, "run stopped by SIGHUP"), ("", 130, "run stopped by Ctrl-C")])
def test_a_stopped_run_exits_with_its_signal_and_says_so(stopped_by: str, code: int,
                                                          said: str) -> None:
    assert exit_code([], True, stopped_by) == code
    assert exit_code(["lost"], True, stopped_by) == code  # stopped first, judged after
    assert exit_code(["lost"], False) == 1 and exit_code([], False, "SIGTERM") == 0
    assert stopped_line(stopped_by).startswith(said + ":")
