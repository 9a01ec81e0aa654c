"""Azure Functions traces as arrival schedules' input: parse the two public layouts, pick
functions, cut the run's window, and map functions to devices. Pure (lines in, values out);
`common.scenario_file` does the reading, `emulated_devices.azure_trace` draws the arrivals.

Layouts (docs/arrival-traces.md):
* 2019 (Azure Functions Trace 2019, `invocations_per_function_md.anon.d01.csv` ...): header
  `HashOwner,HashApp,HashFunction,Trigger,1,2,...,1440`, one row per function and day, the
  invocations of each minute of the day.
* 2021 (Azure Functions Trace 2021, `AzureFunctionsInvocationTraceForTwoWeeksJan2021.txt`):
  header `app,func,end_timestamp,duration`, one row per invocation, seconds from the trace's
  start; the invocation started at `end_timestamp - duration`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

from cascade_testbed.common.config import (
    AzureTraceConfig,
    DeviceSpec,
    ScenarioError,
    WorkloadTrace,
)
from cascade_testbed.common.names import is_name, shown

HEADER_2019: Final = ("HashOwner", "HashApp", "HashFunction", "Trigger")
HEADER_2021: Final = ("app", "func", "end_timestamp", "duration")
MINUTES_PER_DAY: Final = 1440


def window_minutes(duration_s: float, minute_s: float) -> int:
    """Trace minutes a run of `duration_s` covers when one minute lasts `minute_s`."""
    return max(1, math.ceil(duration_s / minute_s - 1e-9))


def _split(line: str) -> list[str]:
    return [c.strip() for c in line.rstrip("\r\n").split(",")]


def parse_2019(lines: Iterable[str], start_minute: int, minutes: int, where: str
               ) -> dict[str, list[float]]:
    """Function id -> its invocations in minutes [start_minute, start_minute + minutes) of a
    2019 day file (rows of the same function are added up)."""
    it = iter(lines)
    header = _split(next(it, ""))
    if tuple(header[:4]) != HEADER_2019 or header[4:] != [str(i) for i in
                                                           range(1, len(header) - 3)]:
        raise ScenarioError(f"{where}: not the 2019 layout (header "
                            f"{','.join(HEADER_2019)},1,2,...,1440)")
    days = len(header) - 4
    if start_minute + minutes > days:
        raise ScenarioError(f"{where}: the run needs trace minutes {start_minute + 1}.."
                            f"{start_minute + minutes} but the file has {days}: lower "
                            "devices.azure.start_minute or the duration, or raise minute_s")
    out: dict[str, list[float]] = {}
    for n, line in enumerate(it, start=2):
        if not line.strip():
            continue
        row = _split(line)
        if len(row) != len(header):
            raise ScenarioError(f"{where}:{n}: {len(row)} columns, the header has "
                                f"{len(header)}")
        fid = row[2]
        if not is_name(fid):
            raise ScenarioError(f"{where}:{n}: HashFunction {shown(fid)} is not an id")
        try:
            counts = [float(c) for c in row[4 + start_minute: 4 + start_minute + minutes]]
        except ValueError:
            raise ScenarioError(f"{where}:{n}: counts must be numbers") from None
        if not all(math.isfinite(c) and c >= 0 for c in counts):
            raise ScenarioError(f"{where}:{n}: counts must be finite and >= 0")
        have = out.get(fid)
        out[fid] = counts if have is None else [a + b for a, b in zip(have, counts,
                                                                      strict=True)]
    return out


def parse_2021(lines: Iterable[str], start_minute: int, minutes: int, where: str
               ) -> dict[str, list[float]]:
    """Function id -> sorted start times (seconds from the window's start) of its invocations
    that started in the window of a 2021 trace."""
    it = iter(lines)
    header = _split(next(it, ""))
    if tuple(header) != HEADER_2021:
        raise ScenarioError(f"{where}: not the 2021 layout (header {','.join(HEADER_2021)})")
    lo, hi = 60.0 * start_minute, 60.0 * (start_minute + minutes)
    out: dict[str, list[float]] = {}
    for n, line in enumerate(it, start=2):
        if not line.strip():
            continue
        row = _split(line)
        if len(row) != 4:
            raise ScenarioError(f"{where}:{n}: 4 columns expected")
        try:
            end, duration = float(row[2]), float(row[3])
        except ValueError:
            raise ScenarioError(f"{where}:{n}: end_timestamp and duration must be numbers"
                                ) from None
        if not (math.isfinite(end) and math.isfinite(duration) and duration >= 0):
            raise ScenarioError(f"{where}:{n}: end_timestamp, duration must be finite, "
                                "duration >= 0")
        fid = row[1]
        if not is_name(fid):
            raise ScenarioError(f"{where}:{n}: func {shown(fid)} is not an id")
        start = end - duration
        if lo <= start < hi:
            out.setdefault(fid, []).append(round(start - lo, 3))
    for times in out.values():
        times.sort()
    return out


def volume(layout: str, values: Sequence[float]) -> float:
    """Invocations a function's window holds."""
    return float(sum(values)) if layout == "2019" else float(len(values))


def select(table: dict[str, list[float]], cfg: AzureTraceConfig, where: str
           ) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """The chosen functions, in order: `cfg.ids` as given, else the `cfg.functions` busiest
    in the window (ties by id, so the choice does not depend on the file's row order)."""
    if cfg.ids:
        missing = [f for f in cfg.ids if f not in table]
        if missing:
            raise ScenarioError(f"{where}: no function {shown(missing[0])} in the file "
                                f"(or no invocation of it in the run's window)")
        chosen = list(cfg.ids)
    else:
        ranked = sorted(table, key=lambda f: (-volume(cfg.layout, table[f]), f))
        chosen = [f for f in ranked if volume(cfg.layout, table[f]) > 0][:cfg.functions]
        if not chosen:
            raise ScenarioError(f"{where}: no invocation in the run's window")
    return tuple((f, tuple(table[f])) for f in chosen)


def function_index(mapping: str, n_functions: int, device_index: int, tier: str,
                   tiers: Sequence[str]) -> int:
    """Which chosen function a device follows: round-robin over devices, or one per tier in
    the tiers' declared order (wrapping when there are more tiers than functions)."""
    k = device_index if mapping == "round-robin" else tiers.index(tier)
    return k % n_functions


def workload(cfg: AzureTraceConfig, index: int) -> WorkloadTrace:
    """Function `index` of `cfg.series` in run time: 2019 counts scaled, 2021 start times
    compressed (one trace minute = `minute_s`)."""
    fid, values = cfg.series[index]
    if cfg.layout == "2019":
        return WorkloadTrace(fid, cfg.minute_s, counts=tuple(v * cfg.scale for v in values),
                             within=cfg.within, cv=cfg.cv)
    k = cfg.minute_s / 60.0
    return WorkloadTrace(fid, cfg.minute_s, times=tuple(t * k for t in values),
                         scale=cfg.scale, within=cfg.within, cv=cfg.cv)


def device_workloads(cfg: AzureTraceConfig, specs: Sequence[DeviceSpec],
                     tiers: Sequence[str]) -> list[WorkloadTrace]:
    """The trace function each device follows (`function_index`)."""
    cache: dict[int, WorkloadTrace] = {}
    out = []
    for spec in specs:
        i = function_index(cfg.mapping, len(cfg.series), spec.index, spec.tier, tiers)
        if i not in cache:
            cache[i] = workload(cfg, i)
        out.append(cache[i])
    return out


def expected_per_period(w: WorkloadTrace, periods: int) -> list[float]:
    """Arrivals the trace asks of one device in each period (2019: the scaled count; 2021:
    the invocations starting in it times `scale`)."""
    if w.counts:
        return [w.counts[i] if i < len(w.counts) else 0.0 for i in range(periods)]
    out = [0.0] * periods
    for t in w.times:
        i = int(t // w.period_s)
        if 0 <= i < periods:
            out[i] += w.scale
    return out


def peak_rate(w: WorkloadTrace) -> float:
    """The highest per-period rate of a device's workload (what it declares to the server)."""
    periods = max(len(w.counts), int(max(w.times, default=0.0) // w.period_s) + 1)
    return max(expected_per_period(w, periods), default=0.0) / w.period_s
