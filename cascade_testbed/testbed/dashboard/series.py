"""The live view's data: the server's status snapshots turned into chart rows. Pure: time is
passed in, nothing here opens a socket or a file (the polling is `testbed.dashboard.app`'s).

One poll of `/v1/status` becomes one row: for every chart, a value per series label at that
instant, plus markers (faults, joins, leaves, model switches, the server going silent). The
page folds rows into columns without knowing what they mean, so this module is the one place
that decides what is shown.

Ratios (forward rate, SLO satisfaction) are taken over the last `RATE_WINDOW_S` seconds from
the differences of each device's running counts, which the server keeps per session: a report
that falls between two polls is never lost or counted twice, and a tier's ratio is its
devices' counts added up (exact, not a mean of ratios). Latency percentiles come from each
device's last report (over its last 100 answers); a tier's is the mean of its devices'.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cascade_testbed.testbed.palette import tier_order, tier_styles

HISTORY_ROWS = 1200
"""Rows kept: 10 minutes at 2 polls a second; older ones fall off (the run folder has all)."""
RATE_WINDOW_S = 5.0
"""Forward rate and SLO satisfaction are over this much of the recent past."""
COUNTS = ("generated", "forwarded", "answered", "slo_met", "slo_missed")
FAULT_EVENTS = {"fault", "server_restart", "device_restart", "server_exit", "device_exit",
                "interrupted", "drain_timeout", "disk_full", "server_restart_failed"}
"""Harness events (`events.harness.jsonl`) shown as markers."""


@dataclass(frozen=True)
class Chart:
    name: str
    title: str
    unit: str
    by: str
    """"tier", "device" or "server": whose series the chart holds."""


DEVICE_METRICS = (("threshold", "threshold", ""), ("forward_rate", "forward rate", "%"),
                  ("slo", "SLO satisfaction", "%"), ("p50_ms", "latency p50", "ms"),
                  ("p95_ms", "latency p95", "ms"))
CHARTS: tuple[Chart, ...] = (
    *(Chart(f"tier.{m}", f"{title} by tier", unit, "tier") for m, title, unit in DEVICE_METRICS),
    *(Chart(f"device.{m}", f"{title} by device", unit, "device")
      for m, title, unit in DEVICE_METRICS),
    Chart("server.queue", "server queue length", "requests", "server"),
    Chart("server.batch", "mean batch size", "samples", "server"),
    Chart("server.rate", "server throughput and arrivals", "samples/s", "server"),
    Chart("server.model", "heavy model in use", "", "server"),
)


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


class Timeline:
    """Rows from successive polls, at most `history` of them."""

    def __init__(self, history: int = HISTORY_ROWS, rate_window_s: float = RATE_WINDOW_S) -> None:
        self.rows: deque[dict[str, Any]] = deque(maxlen=history)
        self.rate_window_s = rate_window_s
        self.tier_of: dict[str, str] = {}
        self.models: list[str] = []
        """Heavy models in the order first seen: the model chart's y is the index + 1."""
        self._counts: dict[str, deque[tuple[float, tuple[int, ...]]]] = {}
        self._devices: set[str] | None = None
        self._server_up: bool | None = None
        self._model: str | None = None
        self.last_up: dict[str, Any] | None = None
        """The last row of a poll the server answered (what the page shows once it stops)."""
        self.tier_now: dict[str, dict[str, Any]] = {}
        """Per tier ever seen, its values in the last row that had it (`tier_now`)."""

    def add(self, t: float, status: Mapping[str, Any] | None,
            events: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """The row of a poll at `t` (epoch seconds). `status` is `/v1/status`'s body, or None
        when the server did not answer; `events` are harness events since the last poll."""
        markers = [m for e in events if (m := _event_marker(e)) is not None]
        row = self._down(t, markers) if status is None else self._up(t, status, markers)
        self.rows.append(row)
        return row

    def _down(self, t: float, markers: list[dict[str, Any]]) -> dict[str, Any]:
        if self._server_up:
            markers.append({"t": t, "kind": "server", "text": "server not answering"})
        self._server_up = False
        self._counts.clear()  # a restarted server starts its sessions' counts again
        return {"t": t, "charts": {}, "markers": markers, "server_up": False}

    def _up(self, t: float, status: Mapping[str, Any],
            markers: list[dict[str, Any]]) -> dict[str, Any]:
        if self._server_up is False:
            markers.append({"t": t, "kind": "server", "text": "server answering again"})
        self._server_up = True
        devices: Mapping[str, Mapping[str, Any]] = status.get("devices") or {}
        self._membership(t, set(devices), markers)
        per_device: dict[str, dict[str, float | None]] = {}
        deltas: dict[str, tuple[int, ...]] = {}
        for dev, d in devices.items():
            self.tier_of[dev] = str(d.get("tier", "?"))
            deltas[dev] = self._delta(dev, t, d.get("totals") or {})
            per_device[dev] = _device_values(d, deltas[dev])
        for dev in [d for d in self._counts if d not in devices]:
            del self._counts[dev]
        charts: dict[str, dict[str, float | None]] = {}
        for metric, _, _ in DEVICE_METRICS:
            charts[f"device.{metric}"] = {dev: v[metric] for dev, v in per_device.items()}
        for metric, values in _tier_values(per_device, deltas, self.tier_of).items():
            charts[f"tier.{metric}"] = values
        charts.update(self._server(t, status, markers))
        tiers = tier_order({self.tier_of[dev] for dev in devices})
        row = {"t": t, "charts": charts, "markers": markers, "server_up": True,
               "tier_of": {dev: self.tier_of[dev] for dev in devices},
               "tier_styles": tier_styles(tiers),
               "heavy_model": status.get("heavy_model"), "policy": status.get("policy")}
        self.tier_now = tier_now(self.tier_now, row)
        self.last_up = row
        return row

    def _membership(self, t: float, now: set[str], markers: list[dict[str, Any]]) -> None:
        """Joins and leaves after the first status (the first one's devices are the start),
        one marker each per poll: 100 devices registering are not 100 lines."""
        if self._devices is not None:
            for kind, devs in (("join", now - self._devices), ("leave", self._devices - now)):
                if devs:
                    names = sorted(devs)
                    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                    markers.append({"t": t, "kind": kind, "text": f"{', '.join(names[:3])}{more} "
                                    f"{'joined' if kind == 'join' else 'left'}"})
        self._devices = now

    def _delta(self, dev: str, t: float, totals: Mapping[str, Any]) -> tuple[int, ...]:
        """Counts over the last `rate_window_s` (all zero on a device's first poll)."""
        counts = tuple(int(totals.get(k, 0)) for k in COUNTS)
        history = self._counts.setdefault(dev, deque())
        if history and any(c < p for c, p in zip(counts, history[-1][1], strict=True)):
            history.clear()  # a new session (the device or the server restarted)
        history.append((t, counts))
        while len(history) > 1 and history[1][0] <= t - self.rate_window_s:
            history.popleft()  # keep the newest sample at or before the window's start
        base = history[0][1]
        return tuple(c - b for c, b in zip(counts, base, strict=True))

    def _server(self, t: float, status: Mapping[str, Any],
                markers: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
        model = status.get("heavy_model")
        if isinstance(model, str):
            if model not in self.models:
                self.models.append(model)
            if self._model is not None and model != self._model:
                markers.append({"t": t, "kind": "model", "text": f"heavy model: {model}"})
            self._model = model
        queue = status.get("queue") or {}
        return {
            "server.queue": {"queue": queue.get("length")},
            "server.batch": {"batch": status.get("mean_batch_size")},
            "server.rate": {"throughput": status.get("throughput_sps"),
                            "arrivals": status.get("arrival_rate_sps")},
            "server.model": {m: (i + 1 if m == model else None)
                             for i, m in enumerate(self.models)},
        }


def _device_values(d: Mapping[str, Any], delta: tuple[int, ...]) -> dict[str, float | None]:
    generated, forwarded, _, met, missed = delta
    latency = d.get("latency_ms") or {}
    return {"threshold": d.get("threshold"), "forward_rate": _ratio(forwarded, generated),
            "slo": _ratio(met, met + missed), "p50_ms": latency.get("p50"),
            "p95_ms": latency.get("p95")}


def _tier_values(per_device: Mapping[str, Mapping[str, float | None]],
                 deltas: Mapping[str, tuple[int, ...]],
                 tier_of: Mapping[str, str]) -> dict[str, dict[str, float | None]]:
    """Per tier: mean threshold, forward rate and SLO satisfaction of the tier's summed
    counts, mean of its devices' latency percentiles."""
    tiers: dict[str, list[str]] = {}
    for dev in per_device:
        tiers.setdefault(tier_of[dev], []).append(dev)
    out: dict[str, dict[str, float | None]] = {m: {} for m, _, _ in DEVICE_METRICS}
    for tier in tier_order(tiers):  # the weakest first: drawn first, widest, beneath
        devs = tiers[tier]
        sums = [sum(col) for col in zip(*(deltas[d] for d in devs), strict=True)]
        generated, forwarded, _, met, missed = sums
        out["threshold"][tier] = _mean(per_device[d]["threshold"] for d in devs)
        out["forward_rate"][tier] = _ratio(forwarded, generated)
        out["slo"][tier] = _ratio(met, met + missed)
        out["p50_ms"][tier] = _mean(per_device[d]["p50_ms"] for d in devs)
        out["p95_ms"][tier] = _mean(per_device[d]["p95_ms"] for d in devs)
    return out


def tier_now(before: Mapping[str, dict[str, Any]], row: Mapping[str, Any]
             ) -> dict[str, dict[str, Any]]:
    """The line of current values per tier after `row`: each tier in the row gets its values
    and the row's time; a tier missing from it (its devices left, as all do at the end of a
    run, or the server is silent) keeps the values of the last row that had it, with that
    row's time. Every tier seen stays, in `tier_order`. The page does the same per streamed
    row (static/dashboard.js `keepTierNow`)."""
    now = dict(before)
    charts = row.get("charts", {})
    for tier in charts.get("tier.threshold", {}):
        now[tier] = {"t": row["t"], **{m: charts.get(f"tier.{m}", {}).get(tier)
                                         for m, _, _ in DEVICE_METRICS}}
    return {tier: now[tier] for tier in tier_order(now)}


def _event_marker(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """A harness event worth a marker, as one short line."""
    kind = event.get("kind")
    if kind not in FAULT_EVENTS or not isinstance(event.get("t"), int | float):
        return None
    if kind == "device_exit" and event.get("planned"):
        return None  # the fault that killed it has its own marker
    what = event.get("fault") if kind == "fault" else kind
    target = event.get("device") or ""
    text = f"{what} {target}".strip() if isinstance(target, str) else str(what)
    return {"t": float(event["t"]), "kind": "fault", "text": text[:80]}


def columns(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows folded into uPlot's column form, per chart: {"t": [...], "charts": {name:
    {"labels": [...], "data": [[...], ...]}}, "markers": [...], "tier_of": {...},
    "tier_styles": {...}}, None where
    a series has no value. The page loads this once, then appends each new row the same way
    (static/dashboard.js `append`); columns carry each label once, rows would repeat them."""
    rows = list(rows)
    markers = [m for row in rows for m in row.get("markers", [])]
    tier_of: dict[str, str] = {}
    styles: dict[str, Any] = {}
    for row in rows:
        tier_of.update(row.get("tier_of", {}))
        styles.update(row.get("tier_styles", {}))
    charts: dict[str, dict[str, Any]] = {}
    for chart in CHARTS:
        values = [row.get("charts", {}).get(chart.name, {}) for row in rows]
        labels = list(dict.fromkeys(label for v in values for label in v))
        if chart.by == "tier":
            labels = tier_order(labels)  # the weakest drawn first, beneath the others
        charts[chart.name] = {"labels": labels,
                              "data": [[v.get(label) for v in values] for label in labels]}
    return {"t": [row["t"] for row in rows], "charts": charts, "markers": markers,
            "tier_of": tier_of, "tier_styles": styles}
