"""The live view's pure part (status snapshots -> chart rows), the device's latency
percentiles that feed it, and the page's small server on a Hub fed by hand."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import socket
from pathlib import Path
from typing import Any

import msgpack
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.config import MAX_MS
from cascade_testbed.common.events import EventLog
from cascade_testbed.emulated_devices.window import LATENCY_ANSWERS, Window, quantile
from cascade_testbed.server.control import Controller
from cascade_testbed.server.report_check import ReportTotals, check_report
from cascade_testbed.server.scheduling import make_policy
from cascade_testbed.server.stats import ServerStats
from cascade_testbed.testbed import cli
from cascade_testbed.testbed.dashboard import app as dashboard_app
from cascade_testbed.testbed.dashboard.app import EventTail, Hub, Poller, Target, make_app
from cascade_testbed.testbed.dashboard.series import CHARTS, Timeline, columns
from tests import helpers


def device(tier: str, threshold: float, generated: int = 0, forwarded: int = 0,
           met: int = 0, missed: int = 0, p50: float | None = None,
           p95: float | None = None) -> dict[str, Any]:
    """One device as `/v1/status` lists it."""
    return {"tier": tier, "threshold": threshold,
            "totals": {"generated": generated, "forwarded": forwarded, "answered": met + missed,
                       "slo_met": met, "slo_missed": missed},
            "latency_ms": None if p95 is None else {"p50": p50, "p95": p95}}


def status(devices: dict[str, dict[str, Any]], model: str = "big", queue: int = 0,
           **extra: Any) -> dict[str, Any]:
    return {"devices": devices, "heavy_model": model, "queue": {"length": queue},
            "throughput_sps": 50.0, "arrival_rate_sps": 55.0, "mean_batch_size": 4.0,
            "policy": "multitasc", **extra}


class TestRows:
    def test_first_poll_has_thresholds_but_no_ratios_yet(self) -> None:
        row = Timeline().add(100.0, status({"a": device("low", 0.7, 10, 5, 8, 2)}))
        assert row["charts"]["device.threshold"] == {"a": 0.7}
        assert row["charts"]["device.forward_rate"] == {"a": None}
        assert row["charts"]["tier.slo"] == {"low": None}

    def test_ratios_are_count_differences_over_the_window(self) -> None:
        tl = Timeline(rate_window_s=5.0)
        tl.add(0.0, status({"a": device("low", 0.7, 10, 5, 8, 2)}))
        tl.add(3.0, status({"a": device("low", 0.7, 30, 10, 20, 6)}))
        row = tl.add(6.0, status({"a": device("low", 0.7, 50, 20, 38, 6)}))
        # the base is the newest poll at or before 6 - 5 = 1 s: the one at 0 s
        assert row["charts"]["device.forward_rate"]["a"] == round(15 / 40, 4)
        assert row["charts"]["device.slo"]["a"] == round(30 / 34, 4)
        row = tl.add(9.0, status({"a": device("low", 0.7, 60, 20, 48, 6)}))
        # now the base is the poll at 3 s (<= 9 - 5); the one at 0 s fell out
        assert row["charts"]["device.forward_rate"]["a"] == round(10 / 30, 4)
        assert row["charts"]["device.slo"]["a"] == round(28 / 28, 4)

    def test_a_tier_adds_its_devices_counts_and_means_thresholds_and_latency(self) -> None:
        tl = Timeline()
        tl.add(0.0, status({"a": device("low", 0.6), "b": device("low", 0.8),
                            "c": device("high", 0.9)}))
        row = tl.add(1.0, status({
            "a": device("low", 0.6, 100, 90, 50, 50, p50=10.0, p95=40.0),
            "b": device("low", 0.8, 10, 0, 10, 0, p50=20.0, p95=60.0),
            "c": device("high", 0.9, 20, 5, 20, 0)}))
        charts = row["charts"]
        assert charts["tier.forward_rate"] == {"low": round(90 / 110, 4), "high": 0.25}
        assert charts["tier.slo"]["low"] == round(60 / 110, 4)  # not the mean of 0.5 and 1.0
        assert charts["tier.threshold"]["low"] == 0.7
        assert charts["tier.p95_ms"] == {"low": 50.0, "high": None}
        assert charts["tier.p50_ms"]["low"] == 15.0
        assert row["tier_of"] == {"a": "low", "b": "low", "c": "high"}

    def test_a_restarted_session_starts_its_counts_again(self) -> None:
        tl = Timeline()
        tl.add(0.0, status({"a": device("low", 0.5, 100, 50, 90, 10)}))
        row = tl.add(1.0, status({"a": device("low", 0.5, 4, 1, 3, 1)}))  # counts went down
        assert row["charts"]["device.forward_rate"]["a"] is None
        row = tl.add(2.0, status({"a": device("low", 0.5, 14, 6, 13, 1)}))
        assert row["charts"]["device.forward_rate"]["a"] == 0.5

    def test_server_values_and_the_heavy_model_in_use(self) -> None:
        tl = Timeline()
        first = tl.add(0.0, status({}, model="big", queue=7))
        assert first["charts"]["server.queue"] == {"queue": 7}
        assert first["charts"]["server.rate"] == {"throughput": 50.0, "arrivals": 55.0}
        assert first["charts"]["server.batch"] == {"batch": 4.0}
        row = tl.add(1.0, status({}, model="small"))
        assert row["charts"]["server.model"] == {"big": None, "small": 2}
        assert tl.models == ["big", "small"]
        assert [m["text"] for m in row["markers"]] == ["heavy model: small"]
        assert first["markers"] == []

    def test_history_is_bounded(self) -> None:
        tl = Timeline(history=5)
        for t in range(12):
            tl.add(float(t), status({}))
        assert [r["t"] for r in tl.rows] == [7.0, 8.0, 9.0, 10.0, 11.0]


class TestMarkers:
    def test_joins_and_leaves_after_the_first_poll_one_marker_each(self) -> None:
        tl = Timeline()
        assert tl.add(0.0, status({"a": device("low", 0.5)}))["markers"] == []
        row = tl.add(1.0, status({"b": device("mid", 0.5)}))
        assert [(m["kind"], m["text"]) for m in row["markers"]] == [
            ("join", "b joined"), ("leave", "a left")]
        many = {f"d{i}": device("low", 0.5) for i in range(5)}
        row = tl.add(2.0, status({"b": device("mid", 0.5), **many}))
        assert [m["text"] for m in row["markers"]] == ["d0, d1, d2 and 2 more joined"]

    def test_the_server_going_silent_and_coming_back(self) -> None:
        tl = Timeline()
        tl.add(0.0, status({"a": device("low", 0.5)}))
        down = tl.add(1.0, None)
        again = tl.add(2.0, None)
        back = tl.add(3.0, status({"a": device("low", 0.5)}))
        assert down["server_up"] is False and down["charts"] == {}
        assert [m["text"] for m in down["markers"]] == ["server not answering"]
        assert again["markers"] == []
        assert [m["text"] for m in back["markers"]] == ["server answering again"]

    def test_harness_faults_become_markers_at_their_own_time(self) -> None:
        events = [{"t": 4.5, "kind": "fault", "fault": "kill_device", "device": "low-0"},
                  {"t": 4.6, "kind": "device_exit", "device": "low-0", "planned": True},
                  {"t": 4.7, "kind": "device_exit", "device": "mid-1", "planned": False},
                  {"t": 4.8, "kind": "thresholds", "values": {}},
                  {"t": 4.9, "kind": "server_restart"}]
        row = Timeline().add(5.0, status({}), events)
        assert [(m["t"], m["text"]) for m in row["markers"]] == [
            (4.5, "kill_device low-0"), (4.7, "device_exit mid-1"), (4.9, "server_restart")]
        assert {m["kind"] for m in row["markers"]} == {"fault"}


class TestColumns:
    def test_rows_fold_into_aligned_columns_with_gaps(self) -> None:
        tl = Timeline()
        tl.add(0.0, status({"a": device("low", 0.5)}))
        tl.add(1.0, None)
        tl.add(2.0, status({"a": device("low", 0.6), "b": device("high", 0.9)}))
        cols = columns(tl.rows)
        assert cols["t"] == [0.0, 1.0, 2.0]
        thr = cols["charts"]["device.threshold"]
        assert thr["labels"] == ["a", "b"]
        assert thr["data"] == [[0.5, None, 0.6], [None, None, 0.9]]
        assert set(cols["charts"]) == {c.name for c in CHARTS}
        assert cols["tier_of"] == {"a": "low", "b": "high"}
        assert [m["text"] for m in cols["markers"]] == [
            "server not answering", "server answering again", "b joined"]
        json.dumps(cols)  # what /series sends


class TestDeviceLatency:
    def test_quantile_is_the_nearest_rank(self) -> None:
        values = [float(v) for v in range(1, 101)]
        assert quantile(values, 0.5) == 50.0
        assert quantile(values, 0.95) == 95.0
        assert quantile([7.0], 0.95) == 7.0
        assert quantile([], 0.5) == 0.0

    def test_reports_carry_percentiles_of_the_last_answers(self) -> None:
        w = Window()
        for i in range(LATENCY_ANSWERS + 50):  # the first 50 fall out
            w.on_answered("light", True, already_missed=False,
                          latency_ms=1000.0 if i < 50 else float(i - 49))
        w.on_answered("fallback", False, already_missed=False, latency_ms=math.nan)
        report = w.take(0.5, 0.5, 0)
        assert (report.latency_p50_ms, report.latency_p95_ms) == (50.0, 95.0)
        # the latencies outlive the report: the next one still has them
        assert w.take(0.5, 0.5, 0).latency_p95_ms == 95.0

    def test_latency_fields_cross_the_wire_and_older_reports_still_decode(self) -> None:
        report = Window().take(0.5, 0.5, 0)
        assert report.latency_p95_ms == 0.0
        full = wire.Report(0.5, 4, 1, 4, 4, 0, 0, 0.5, 0.9, 3.0, 1, 12.5, 40.0)
        assert wire.decode(wire.encode(full)) == full
        old = {k: getattr(full, k) for k in ("window_s", "generated", "forwarded", "answered",
                                             "slo_met", "slo_missed", "fallback", "threshold",
                                             "mean_light_confidence", "light_ms_mean")}
        decoded = wire.decode(msgpack.packb({**old, "type": "report"}))
        assert isinstance(decoded, wire.Report) and decoded.latency_p95_ms == 0.0

    def test_impossible_latencies_are_refused(self) -> None:
        base = wire.Report(0.5, 4, 1, 4, 4, 0, 0, 0.5, 0.9, 3.0)
        for bad in (-1.0, MAX_MS * 2):
            totals = ReportTotals()
            problem = check_report(dataclasses.replace(base, latency_p95_ms=bad), totals)
            assert problem is not None and "latency_p95_ms" in problem
            assert totals == ReportTotals()
        totals = ReportTotals()
        assert check_report(dataclasses.replace(base, latency_p95_ms=80.0), totals) is None
        assert (totals.generated, totals.slo_met, totals.decided) == (4, 4, 4)


    def test_the_servers_status_lists_session_counts_and_last_latencies(self) -> None:
        """What `Timeline` reads: running counts of the session, latency of the last report."""
        ctrl = Controller(make_policy("static", {}), ServerStats(), EventLog(None, "server"),
                          slo_ms=100.0, interval_s=0.5)
        ctrl.join(helpers.device("low-0", "low"), lambda b: None, now=0.0)
        assert ctrl.status()["devices"]["low-0"]["latency_ms"] is None
        for p95 in (30.0, 45.0):
            assert ctrl.on_report("low-0", wire.Report(0.5, 10, 4, 9, 7, 2, 1, 0.5, 0.8, 3.0,
                                                       0, 12.0, p95), now=1.0) is None
        listed = ctrl.status()["devices"]["low-0"]
        assert listed["totals"] == {"generated": 20, "forwarded": 8, "answered": 18,
                                    "slo_met": 14, "slo_missed": 4}
        assert listed["latency_ms"] == {"p50": 12.0, "p95": 45.0}


class TestEventTail:
    def test_reads_only_new_complete_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "events.jsonl"
        tail = EventTail(path)
        assert tail.read_new() == []  # no file yet
        path.write_text('{"kind": "a"}\n{"kind": "b"')
        assert tail.read_new() == [{"kind": "a"}]
        with path.open("a") as f:
            f.write('}\nnot json\n[1]\n')
        assert tail.read_new() == [{"kind": "b"}]
        assert tail.read_new() == []


class TestPageServer:
    async def test_series_static_files_and_streamed_rows(self) -> None:
        hub = Hub()
        hub.add(1.0, status({"a": device("low", 0.5)}), [])
        async with TestClient(TestServer(make_app(hub))) as client:
            series = await (await client.get("/series")).json()
            assert series["t"] == [1.0]
            assert series["charts"]["device.threshold"]["labels"] == ["a"]
            assert [c["name"] for c in series["layout"]] == [c.name for c in CHARTS]
            page = await client.get("/")
            assert page.status == 200 and "dashboard.js" in await page.text()
            lib = await client.get("/static/uPlot.iife.min.js")
            assert lib.status == 200 and "v1.6.31" in (await lib.text())[:100]
            for bad in ("/static/app.py", "/static/..%2Fapp.py", "/static/uPlot.LICENSE"):
                assert (await client.get(bad)).status == 404
            stream = await client.get("/rows")
            await asyncio.sleep(0.05)  # the handler subscribes once the response starts
            hub.add(2.0, status({"a": device("low", 0.6)}), [])
            line = await asyncio.wait_for(stream.content.readline(), 5)
            row = json.loads(line.decode().removeprefix("data: "))
            assert row["t"] == 2.0 and row["charts"]["device.threshold"] == {"a": 0.6}
            stream.close()

    async def test_only_its_own_host_is_answered(self) -> None:
        """A DNS-rebinding page reaches 127.0.0.1 under its own name: refused (421) on every
        path; 127.0.0.1 and localhost with the page's port are answered."""
        hub = Hub()
        hub.add(1.0, status({"a": device("low", 0.5)}), [])
        async with TestClient(TestServer(make_app(hub), host="127.0.0.1")) as client:
            port = client.port
            for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
                assert (await client.get("/series", headers={"Host": host})).status == 200
            for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1",
                         f"localhost.evil.example:{port}", ""):
                for path in ("/series", "/rows", "/"):
                    r = await client.get(path, headers={"Host": host})
                    assert r.status == 421, (host, path)
                    assert "its own address" in await r.text()

    async def test_a_page_that_stops_reading_is_dropped(self) -> None:
        hub = Hub()
        queue = hub.subscribe()
        for t in range(200):
            hub.add(float(t), None, [])
        assert queue.qsize() <= 121
        rows = [queue.get_nowait() for _ in range(queue.qsize())]
        assert rows[-1] is None  # told to stop; later rows are not queued
        hub.add(500.0, None, [])
        assert queue.empty()


