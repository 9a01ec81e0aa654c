"""Results for scripts: headline figures by name, --expect, compare, samples.csv, and the
throughput of a run cut short."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from scipy import stats

from cascade_testbed.common.config import DevicesConfig, ScenarioConfig, device_specs
from cascade_testbed.common.records import FIELDS, RecordWriter, read_records
from cascade_testbed.common.scenario_file import scenario_to_dict
from cascade_testbed.testbed.console import live_text
from cascade_testbed.testbed.results.collect import collect
from cascade_testbed.testbed.results.compare import compare, pair
from cascade_testbed.testbed.results.expect import (
    ExpectError,
    parse_expectation,
    unmet,
    with_expectations,
)
from cascade_testbed.testbed.results.folders import runs_in
from cascade_testbed.testbed.results.headline import METRICS, canonical, lookup
from cascade_testbed.testbed.results.metrics import arrivals_s
from cascade_testbed.testbed.results.series import fault_marks
from tests.unit.test_records_metrics import rec


def summary(seed: int = 1, **top: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "seed": seed, "slo_satisfaction": 0.9, "accuracy": 0.8, "accuracy_at_slo": 0.75,
        "forward_rate": 0.3, "throughput_sps": 100.0,
        "latency_ms": {"p50": 20.0, "p95": 80.0, "p99": 120.0, "p99.9": 200.0},
        "samples": {"generated": 1000, "lost": 0, "fallback": 5, "rejected": 0},
        "run": {"startup_s": 1.5, "problems": []},
    }
    s.update(top)
    return s


class TestHeadline:
    def test_dotted_paths_and_keys_with_dots(self) -> None:
        s = summary()
        assert lookup(s, "latency_ms.p95") == 80.0
        assert lookup(s, "latency_ms.p99.9") == 200.0
        assert lookup(s, "samples.lost") == 0.0
        assert lookup(s, "run.startup_s") == 1.5

    def test_missing_or_non_numbers_are_none(self) -> None:
        s = summary(accuracy=None)
        assert lookup(s, "accuracy") is None
        assert lookup(s, "latency_ms.p90") is None
        assert lookup(s, "samples.lost.more") is None
        assert lookup({"run": {"partial": True}}, "run.partial") is None  # a bool is no figure

    def test_aliases(self) -> None:
        assert canonical("latency.p95_ms") == "latency_ms.p95"
        assert canonical("lost") == "samples.lost"
        assert canonical("throughput") == "throughput_sps"
        assert canonical("latency_ms.p95") == "latency_ms.p95"
        assert canonical("per_device") is None


class TestExpect:
    @pytest.mark.parametrize("text,metric,op,bound", [
        ("slo_satisfaction>=0.9", "slo_satisfaction", ">=", 0.9),
        (" latency.p95_ms <= 150 ", "latency_ms.p95", "<=", 150.0),
        ("lost==0", "samples.lost", "==", 0.0),
        ("throughput_sps>1e2", "throughput_sps", ">", 100.0),
        ("accuracy<-1", "accuracy", "<", -1.0),
    ])
    def test_parses(self, text: str, metric: str, op: str, bound: float) -> None:
        e = parse_expectation(text)
        assert (e.metric, e.op, e.bound) == (metric, op, bound)

    def test_an_unknown_metric_lists_the_known_ones(self) -> None:
        with pytest.raises(ExpectError, match="unknown metric 'slo'") as err:
            parse_expectation("slo>=0.9")
        assert all(m in str(err.value) for m in METRICS)

    @pytest.mark.parametrize("text", ["slo_satisfaction", "slo_satisfaction=>0.9",
                                      "slo_satisfaction>=", "slo_satisfaction>=abc",
                                      "slo_satisfaction>=nan", "slo_satisfaction>=inf",
                                      "slo_satisfaction>=0.9 and more"])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(ExpectError):
            parse_expectation(text)

    def test_unmet_expectations_become_problems(self) -> None:
        s = summary(slo_satisfaction=0.85)
        checks = [parse_expectation(t) for t in ("slo_satisfaction>=0.9", "accuracy>0.5",
                                                 "latency.p95_ms<80", "lost==0")]
        assert unmet(s, checks) == ["expected slo_satisfaction>=0.9, got 0.85",
                                    "expected latency.p95_ms<80, got 80"]

    def test_a_missing_value_never_meets_an_expectation(self) -> None:
        s = summary(accuracy=None)
        assert unmet(s, [parse_expectation("accuracy<=1")]) == \
            ["expected accuracy<=1, got no value"]

    def test_the_judged_summary_adds_the_checks_and_keeps_the_original(self) -> None:
        s = summary(slo_satisfaction=0.85)
        s["run"]["problems"] = ["2 samples were lost (generated, never answered)"]
        checks = [parse_expectation(t) for t in ("slo_satisfaction>=0.9", "accuracy>0.5")]
        judged = with_expectations(s, checks)
        assert judged["expectations"] == [
            {"expect": "slo_satisfaction>=0.9", "metric": "slo_satisfaction", "ok": False},
            {"expect": "accuracy>0.5", "metric": "accuracy", "ok": True}]
        assert judged["run"]["problems"] == [*s["run"]["problems"],
                                             "expected slo_satisfaction>=0.9, got 0.85"]
        assert "expectations" not in s and len(s["run"]["problems"]) == 1
        assert with_expectations(s, []) is s


def t_interval(d: list[float]) -> tuple[float, float, float]:
    """The paired t interval, computed independently of testbed.claims.stats."""
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


class TestCompare:
    def test_one_run_per_side_is_just_the_difference(self) -> None:
        c = compare([("a", summary(slo_satisfaction=0.8))], [("b", summary(seed=7))])
        d = {x.metric: x for x in c.differences}
        assert d["slo_satisfaction"].diff == pytest.approx(0.1)
        assert d["slo_satisfaction"].low is None and d["slo_satisfaction"].n == 1
        assert d["latency_ms.p95"].diff == 0.0

    def test_seeds_are_paired_with_a_t_interval(self) -> None:
        a = [(f"seed-{k}", summary(k, slo_satisfaction=v)) for k, v in
             ((1, 0.80), (2, 0.70), (3, 0.90))]
        b = [(f"seed-{k}", summary(k, slo_satisfaction=v)) for k, v in
             ((3, 0.95), (1, 0.90), (2, 0.78))]  # another order: pairing is by seed
        c = compare(a, b)
        d = next(x for x in c.differences if x.metric == "slo_satisfaction")
        mean, low, high = t_interval([0.10, 0.08, 0.05])
        assert c.paired and len(c.pairs) == 3
        assert (d.diff, d.low, d.high) == pytest.approx((mean, low, high))
        assert d.a == pytest.approx(0.8) and d.n == 3

    def test_repeated_seeds_pair_by_folder_name(self) -> None:
        a = [("devices=5", summary(1, accuracy=0.5)), ("devices=9", summary(1, accuracy=0.6))]
        b = [("devices=9", summary(1, accuracy=0.7)), ("devices=5", summary(1, accuracy=0.5)),
             ("devices=20", summary(1))]
        pairs, only_a, only_b = pair(a, b)
        assert [(x[0], y[0]) for x, y in pairs] == [("devices=5", "devices=5"),
                                                    ("devices=9", "devices=9")]
        assert only_a == [] and only_b == ["devices=20"]
        d = next(x for x in compare(a, b).differences if x.metric == "accuracy")
        assert d.diff == pytest.approx(0.05) and d.n == 2

    def test_sides_that_cannot_be_paired_compare_means_without_interval(self) -> None:
        a = [("seed-1", summary(1, accuracy=0.5)), ("seed-2", summary(2, accuracy=0.7))]
        b = [("x", summary(9, accuracy=0.9))]
        c = compare(a, b)
        d = next(x for x in c.differences if x.metric == "accuracy")
        assert not c.paired and d.diff == pytest.approx(0.3) and d.low is None

    def test_a_figure_missing_in_one_run_drops_that_pair_only(self) -> None:
        a = [(f"s{k}", summary(k, accuracy=None if k == 1 else 0.5)) for k in (1, 2, 3)]
        b = [(f"s{k}", summary(k, accuracy=0.6)) for k in (1, 2, 3)]
        d = next(x for x in compare(a, b).differences if x.metric == "accuracy")
        assert d.n == 2 and d.diff == pytest.approx(0.1)

    def test_json_is_serialisable(self) -> None:
        out = compare([("a", summary())], [("b", summary())]).to_json()
        assert json.loads(json.dumps(out))["metrics"][0]["metric"] == "goodput_sps"

    def test_folders(self, tmp_path: Path) -> None:
        for k in (1, 2):
            (tmp_path / f"seed-{k}").mkdir()
            (tmp_path / f"seed-{k}" / "summary.json").write_text(json.dumps(summary(k)))
        (tmp_path / "figures").mkdir()  # not a run: skipped
        assert [n for n, _ in runs_in(tmp_path)] == ["seed-1", "seed-2"]
        assert [n for n, _ in runs_in(tmp_path / "seed-2")] == ["seed-2"]
        with pytest.raises(ValueError, match="holds no run folders"):
            runs_in(tmp_path / "figures")


class TestInterruptedThroughput:
    def events(self, *extra: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"t": 99.0, "kind": "run_start"}, {"t": 100.0, "kind": "run_clock",
                                                   "start_at": 100.5}, *extra]

    def test_a_full_run_has_its_planned_duration(self) -> None:
        assert arrivals_s(self.events({"t": 131.0, "kind": "run_end"}), 30.0) == 30.0

    def test_ctrl_c_ends_the_arrivals(self) -> None:
        ev = self.events({"t": 110.5, "kind": "interrupted", "source": "harness"})
        assert arrivals_s(ev, 30.0) == pytest.approx(10.0)

    def test_a_full_disk_ends_them_too(self) -> None:
        assert arrivals_s(self.events({"t": 105.5, "kind": "disk_full"}), 30.0) == \
            pytest.approx(5.0)

    def test_ctrl_c_during_start_up_means_no_arrivals(self) -> None:
        assert arrivals_s([{"t": 1.0, "kind": "interrupted"}], 30.0) == 0.0

    def test_collect_divides_by_the_arrivals_and_writes_one_samples_csv(
            self, tmp_path: Path) -> None:
        """A run folder as the processes leave it, interrupted 4 s into a 30 s run."""
        specs, written = fake_run_folder(tmp_path, interrupt_at=4.0)
        s = collect(tmp_path)
        assert s["run"]["interrupted"] and s["run"]["arrivals_s"] == 4.0
        assert s["throughput_sps"] == pytest.approx(written / 4.0)
        with (tmp_path / "samples.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == FIELDS
        assert len(rows) == written
        assert {r["device_id"] for r in rows} == {s.device_id for s in specs}
        records, torn = read_records(tmp_path / "samples.csv")  # the schema's own reader
        assert torn == 0 and len(records) == written
        assert (tmp_path / "samples" / f"{specs[0].device_id}.csv").is_file()  # kept


START = 1.7e9
"""Run time 0 of the fake run: `rec` puts sample i at 1.7e9 + i."""


def fake_run_folder(run: Path, interrupt_at: float | None = None,
                    events: tuple[dict[str, Any], ...] = ()) -> tuple[list[Any], int]:
    """A 30 s, 2-device run folder as the processes leave it (records, outcomes, events)."""
    cfg = ScenarioConfig(duration_s=30.0, devices=DevicesConfig(count=2))
    (run / "scenario.toml").write_text(tomli_w.dumps(scenario_to_dict(cfg)))
    specs = device_specs(cfg)
    written = 0
    for n, spec in enumerate(specs):
        w = RecordWriter(run / "samples" / f"{spec.device_id}.csv")
        for i in range(10 + n):
            w.write(rec(spec.device_id, spec.tier, i))
            written += 1
        w.close()
        (run / "devices").mkdir(exist_ok=True)
        (run / "devices" / f"{spec.device_id}.json").write_text(json.dumps({
            "device_id": spec.device_id, "tier": spec.tier, "incarnation": 0,
            "generated": 10 + n, "final_threshold": 0.5}))
    harness = [{"t": START - 1, "kind": "run_start"},
               {"t": START - 0.3, "kind": "run_clock", "start_at": START},
               *events, {"t": START + 31.0, "kind": "run_end"}]
    if interrupt_at is not None:
        harness.append({"t": START + interrupt_at, "kind": "interrupted"})
    server = [{"t": START - 0.5, "kind": "join", "device": sp.device_id, "tier": sp.tier,
               "threshold": 0.8} for sp in specs]
    for name, evs in (("harness", harness), ("server", server)):
        (run / f"events.{name}.jsonl").write_text(
            "".join(json.dumps({"source": name, **e}) + "\n" for e in evs))
    return specs, written


class TestFiguresAndLiveLine:
    def test_fault_marks_in_run_time(self) -> None:
        ev = [{"t": 105.0, "kind": "fault", "fault": "kill_device", "device": "low-000"},
              {"t": 103.0, "kind": "fault", "fault": "kill_server"},
              {"t": 104.0, "kind": "device_kill", "device": "low-000"}]
        assert fault_marks(ev, 100.0) == [(3.0, "kill_server"), (5.0, "kill_device low-000")]

    def test_the_live_line_names_its_numbers(self) -> None:
        text = live_text({"connected": 12, "queue": 3, "throughput_sps": 40.2,
                          "arrival_sps": 42.0, "mean_threshold": 0.523})
        assert text == ("connected 12 · queue 3 · served 40/s of 42/s arriving · "
                        "mean threshold 0.52")
        assert live_text({"connected": 0, "queue": "-", "server_down": True}) == "server down"
        assert live_text({}) == ""


def test_every_figure_has_an_svg_beside_it(tmp_path: Path) -> None:
    from cascade_testbed.testbed.results.figures import run_figures

    fake_run_folder(tmp_path, events=(
        {"t": START + 3.0, "kind": "fault", "fault": "kill_device", "device": "low-000"},))
    summary = collect(tmp_path)
    pngs = run_figures(tmp_path, summary, tmp_path / "figures")
    assert {p.name for p in pngs} >= {"over_time.png", "latency_cdf.png"}
    for png in pngs:
        assert png.with_suffix(".svg").stat().st_size > 1000
    svg = (tmp_path / "figures" / "over_time.svg").read_text()
    assert "answers per second" in svg and "fault" in svg


def test_tiers_holding_the_same_threshold_stay_visible_in_the_palettes_colours(
        tmp_path: Path) -> None:
    """Both tiers of the fake run join at 0.8: their lines lie on each other, so they differ in
    dashes and width (weakest widest, drawn first), and keep the values; the colours are the
    palette's, which the live view gets too (tests/unit/test_dashboard.py)."""
    import matplotlib.pyplot as plt

    from cascade_testbed.testbed.palette import tier_order, tier_style
    from cascade_testbed.testbed.results.figures import _thresholds

    specs, _ = fake_run_folder(tmp_path)
    collect(tmp_path)  # merges the event files into events.jsonl
    fig, ax = plt.subplots()
    try:
        _thresholds(ax, tmp_path)
        lines = ax.get_lines()
        tiers = tier_order({sp.tier for sp in specs})
        assert len(tiers) == 2 and [ln.get_label() for ln in lines] == tiers
        assert all(set(ln.get_ydata()) == {0.8} for ln in lines)  # the data, unmoved
        assert [ln.get_color() for ln in lines] == [tier_style(t).color for t in tiers]
        assert [ln.get_linestyle() for ln in lines] == ["-", "--"]  # solid, then dashed
        assert len({tier_style(t).dash for t in tiers}) == 2
        widths = [ln.get_linewidth() for ln in lines]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    finally:
        plt.close(fig)
