"""Sweeps (axes, expansion, resumption), device activity phases, trace files, and the series
the figures are drawn from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade_testbed.common.config import ScenarioError
from cascade_testbed.common.scenario_file import load_scenario, scenario_from_dict
from cascade_testbed.testbed import provenance
from cascade_testbed.testbed.results.series import (
    cdf,
    gear_series,
    running_mean_per_second,
    sweep_series,
    threshold_series,
    tradeoff_series,
)
from cascade_testbed.testbed.sweep import expand, is_complete, parse_axes, run_sweep
from cascade_testbed.testbed.timeline import activity, join_actions


def cfg(**kw: object):  # type: ignore[no-untyped-def]
    return scenario_from_dict({"duration_s": 10, **kw})


class TestSweep:
    def test_axes_and_product(self) -> None:
        base = cfg(devices={"count": 4}, policy={"name": "multitasc", "params": {"target": 0.9}},
                   sweep={"devices": [10, 20], "policy": ["static", "multitasc"],
                          "mix": {"homogeneous": "0:1:0", "heterogeneous": "1:1:1"},
                          "server.max_batch_size": [8]})
        axes = parse_axes(base.sweep)
        assert [a.name for a in axes] == ["devices", "policy", "mix", "server.max_batch_size"]
        points = expand(base, axes)
        assert len(points) == 8 and len({p.name for p in points}) == 8
        p = points[-1]
        assert p.labels == {"devices": "20", "policy": "multitasc", "mix": "heterogeneous",
                            "server.max_batch_size": "8"}
        assert p.cfg.devices.count == 20 and p.cfg.devices.mix == "1:1:1"
        assert p.cfg.server.max_batch_size == 8 and p.cfg.sweep == {}
        assert p.cfg.policy.params == {"target": 0.9}
        assert points[0].cfg.policy.name == "static" and points[0].cfg.policy.params == {}

    @pytest.mark.parametrize("sweep,needle", [
        ({"devices": 3}, "list or a table"),
        ({"devices": []}, "no values"),
        ({"devices": [-1]}, "devices.count"),
        ({"duration_s.x": [1]}, "not a table"),
    ])
    def test_bad_axes(self, sweep: dict[str, object], needle: str) -> None:
        with pytest.raises(ScenarioError, match=needle):
            base = cfg(sweep=sweep)
            expand(base, parse_axes(base.sweep))

    def test_resumes_and_keeps_going_after_a_failure(self, tmp_path: Path) -> None:
        base = cfg(sweep={"seed": [1, 2, 3]})
        axes = parse_axes(base.sweep)
        points = expand(base, axes)
        calls = []

        def fake_run(c, run_dir: Path) -> dict[str, object]:  # type: ignore[no-untyped-def]
            calls.append(c.seed)
            if c.seed == 2:
                raise RuntimeError("boom")
            run_dir.mkdir(parents=True)
            provenance.write(run_dir, c)  # as every run does: what a resumed sweep checks
            summary = {"run": {"harness_ended": True, "interrupted": False},
                       "slo_satisfaction": 0.9, "accuracy": 0.9, "throughput_sps": 1.0,
                       "forward_rate": 0.5, "latency_ms": {"p50": 1, "p95": 2, "p99": 3},
                       "samples": {"generated": 10, "lost": 0}}
            (run_dir / "summary.json").write_text(json.dumps(summary))
            return summary

        out = run_sweep(points, axes, tmp_path, fake_run)
        assert calls == [1, 2, 3] and out.failed.keys() == {points[1].name}
        index = json.loads((tmp_path / "sweep.json").read_text())
        assert [r["status"] for r in index["runs"]] == ["done", "failed", "done"]
        assert "boom" in index["runs"][1]["error"]
        calls.clear()
        out = run_sweep(points, axes, tmp_path, fake_run)
        assert calls == [2] and len(out.skipped) == 2
        assert (tmp_path / "index.csv").read_text().startswith("name,status,seed")

    def test_is_complete(self, tmp_path: Path) -> None:
        assert not is_complete(tmp_path)
        (tmp_path / "summary.json").write_text('{"run": {"harness_ended": false}}')
        assert not is_complete(tmp_path)
        (tmp_path / "summary.json").write_text('{"run": {"harness_ended": true}}')
        assert is_complete(tmp_path)


class TestActivity:
    def test_without_phases_everyone_all_the_time(self) -> None:
        assert activity(cfg(devices={"count": 2})) == [((0.0, 10.0),), ((0.0, 10.0),)]

    def test_phases_add_and_remove_the_last_devices(self) -> None:
        c = cfg(devices={"count": 4, "phases": [{"at_s": 0, "count": 1}, {"at_s": 3, "count": 4},
                                                 {"at_s": 6, "count": 2},
                                                 {"at_s": 8, "count": 3}]})
        spans = activity(c)
        assert spans == [((0.0, 10.0),), ((3.0, 10.0),), ((3.0, 6.0), (8.0, 10.0)),
                         ((3.0, 6.0),)]
        joins = join_actions(["a", "b", "c", "d"], spans)
        assert [(j.at_s, j.target, j.until_s) for j in joins] == [(8.0, "c", 10.0)]

    @pytest.mark.parametrize("phases,needle", [
        ([{"at_s": 5, "count": 1}, {"at_s": 2, "count": 1}], "increasing"),
        ([{"at_s": 0, "count": 9}], "counts"),
    ])
    def test_bad_phases(self, phases: list[dict[str, float]], needle: str) -> None:
        with pytest.raises(ScenarioError, match=needle):
            cfg(devices={"count": 4, "phases": phases})


class TestTrace:
    def test_trace_is_read_relative_to_the_scenario(self, tmp_path: Path) -> None:
        (tmp_path / "rates.csv").write_text("t_s,rate_hz\n0,2\n5,20\n")
        (tmp_path / "s.toml").write_text('[devices]\narrival = "trace"\ntrace = "rates.csv"\n'
                                         "trace_scale = 0.5\n")
        c = load_scenario(tmp_path / "s.toml")
        assert c.devices.trace == str(tmp_path / "rates.csv")
        from cascade_testbed.common.config import device_specs
        assert device_specs(c)[0].trace_points == ((0.0, 1.0), (5.0, 10.0))

    @pytest.mark.parametrize("text,needle", [("t,r\n0,1\n", "columns"),
                                             ("t_s,rate_hz\n5,1\n0,2\n", "start at 0"),
                                             ("t_s,rate_hz\n", "no rows")])
    def test_bad_traces(self, tmp_path: Path, text: str, needle: str) -> None:
        (tmp_path / "rates.csv").write_text(text)
        (tmp_path / "s.toml").write_text('[devices]\narrival = "trace"\ntrace = "rates.csv"\n')
        with pytest.raises(ScenarioError, match=needle):
            load_scenario(tmp_path / "s.toml")

    def test_trace_arrival_needs_a_file(self) -> None:
        with pytest.raises(ScenarioError, match=r"needs devices\.trace"):
            cfg(devices={"arrival": "trace"})


class TestSeries:
    def test_sweep_series_averages_seeds_and_keeps_the_spread(self) -> None:
        points = [({"devices": str(n), "policy": pol, "mix": "het", "seed": str(seed)},
                   {"slo_satisfaction": base + 0.01 * seed})
                  for n, base in ((10, 0.9), (20, 0.8)) for pol in ("static",)
                  for seed in (1, 3)]
        series = sweep_series(points, "slo_satisfaction")
        (line,) = series["het"]
        assert line.label == "static" and line.x == [10.0, 20.0]
        assert line.y == pytest.approx([0.92, 0.82])
        assert line.lo == pytest.approx([0.91, 0.81]) and line.hi == pytest.approx([0.93, 0.83])

    def test_nested_metric(self) -> None:
        points = [({"devices": "5", "policy": "p"}, {"latency_ms": {"p95": 12.0}})]
        assert sweep_series(points, "latency_ms.p95", panel_axis=None)[""][0].y == [12.0]

    def test_threshold_series_tracks_joins_changes_and_leaves(self) -> None:
        events = [
            {"t": 100.0, "kind": "join", "device": "a", "tier": "low", "threshold": 0.8},
            {"t": 100.5, "kind": "join", "device": "b", "tier": "low", "threshold": 0.6},
            {"t": 101.0, "kind": "thresholds", "values": {"a": 0.4}},
            {"t": 102.0, "kind": "leave", "device": "a"},
            {"t": 103.0, "kind": "server_stop"},
        ]
        s = threshold_series(events, run_start=100.0)["low"]
        assert s.x == [0.0, 0.5, 1.0, 2.0]
        assert s.y == pytest.approx([0.8, 0.7, 0.5, 0.6])

    def test_cdf(self) -> None:
        x, y = cdf([3.0, 1.0, float("nan"), 2.0])
        assert list(x) == [1.0, 2.0, 3.0] and list(y) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_tradeoff_lines_group_numbered_variants_and_sort_by_x() -> None:
    runs = [({"variant": "confidence-0.9"}, {"accuracy": 0.95, "forward_rate": 0.6}),
            ({"variant": "confidence-0.5"}, {"accuracy": 0.87, "forward_rate": 0.2}),
            ({"variant": "agreement-1.0"}, {"accuracy": 0.89, "forward_rate": 0.21}),
            ({"variant": "cloud-only"}, {"accuracy": 0.96, "forward_rate": 1.0}),
            ({"variant": "device-only"}, {"accuracy": 0.77})]  # no x: left out
    lines = {s.label: s for s in tradeoff_series(runs, "forward_rate", "accuracy", "variant")}
    assert set(lines) == {"confidence", "agreement", "cloud-only"}
    assert lines["confidence"].x == [0.2, 0.6] and lines["confidence"].y == [0.87, 0.95]


def test_gear_series_and_running_mean() -> None:
    events = [{"kind": "gear_switch", "t": 12.0, "gear": 3, "load_sps": 150.0},
              {"kind": "thresholds", "t": 11.0},
              {"kind": "gear_switch", "t": 10.5, "gear": 0, "load_sps": 20.0}]
    gear, load = gear_series(events, run_start=10.0)
    assert gear.x == [0.5, 2.0] and gear.y == [0.0, 3.0] and load.y == [20.0, 150.0]

    class R:
        def __init__(self, t: float) -> None:
            self.wall_epoch_s = t

    recs = [R(100.2), R(100.7), R(101.5), R(103.1)]
    out = running_mean_per_second(recs, [10.0, 20.0, 60.0, 40.0], 100.0, 4)  # type: ignore[arg-type]
    assert list(out[:2]) == [15.0, 30.0] and out[2] == 30.0 and out[3] == 32.5


def test_sent_at_equal_accuracy_interpolates_on_the_curve() -> None:
    from cascade_testbed.testbed.results.series import sent_at_accuracy
    sent, acc = [0.0, 0.2, 0.4, 1.0], [0.77, 0.87, 0.93, 0.96]
    assert sent_at_accuracy(sent, acc, 0.90) == pytest.approx(0.3)
    assert sent_at_accuracy(sent, acc, 0.77) == 0.0
    assert sent_at_accuracy(sent, acc, 0.99) is None


def test_heavy_model_series_starts_with_the_servers_model() -> None:
    from cascade_testbed.testbed.results.series import heavy_model_series
    events = [{"kind": "model_switch", "t": 15.0, "model": "heavy-cnn-xl"},
              {"kind": "server_start", "t": 9.0, "heavy_model": "heavy-cnn"},
              {"kind": "model_switch", "t": 30.0, "model": "heavy-cnn-lite"}]
    s = heavy_model_series(events, run_start=10.0)
    assert s.x == [-1.0, 5.0, 20.0]
    assert s.labels == ["heavy-cnn", "heavy-cnn-xl", "heavy-cnn-lite"]