class TestCommandLine:
    def test_watch_refuses_what_is_not_a_server_url(self) -> None:
        for url in ("ftp://127.0.0.1:1", "127.0.0.1:8470", "http://127.0.0.1:1/v1/status"):
            result = CliRunner().invoke(cli.app, ["watch", url, "--port", "0"])
            assert result.exit_code == 2, result.output
            assert "bad URL" in result.output

    def test_watch_says_in_one_line_when_no_server_answers(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: connections are refused
            result = CliRunner().invoke(cli.app, ["watch", f"http://127.0.0.1:{port}",
                                                  "--port", "0"])
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            f"cannot watch: no server answers at http://127.0.0.1:{port}"]

    def test_a_busy_dashboard_port_stops_up_before_anything_starts(self, tmp_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            result = CliRunner().invoke(cli.app, ["up", "--devices", "2", "--dashboard",
                                                  "--dashboard-port", str(port),
                                                  "--out", str(tmp_path / "run")])
        assert result.exit_code == 2, result.output
        assert "cannot serve the dashboard" in result.output
        assert not (tmp_path / "run").exists()


class TestEndOfRunAndColours:
    def test_every_tier_keeps_its_last_values_when_its_devices_leave(self) -> None:
        """At the end of a run the devices leave one by one: the last rows lack the tiers that
        left first, and the line of current values keeps them, as of their last row."""
        tl = Timeline()
        tl.add(0.0, status({"a": device("low", 0.5), "c": device("high", 0.9)}))
        tl.add(1.0, status({"a": device("low", 0.6)}))  # high's device left
        row = tl.add(2.0, None)  # the server stopped
        assert "high" not in tl.rows[1]["charts"]["tier.threshold"]
        assert list(tl.tier_now) == ["low", "high"]
        assert tl.tier_now["high"]["t"] == 0.0 and tl.tier_now["high"]["threshold"] == 0.9
        assert tl.tier_now["low"]["t"] == 1.0 and tl.tier_now["low"]["threshold"] == 0.6
        assert not row["server_up"] and tl.last_up is tl.rows[1]

    def test_rows_carry_the_palettes_tier_styles_the_figures_draw_with(self) -> None:
        from cascade_testbed.testbed.palette import tier_style
        from cascade_testbed.testbed.results.figures import tier_line

        tl = Timeline()
        row = tl.add(0.0, status({"a": device("low", 0.5), "b": device("mid", 0.5),
                                  "c": device("high", 0.5), "d": device("edge", 0.5)}))
        styles = row["tier_styles"]
        assert list(styles) == ["low", "mid", "high", "edge"]
        for tier, style in styles.items():
            assert style["color"] == tier_style(tier).color == tier_line(tier)["color"]
            assert style["dash"] == list(tier_style(tier).dash)
        assert len({s["color"] for s in styles.values()}) == 4
        assert columns(tl.rows)["tier_styles"] == styles

    def test_the_page_gets_its_colours_from_the_server_not_its_own_table(self) -> None:
        script = (Path(cli.__file__).parent / "dashboard" / "static" / "dashboard.js").read_text()
        assert "tier_styles" in script
        assert not any(c in script.lower() for c in ("#d62728", "#ff7f0e", "#1f77b4"))

    async def test_the_end_of_the_run_reaches_the_page_and_stops_its_stream(self) -> None:
        hub = Hub()
        hub.add(1.0, status({"a": device("low", 0.5), "c": device("high", 0.9)}), [])
        hub.add(2.0, status({"a": device("low", 0.6)}), [])
        async with TestClient(TestServer(make_app(hub))) as client:
            stream = await client.get("/rows")
            await asyncio.sleep(0.05)  # the handler subscribes once the response starts
            hub.end("run ended")
            text = (await asyncio.wait_for(stream.content.read(), 5)).decode()
            assert text.startswith("event: end\ndata: ") and '"run ended"' in text
            await asyncio.wait_for(hub.drained(), 5)
            series = await (await client.get("/series")).json()
            assert series["ended"]["text"] == "run ended"
            assert list(series["tier_now"]) == ["low", "high"]
            assert series["last_up"]["t"] == 2.0
            assert set(series["tier_styles"]) == {"low", "high"}
            late = await client.get("/rows")  # a page that connects after the end is told so
            assert (await asyncio.wait_for(late.content.read(), 5)).startswith(b"event: end")


class TestWatchEnd:
    """`watch --run-dir` ends when the run folder says the run ended, not 10 s of silence
    later; a summary that was there before the watch began says nothing of this run."""

    @staticmethod
    def poll(poller: Any, monkeypatch: Any) -> None:
        async def silent(session: object, target: object) -> tuple[None, int]:
            return None, 0

        monkeypatch.setattr(dashboard_app, "fetch_status", silent)
        asyncio.run(poller.once(None))

    def test_the_run_end_event_or_a_new_summary_ends_it(self, tmp_path: Path,
                                                        monkeypatch: Any) -> None:
        events = tmp_path / "events.harness.jsonl"
        events.write_text(json.dumps({"kind": "run_clock", "t": 1.0}) + "\n")
        poller = Poller(Hub(), Target("http://127.0.0.1:1", "t", events))
        self.poll(poller, monkeypatch)
        assert not poller.run_ended
        with events.open("a") as f:
            f.write(json.dumps({"kind": "run_end", "t": 2.0}) + "\n")
        self.poll(poller, monkeypatch)
        assert poller.run_ended

        merged = Poller(Hub(), Target("http://127.0.0.1:1", "t", events))
        events.unlink()  # collecting merged the events away before the next poll
        self.poll(merged, monkeypatch)
        assert not merged.run_ended
        (tmp_path / "summary.json").write_text("{}")
        self.poll(merged, monkeypatch)
        assert merged.run_ended

    def test_a_summary_from_before_the_watch_does_not(self, tmp_path: Path,
                                                      monkeypatch: Any) -> None:
        (tmp_path / "summary.json").write_text("{}")
        poller = Poller(Hub(), Target("http://127.0.0.1:1", "t",
                                      tmp_path / "events.harness.jsonl"))
        self.poll(poller, monkeypatch)
        assert not poller.run_ended
