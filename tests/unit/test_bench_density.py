"""bench_density's pure parts: the fidelity bar relative to the host's floor, the named
figures, and counting the samples scheduled in the CPU window from the records."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cascade_testbed.common.records import RecordWriter
from tests.unit.test_records_metrics import rec

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_density.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_density", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_density", module)
    spec.loader.exec_module(module)
    return module


def row(**kw: Any) -> dict[str, Any]:
    base = {"devices": 200, "overrun": 0.001, "loop_lag_p99_ms": 3.0, "floor_lag_p99_ms": 2.0,
            "lost": 0, "partial": False, "rate_fraction": 1.0}
    return {**base, **kw}


def test_fidelity_is_judged_against_twice_the_floor() -> None:
    b = bench()
    assert b.holds(row(loop_lag_p99_ms=4.0))  # exactly 2x the floor
    assert not b.holds(row(loop_lag_p99_ms=4.1))
    assert not b.holds(row(overrun=0.01)) and not b.holds(row(lost=1))
    assert not b.holds(row(rate_fraction=0.9)) and not b.holds(row(partial=True))
    assert not b.holds(row(loop_lag_p99_ms=None))
    assert b.holds(row(loop_lag_p99_ms=9.0), lag_bar_ms=10.0)  # an absolute bar instead


def test_figures_name_each_count_and_the_largest_that_held() -> None:
    b = bench()
    keys = ("startup_s", "uss_mean_mb", "uss_max_mb", "cpu_devices_cores", "cpu_server_cores",
            "cpu_us_per_sample", "floor_cpu_us_per_wakeup", "cpu_vs_floor", "lag_vs_floor",
            "loop_floor_cpu_us_per_sample", "loop_floor_vs_floor", "cpu_vs_loop_floor",
            "loop_floor_lag_p99_ms")
    rows = [row(devices=n, fidelity=ok, **dict.fromkeys(keys, 1.0))
            for n, ok in ((40, True), (100, True), (200, False))]
    out = b.figures(rows, 20.0)
    assert out["max_devices_at_10hz"] == 100 and out["cpu_vs_floor_200"] == 1.0
    assert out["floor_lag_p99_ms_40"] == 2.0 and out["lag_vs_floor_100"] == 1.0
    assert out["cpu_vs_loop_floor_200"] == 1.0 and out["loop_floor_vs_floor_40"] == 1.0
    assert b.figures(rows, 20.0, rate_hz=1.0)["max_devices_at_1hz"] == 100


def test_samples_in_counts_scheduled_arrivals_in_the_window(tmp_path: Path) -> None:
    for dev in ("a", "b"):
        w = RecordWriter(tmp_path / "samples" / f"{dev}.csv")
        for i in range(10):
            r = rec(device=dev, i=i)
            r.wall_epoch_s = 1000.0 + i
            w.write(r)
        w.close()
    assert bench().samples_in(tmp_path, (1002.0, 1005.0)) == 2 * 3  # 1002, 1003, 1004


@pytest.mark.slow
@pytest.mark.parametrize("extra", [None, 2.0])
def test_the_floors_wake_at_the_rate_asked_and_count_cpu_per_arrival(extra: float | None
                                                                    ) -> None:
    """Two real processes for 1.5 s at 20 Hz: about 30 arrivals each, lateness and CPU per
    arrival; the event-loop floor's empty wake-ups are not counted as arrivals."""
    floor = bench().bench_wakeup_floor
    f = floor.measure(2, 1.5, 20.0, work=True, extra_wakeups=extra)
    assert 30 <= f["wakeups"] <= 100  # Poisson: 60 expected for the two
    assert f["p99_ms"] >= 0 and f["cpu_per_wakeup_us"] > 0
