"""Energy: the power models' math (cascade_testbed.common.energy), their configuration, the
summary's energy and achieved-rate sections, and the names compare / sweeps /
--expect know them by."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cascade_testbed.common.config import (
    DeviceSpec,
    PowerSpec,
    ScenarioConfig,
    ScenarioError,
    ServerPowerSpec,
    WorkloadTrace,
    default_tiers,
    device_specs,
)
from cascade_testbed.common.energy import RadioMeter, bytes_j, compute_j, idle_j, server_j
from cascade_testbed.common.records import FIELDS, SampleRecord, read_records, records_to_csv
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed.results.arrivals import trace_rates
from cascade_testbed.testbed.results.energy import energy_summary, server_busy_s
from cascade_testbed.testbed.results.expect import parse_expectation
from cascade_testbed.testbed.results.headline import (
    COMPARED,
    ENERGY_METRICS,
    METRICS,
    canonical,
    lookup,
)
from cascade_testbed.testbed.results.metrics import DeviceTally

LTE = PowerSpec(active_w=2.0, idle_w=0.5, up_j_per_byte=1e-6, down_j_per_byte=2e-7,
                tail_j=10.0, tail_s=10.0)


class TestDeviceMath:
    def test_compute_idle_and_bytes(self) -> None:
        assert compute_j(LTE, 0.015) == pytest.approx(0.03)
        assert compute_j(LTE, -1.0) == 0.0
        assert idle_j(LTE, 10.0, 2.0) == pytest.approx(4.0)
        assert idle_j(LTE, 1.0, 2.0) == 0.0  # busy longer than the span: no negative idle
        assert bytes_j(LTE, 1000, 5000) == pytest.approx(1e-3 + 1e-3)

    def test_a_quiet_radio_pays_a_whole_tail_and_a_busy_one_only_what_it_adds(self) -> None:
        radio = RadioMeter(LTE)
        assert radio.tail_j(100.0) == pytest.approx(10.0)   # wakes the radio
        assert radio.tail_j(102.5) == pytest.approx(2.5)    # 2.5 s of the tail added
        assert radio.tail_j(102.0) == 0.0                   # reported late: adds nothing
        assert radio.tail_j(200.0) == pytest.approx(10.0)   # after the tail ended
        assert radio.last_end == 200.0

    def test_tail_charges_add_up_to_the_tail_of_the_whole_run(self) -> None:
        radio = RadioMeter(LTE)
        ends = [0.0, 1.0, 4.0, 30.0, 31.0]
        total = sum(radio.tail_j(t) for t in ends)
        # union of [t, t + 10): [0, 14) and [30, 41) = 25 s at 1 W
        assert total == pytest.approx(25.0)

    def test_without_a_tail_length_each_transfer_pays_a_whole_tail(self) -> None:
        radio = RadioMeter(dataclasses.replace(LTE, tail_s=0.0, tail_j=0.3))
        assert [radio.tail_j(t) for t in (0.0, 0.01, 0.02)] == [0.3, 0.3, 0.3]

    def test_a_transfer_is_bytes_plus_tail(self) -> None:
        radio = RadioMeter(LTE)
        assert radio.transfer(5.0, up_bytes=1000) == pytest.approx(1e-3 + 10.0)
        assert radio.transfer(6.0, down_bytes=1000) == pytest.approx(2e-4 + 1.0)


class TestServerMath:
    def test_busy_at_active_power_the_rest_idle(self) -> None:
        out = server_j(ServerPowerSpec(active_w=70.0, idle_w=10.0), busy_s=3.0,
                       provisioned_s=10.0)
        assert out == {"active_j": 210.0, "idle_j": 70.0, "total_j": 280.0}

    def test_busy_beyond_provisioned_has_no_negative_idle(self) -> None:
        assert server_j(ServerPowerSpec(), 5.0, 4.0)["idle_j"] == 0.0


class TestConfig:
    def test_tier_classes_have_their_own_defaults(self) -> None:
        tiers = default_tiers()
        assert tiers["high"].power == PowerSpec()  # a phone on LTE
        assert tiers["low"].power.tail_s < 1.0 < tiers["high"].power.tail_s  # WiFi vs LTE
        assert tiers["low"].power.idle_w > tiers["high"].power.idle_w

    def test_a_scenario_overrides_one_field_and_keeps_the_class_defaults(self) -> None:
        cfg = scenario_from_dict({"tiers": {"low": {"power": {"active_w": 9.0}},
                                            "cam": {"model": "light-mid", "compute_ms": 5.0}},
                                  "server": {"power": {"idle_w": 25.0}}})
        assert cfg.tiers["low"].power.active_w == 9.0
        assert cfg.tiers["low"].power.idle_w == default_tiers()["low"].power.idle_w
        assert cfg.tiers["cam"].power == PowerSpec()
        assert cfg.server.power == ServerPowerSpec(active_w=70.0, idle_w=25.0)

    @pytest.mark.parametrize("table, says", [
        ({"active_w": -1.0}, "power.active_w"),
        ({"up_j_per_byte": 2.0}, "power.up_j_per_byte"),
        ({"tail_s": math.inf}, "finite"),
        ({"watts": 1.0}, "unknown keys"),
    ])
    def test_bad_power_values_are_refused(self, table: dict[str, float], says: str) -> None:
        with pytest.raises(ScenarioError, match=says):
            scenario_from_dict({"tiers": {"low": {"power": table}}})


def _rec(device: str, tier: str, i: int, compute: float, radio: float, t: float = 0.0
         ) -> SampleRecord:
    return SampleRecord(
        device_id=device, tier=tier, sample_id=i, incarnation=0, label=1, t_sched_s=t,
        start_lag_ms=0.0, light_ms=10.0, light_real_ms=1.0, overrun=False, light_pred=1,
        light_conf=0.9, threshold=0.5, forwarded=radio > 0, queue_ms=math.nan,
        compute_ms=math.nan, batch_size=0, heavy_model="", final_pred=1, source="light",
        cause="", correct=True, latency_ms=10.0, slo_met=True, wall_epoch_s=1000.0 + t,
        energy_compute_j=compute, energy_radio_j=radio)


class TestRecords:
    def test_energy_columns_round_trip(self, tmp_path: object) -> None:
        assert FIELDS[-2:] == ("energy_compute_j", "energy_radio_j")
        rec = _rec("a", "low", 0, 0.0123, 0.5)
        from pathlib import Path
        path = Path(str(tmp_path)) / "a.csv"
        path.write_text(records_to_csv([rec]))
        back, bad = read_records(path)
        assert bad == 0 and back[0].energy_compute_j == pytest.approx(0.0123)
        assert back[0].energy_radio_j == 0.5


class TestSummary:
    def test_per_sample_per_device_per_tier_and_server(self) -> None:
        records = [_rec("a", "low", 0, 1.0, 0.0), _rec("a", "low", 1, 1.0, 2.0),
                   _rec("b", "high", 0, 0.5, 0.5)]
        devices = [DeviceTally("a", "low", 2, 0.5, energy_idle_j=4.0, energy_control_j=1.0),
                   DeviceTally("b", "high", 2, 0.5, energy_idle_j=1.0)]
        out = energy_summary(records, devices, {"a": 2, "b": 2}, {"a": "low", "b": "high"},
                             ("low", "high"), ServerPowerSpec(70.0, 10.0), busy_s=1.0,
                             provisioned_s=3.0)
        assert out["total_j"] == pytest.approx(4.0 + 5.0 + 2.0)
        assert out["compute_radio_j_per_sample"] == pytest.approx(5.0 / 3)
        assert out["device_j_per_sample"] == pytest.approx(11.0 / 4)
        assert out["j_per_device"] == pytest.approx(5.5)
        assert out["by_device_j"] == {"a": 9.0, "b": 2.0}
        assert list(out["per_tier"]) == ["low", "high"]
        assert out["per_tier"]["low"]["radio_j"] == 2.0
        assert out["per_tier"]["low"]["control_radio_j"] == 1.0
        assert out["server_j"] == pytest.approx(70.0 + 20.0)
        assert out["total_j_per_sample"] == pytest.approx((11.0 + 90.0) / 4)
        assert "not measured" in out["note"]

    def test_without_the_server_busy_time_the_server_is_unknown_not_zero(self) -> None:
        out = energy_summary([], [], {}, {}, (), ServerPowerSpec(), None, None)
        assert out["server"] is None and out["total_j_per_sample"] is None

    def test_busy_time_from_the_live_status_else_from_server_stop_events(self) -> None:
        assert server_busy_s({"totals": {"busy_s": 2.5}}, []) == 2.5
        events: list[dict[str, object]] = [{"kind": "server_stop", "totals": {"busy_s": 1.0}},
                  {"kind": "server_stop", "totals": {"busy_s": 0.5}}, {"kind": "x"}]
        assert server_busy_s({}, events) == 1.5
        assert server_busy_s(None, []) is None


def _spec(i: int, w: WorkloadTrace | None) -> DeviceSpec:
    base = device_specs(ScenarioConfig(devices=dataclasses.replace(
        ScenarioConfig().devices, count=2)))[i]
    return dataclasses.replace(base, workload=w, arrival="azure" if w else "poisson")


class TestTraceRates:
    def test_achieved_against_trace_per_period_and_the_error(self) -> None:
        w = WorkloadTrace("f", period_s=5.0, counts=(10.0, 20.0))
        specs = [_spec(0, w), _spec(1, w)]
        records = ([_rec(specs[0].device_id, "low", i, 0, 0, t=0.1 * i) for i in range(10)]
                   + [_rec(specs[1].device_id, "low", i, 0, 0, t=0.2 * i) for i in range(10)]
                   + [_rec(specs[0].device_id, "low", 99, 0, 0, t=6.0)])
        out = trace_rates(specs, [((0.0, 10.0),)] * 2, records, run_start=1000.0,
                          arrivals_s=10.0)
        assert out is not None
        assert out["trace_sps"] == [4.0, 8.0]
        assert out["achieved_sps"] == [4.0, 0.2]
        assert out["mean_abs_rel_error"] == pytest.approx((0.0 + 39 / 40) / 2, abs=1e-4)

    def test_a_device_connected_half_a_period_is_asked_half(self) -> None:
        w = WorkloadTrace("f", period_s=10.0, counts=(10.0,))
        out = trace_rates([_spec(0, w)], [((5.0, 10.0),)], [], None, 10.0)
        assert out is not None and out["trace_samples"] == 5.0

    def test_no_trace_no_section(self) -> None:
        assert trace_rates([_spec(0, None)], [((0.0, 1.0),)], [], None, 1.0) is None


class TestNames:
    def test_energy_metrics_are_known_to_expect_and_compare(self) -> None:
        assert set(ENERGY_METRICS) <= set(METRICS)
        assert "energy.device_j_per_sample" in COMPARED
        assert canonical("energy_per_sample") == "energy.device_j_per_sample"
        assert canonical("arrivals.mean_abs_rel_error") is not None
        e = parse_expectation("energy.compute_radio_j_per_sample<=0.5")
        assert e.holds(lookup({"energy": {"compute_radio_j_per_sample": 0.4}}, e.metric))
        assert not e.holds(lookup({"energy": {"compute_radio_j_per_sample": 0.6}}, e.metric))


def test_records_written_before_the_energy_columns_still_read(tmp_path: object) -> None:
    from pathlib import Path
    text = records_to_csv([_rec("a", "low", 0, 0.1, 0.2)]).splitlines()
    old = [",".join(line.split(",")[:-2]) for line in text]  # without the last two columns
    path = Path(str(tmp_path)) / "old.csv"
    path.write_text("\n".join(old) + "\n")
    back, bad = read_records(path)
    assert bad == 0 and math.isnan(back[0].energy_compute_j) and back[0].device_id == "a"
    path.write_text("device_id,bogus\na,1\n")
    with pytest.raises(ValueError, match="unexpected header"):
        read_records(path)


def test_a_csv_trace_is_compared_per_step() -> None:
    spec = dataclasses.replace(_spec(0, None), arrival="trace",
                               trace_points=((0.0, 10.0), (2.0, 20.0), (8.0, 0.0)))
    records = [_rec(spec.device_id, "low", i, 0, 0, t=0.1 * i) for i in range(20)] + \
        [_rec(spec.device_id, "low", 100 + i, 0, 0, t=2.0 + 0.05 * i) for i in range(100)]
    out = trace_rates([spec], [((0.0, 10.0),)], records, run_start=1000.0, arrivals_s=10.0)
    assert out is not None and out["source"] == "a CSV of rates" and out["period_s"] is None
    assert out["starts_s"] == [0.0, 2.0, 8.0]
    assert out["trace_sps"] == [10.0, 20.0, 0.0]
    assert out["achieved_sps"] == [10.0, pytest.approx(100 / 6, abs=1e-3), 0.0]
    assert out["mean_abs_rel_error"] == pytest.approx((0 + (120 - 100) / 120) / 2, abs=1e-4)


def test_the_run_report_has_an_energy_table_and_the_rate_error() -> None:
    from cascade_testbed.testbed.results.markdown import _energy_section
    tier = {"compute_radio_j_per_sample": 0.1, "device_j_per_sample": 0.5, "j_per_device": 9.0,
            "compute_j": 1.0, "radio_j": 2.0, "idle_j": 3.0, "control_radio_j": 4.0}
    lines = _energy_section({
        "energy": {"per_tier": {"low": tier}, "server_j": 90.0, "total_j_per_sample": 0.7,
                   "server": {"busy_s": 1.0, "active_w": 70.0, "provisioned_s": 3.0,
                              "idle_w": 10.0}},
        "arrivals": {"source": "azure", "achieved_samples": 99, "trace_samples": 100.0,
                     "periods": 2, "mean_abs_rel_error": 0.01}})
    text = "\n".join(lines)
    assert "not measured" in text and "| low | 0.100 | 0.500 | 9.0 |" in text
    assert "Server: 90.0 J" in text and "error 1.0% per period" in text
    assert _energy_section({}) == []
