"""Arrivals from Azure Functions traces: parsing both layouts, choosing functions, mapping them
to devices, scaling and compressing time, and drawing the arrivals within a minute."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from cascade_testbed.common import azure_functions as af
from cascade_testbed.common.config import (
    AzureTraceConfig,
    ScenarioConfig,
    ScenarioError,
    WorkloadTrace,
    device_specs,
)
from cascade_testbed.common.scenario_file import TRACE_DIRS_ENV, load_scenario, scenario_from_dict
from cascade_testbed.emulated_devices.arrivals import arrival_times, peak_rate
from cascade_testbed.emulated_devices.azure_trace import azure_times, within_period

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "scenarios" / "traces"
F2019 = TRACES / "azure-functions-2019-synthetic.csv"
F2021 = TRACES / "azure-functions-2021-synthetic.csv"
HEAD = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(map(str, range(1, 1441)))


def row2019(fid: str, counts: dict[int, int]) -> str:
    """A 2019 row whose minute m (0-based) holds counts[m]."""
    return ",".join(["o", "a", fid, "http", *(str(counts.get(m, 0)) for m in range(1440))])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


class TestParsing:
    def test_2019_rows_are_cut_to_the_window_and_summed_per_function(self) -> None:
        lines = [HEAD, row2019("f1", {10: 5, 11: 7, 12: 1}), row2019("f2", {11: 2}),
                 row2019("f1", {11: 1})]
        table = af.parse_2019(lines, start_minute=10, minutes=2, where="t")
        assert table == {"f1": [5.0, 8.0], "f2": [0.0, 2.0]}

    @pytest.mark.parametrize("bad, says", [
        ("app,func,end_timestamp,duration", "not the 2019 layout"),
        (HEAD.replace(",1440", ""), "needs trace minutes"),
    ])
    def test_2019_wrong_header_or_short_file_is_one_clear_error(self, bad: str,
                                                               says: str) -> None:
        with pytest.raises(ScenarioError, match=says):
            af.parse_2019([bad], start_minute=1430, minutes=11, where="t")

    def test_2019_bad_rows_name_the_line(self) -> None:
        with pytest.raises(ScenarioError, match="t:2: 3 columns"):
            af.parse_2019([HEAD, "a,b,c"], 0, 1, "t")
        with pytest.raises(ScenarioError, match="t:2: HashFunction"):
            af.parse_2019([HEAD, row2019("../etc", {})], 0, 1, "t")
        with pytest.raises(ScenarioError, match="finite"):
            af.parse_2019([HEAD, row2019("f", {0: -1})], 0, 1, "t")

    def test_2021_start_is_end_minus_duration_and_only_the_window_is_kept(self) -> None:
        lines = ["app,func,end_timestamp,duration",
                 "a,f1,130.5,0.5",    # starts 130.0: minute 2, kept at 10.0 s
                 "a,f1,121.0,2.0",    # starts 119.0: minute 1, before the window
                 "a,f2,245.0,1.0",    # starts 244.0: kept at 124.0 s
                 "a,f2,300.5,0.0",    # starts 300.5: minute 5, after the window
                 "a,f1,125.0,1.0"]    # starts 124.0, out of order in the file
        table = af.parse_2021(lines, start_minute=2, minutes=3, where="t")
        assert table == {"f1": [4.0, 10.0], "f2": [124.0]}

    def test_2021_wrong_header_is_refused(self) -> None:
        with pytest.raises(ScenarioError, match="not the 2021 layout"):
            af.parse_2021([HEAD], 0, 1, "t")


class TestSelection:
    TABLE: ClassVar[dict[str, list[float]]] = {
        "b": [5.0, 5.0], "a": [5.0, 5.0], "c": [1.0, 0.0], "z": [0.0, 0.0], "d": [20.0, 0.0]}

    def test_busiest_first_ties_by_id_and_silent_functions_never(self) -> None:
        chosen = af.select(self.TABLE, AzureTraceConfig(functions=10), "t")
        assert [f for f, _ in chosen] == ["d", "a", "b", "c"]
        assert [f for f, _ in af.select(self.TABLE, AzureTraceConfig(functions=2), "t")] \
            == ["d", "a"]

    def test_by_id_keeps_the_given_order_and_names_a_missing_one(self) -> None:
        chosen = af.select(self.TABLE, AzureTraceConfig(ids=("c", "b")), "t")
        assert chosen == (("c", (1.0, 0.0)), ("b", (5.0, 5.0)))
        with pytest.raises(ScenarioError, match="no function 'nope'"):
            af.select(self.TABLE, AzureTraceConfig(ids=("nope",)), "t")

    def test_2021_volume_is_the_number_of_invocations(self) -> None:
        table = {"x": [0.0, 1.0, 2.0], "y": [50.0]}
        chosen = af.select(table, AzureTraceConfig(layout="2021", functions=1), "t")
        assert chosen[0][0] == "x"


def _cfg(**kw: object) -> AzureTraceConfig:
    base: dict[str, object] = {"file": "x", "series": (("f0", (6.0, 12.0)), ("f1", (1.0, 0.0)),
                                                       ("f2", (3.0, 3.0)))}
    return AzureTraceConfig(**{**base, **kw})  # type: ignore[arg-type]


class TestMapping:
    def test_round_robin_over_devices(self) -> None:
        assert [af.function_index("round-robin", 3, i, "low", ("low",)) for i in range(7)] \
            == [0, 1, 2, 0, 1, 2, 0]

    def test_one_function_per_tier_in_declared_order(self) -> None:
        tiers = ("low", "mid", "high")
        assert [af.function_index("per-tier", 3, i, t, tiers)
                for i, t in enumerate(("high", "low", "mid", "high"))] == [2, 0, 1, 2]
        assert af.function_index("per-tier", 2, 0, "high", tiers) == 0  # wraps

    def test_device_specs_carry_scaled_compressed_workloads(self) -> None:
        azure = _cfg(scale=0.5, minute_s=6.0, window_minutes=2)
        cfg = ScenarioConfig(duration_s=12.0, devices=dataclasses.replace(
            ScenarioConfig().devices, count=4, mix="1:1:1", arrival="azure", azure=azure))
        specs = device_specs(cfg)
        assert [s.workload.function for s in specs] == ["f0", "f1", "f2", "f0"]  # type: ignore[union-attr]
        w = specs[0].workload
        assert w is not None and w.counts == (3.0, 6.0) and w.period_s == 6.0
        assert peak_rate("azure", 10.0, workload=w) == pytest.approx(1.0)

    def test_2021_times_are_compressed_not_scaled(self) -> None:
        azure = _cfg(layout="2021", minute_s=30.0, scale=2.0,
                     series=(("f", (0.0, 60.0, 90.0)),))
        w = af.workload(azure, 0)
        assert w.times == (0.0, 30.0, 45.0) and w.scale == 2.0
        assert af.expected_per_period(w, 3) == [2.0, 4.0, 0.0]

    def test_a_rate_beyond_a_device_is_refused_with_the_fix(self) -> None:
        with pytest.raises(ScenarioError, match=r"lower devices\.azure\.scale or raise minute_s"):
            _cfg(series=(("f", (60_001.0,)),))
        _cfg(series=(("f", (60_000.0,)),))  # 1000/s: allowed
        with pytest.raises(ScenarioError, match="peaks at 1001"):  # 2021: the busiest minute
            _cfg(layout="2021", minute_s=1.0,
                 series=(("f", tuple(0.01 * i for i in range(1001))),))
        with pytest.raises(ScenarioError, match="peaks at"):  # through the loader too
            scenario_from_dict({"devices": {"arrival": "azure", "azure": {
                "file": str(F2019), "functions": 1, "minute_s": 1.0, "scale": 100.0}}})


class TestWithinMinute:
    @pytest.mark.parametrize("within, cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 2.0)])
    def test_counts_per_minute_match_exactly(self, within: str, cv: float) -> None:
        w = WorkloadTrace("f", period_s=5.0, counts=(0.0, 7.0, 30.0, 1.0), within=within,  # type: ignore[arg-type]
                          cv=cv)
        times = azure_times(w, 0.0, 20.0, rng(4))
        assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < 20.0
        assert np.histogram(times, bins=[0, 5, 10, 15, 20])[0].tolist() == [0, 7, 30, 1]

    @pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
    def test_gaps_have_the_asked_cv_over_many_draws(self, cv: float) -> None:
        g = rng(5)
        cvs = []
        for _ in range(400):
            gaps = np.diff(within_period(200, 60.0, "gamma", cv, g))
            cvs.append(gaps.std() / gaps.mean())
        assert np.mean(cvs) == pytest.approx(cv, rel=0.08)

    def test_poisson_gaps_have_cv_one(self) -> None:
        g = rng(6)
        cvs = [np.diff(t).std() / np.diff(t).mean() for t in
               (within_period(300, 60.0, "poisson", 1.0, g) for _ in range(200))]
        assert np.mean(cvs) == pytest.approx(1.0, rel=0.05)

    def test_fractional_counts_round_to_their_mean(self) -> None:
        w = WorkloadTrace("f", period_s=1.0, counts=(2.3,) * 2000)
        assert len(azure_times(w, 0.0, 2000.0, rng(7))) / 2000 == pytest.approx(2.3, abs=0.05)

    def test_a_device_joining_late_follows_the_trace_from_there(self) -> None:
        w = WorkloadTrace("f", period_s=10.0, counts=(5.0, 50.0, 5.0))
        times = azure_times(w, 10.0, 10.0, rng(8))  # joined at run time 10 for 10 s
        assert len(times) == 50 and times.max() < 10.0

    def test_2021_replays_times_and_scales_by_thinning_or_copies(self) -> None:
        base = tuple(float(t) for t in range(100))
        w = WorkloadTrace("f", period_s=60.0, times=base)
        assert np.array_equal(azure_times(w, 0.0, 100.0, rng(9)), np.arange(100.0))
        half = azure_times(dataclasses.replace(w, scale=0.5), 0.0, 100.0, rng(9))
        assert 35 <= len(half) <= 65 and set(half) <= set(base)
        triple = azure_times(dataclasses.replace(w, scale=3.0), 0.0, 200.0, rng(9))
        assert len(triple) == 300 and set(base) <= set(triple)
        assert np.all(np.diff(triple) >= 0)

    def test_the_arrival_stream_alone_is_used_and_seeded(self) -> None:
        w = WorkloadTrace("f", period_s=5.0, counts=(10.0, 20.0), within="gamma", cv=1.5)
        a = arrival_times("azure", 1.0, 10.0, rng(3), workload=w)
        assert np.array_equal(a, arrival_times("azure", 1.0, 10.0, rng(3), workload=w))
        assert len(a) == 30


class TestScenarioFiles:
    def test_the_example_loads_and_only_its_window_is_kept(self) -> None:
        cfg = load_scenario(ROOT / "scenarios" / "azure-functions.toml")
        azure = cfg.devices.azure
        assert azure is not None and len(azure.series) == 4
        assert azure.window_minutes == 6 and all(len(v) == 6 for _, v in azure.series)
        volumes = [sum(v) for _, v in azure.series]
        assert volumes == sorted(volumes, reverse=True)

    def test_the_shipped_2021_file_loads_by_top_n(self, tmp_path: Path) -> None:
        scenario = tmp_path / "s.toml"
        scenario.write_text(f"""duration_s = 20
[devices]
count = 3
arrival = "azure"
[devices.azure]
file = "{F2021}"
layout = "2021"
functions = 2
minute_s = 10.0
""")
        cfg = load_scenario(scenario)
        w = device_specs(cfg)[0].workload
        assert w is not None and w.times and max(w.times) < 20.0

    def test_a_path_outside_the_allowed_folders_is_one_line(self, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
        monkeypatch.delenv(TRACE_DIRS_ENV, raising=False)
        inner = tmp_path / "inner"
        inner.mkdir()
        (tmp_path / "trace.csv").write_text(F2019.read_text())
        scenario = inner / "s.toml"
        scenario.write_text('[devices]\narrival = "azure"\n[devices.azure]\n'
                            'file = "../trace.csv"\n')
        with pytest.raises(ScenarioError, match="outside the folders") as err:
            load_scenario(scenario)
        assert "\n" not in str(err.value)
        monkeypatch.setenv(TRACE_DIRS_ENV, str(tmp_path))
        assert load_scenario(scenario).devices.azure is not None

    def test_a_missing_file_is_one_line(self, tmp_path: Path) -> None:
        scenario = tmp_path / "s.toml"
        scenario.write_text('[devices]\narrival = "azure"\n[devices.azure]\nfile = "no.csv"\n')
        with pytest.raises(ScenarioError, match=r"no\.csv: No such file"):
            load_scenario(scenario)

    def test_azure_without_a_table_and_bad_ids_are_refused(self) -> None:
        with pytest.raises(ScenarioError, match=r"needs \[devices\.azure\]"):
            scenario_from_dict({"devices": {"arrival": "azure"}})
        with pytest.raises(ScenarioError, match="ids item must be a name"):
            scenario_from_dict({"devices": {"arrival": "azure", "azure": {
                "file": str(F2019), "ids": ["../x"]}}})

    def test_a_longer_run_than_the_window_read_says_what_to_do(self) -> None:
        cfg = load_scenario(ROOT / "scenarios" / "azure-functions.toml")
        with pytest.raises(ScenarioError, match="duration_s raised"):
            dataclasses.replace(cfg, duration_s=cfg.duration_s * 2)


def test_azure_and_popularity_do_not_combine() -> None:
    with pytest.raises(ScenarioError, match="do not combine"):
        scenario_from_dict({"devices": {"arrival": "azure", "azure": {"file": str(F2019)}},
                            "tiers": {"low": {"popularity": [[0.0, 2.0]]}}})
