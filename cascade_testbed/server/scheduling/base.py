"""The scheduler interface and the plain data it sees. No sockets, clocks or asyncio here.

`server.control` calls `join`/`leave` as devices come and go and `step` every control interval
with a `SystemView` built from the devices' latest reports and the server's window statistics;
`step` returns the thresholds each device should use from now on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """On the validation split: forwarding below `threshold` sends `forward_rate` of the samples
    and gives the cascade (light + heavy) `accuracy`."""

    threshold: float
    forward_rate: float
    accuracy: float


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    tier: str
    model: str
    light_accuracy: float | None = None
    curve: tuple[CurvePoint, ...] = ()
    """The cascade curve with the server's default heavy model."""
    initial_threshold: float = 1.0
    """What the device starts with: the scenario's tier threshold or the card's default."""
    curves: Mapping[str, tuple[CurvePoint, ...]] = field(default_factory=dict)
    """The cascade curve with each heavy model the server can switch to, by name."""

    def curve_for(self, heavy_model: str) -> tuple[CurvePoint, ...]:
        return self.curves.get(heavy_model, self.curve)


@dataclass(frozen=True, slots=True)
class DeviceWindow:
    """A device's last report: counts over `window_s` seconds ending `age_s` ago."""

    window_s: float
    generated: int
    forwarded: int
    answered: int
    slo_met: int
    slo_missed: int
    fallback: int
    threshold: float
    mean_light_confidence: float
    light_ms_mean: float
    age_s: float = 0.0

    @classmethod
    def from_report(cls, report: Any, age_s: float) -> DeviceWindow:
        """From a device's `report` message (any object with these fields), `age_s` old.
        Policies stay free of wire types; the field names are the one contract."""
        return cls(**{name: getattr(report, name) for name in _REPORT_FIELDS}, age_s=age_s)

    @property
    def slo_satisfaction(self) -> float | None:
        decided = self.slo_met + self.slo_missed
        return self.slo_met / decided if decided else None

    @property
    def forward_rate(self) -> float | None:
        return self.forwarded / self.generated if self.generated else None

    @property
    def rate_hz(self) -> float:
        return self.generated / self.window_s if self.window_s > 0 else 0.0


_REPORT_FIELDS = tuple(f.name for f in fields(DeviceWindow) if f.name != "age_s")


@dataclass(frozen=True, slots=True)
class ServerWindow:
    """The server over the last control interval."""

    window_s: float = 0.0
    arrivals: int = 0
    completed: int = 0
    rejected: int = 0
    expired: int = 0
    queue_len: int = 0
    max_queue_size: int = 1
    mean_queue_ms: float = 0.0
    mean_batch_size: float = 0.0
    busy_fraction: float = 0.0
    """Share of the window the heavy model was running (padded), a load signal in [0, 1]
    (of all its replicas' time)."""
    max_batch_size: int = 1
    replicas: int = 1
    """Replicas of the accelerator provisioned at the end of the window."""

    @property
    def arrival_rate(self) -> float:
        return self.arrivals / self.window_s if self.window_s > 0 else 0.0

    @property
    def throughput(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class DeviceState:
    info: DeviceInfo
    threshold: float
    window: DeviceWindow | None
    """The device's latest report, if it has sent one."""
    fresh: bool = False
    """The report arrived since the previous step (policies that react per report use it)."""


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """A device's reports over a horizon, summed."""

    slo_met: int = 0
    slo_missed: int = 0
    generated: int = 0
    forwarded: int = 0
    window_s: float = 0.0
    """Seconds the summed reports cover."""


@dataclass(slots=True)
class ReportHorizon:
    """A device's reports of the last `horizon_s` seconds: what the MultiTASC policies judge
    its SLO satisfaction and load by (a single window is too noisy at a few Hz)."""

    horizon_s: float
    reports: deque[tuple[float, DeviceWindow]] = field(default_factory=deque)

    def observe(self, state: DeviceState, now: float) -> None:
        """Keep a fresh report, drop those older than the horizon."""
        if state.fresh and state.window is not None:
            self.reports.append((now, state.window))
        while self.reports and self.reports[0][0] < now - self.horizon_s:
            self.reports.popleft()

    def totals(self) -> WindowTotals:
        met = missed = generated = forwarded = 0
        span = 0.0
        for _, w in self.reports:
            met, missed = met + w.slo_met, missed + w.slo_missed
            generated, forwarded, span = generated + w.generated, forwarded + w.forwarded, \
                span + w.window_s
        return WindowTotals(met, missed, generated, forwarded, span)


def clamp(value: float, low: float, high: float) -> float:
    return min(max(float(value), float(low)), float(high))


@dataclass(frozen=True, slots=True)
class HeavyOption:
    """A heavy model the server holds and can switch to."""

    name: str
    accuracy: float | None
    """Its accuracy on the validation split (model card)."""
    capacity_sps: float
    """Samples per second it serves at the largest batch (emulated profile or measured)."""


@dataclass(frozen=True, slots=True)
class SystemView:
    now: float
    slo_ms: float
    devices: Mapping[str, DeviceState]
    server: ServerWindow
    heavy_model: str = ""
    """The heavy model running now."""
    heavy_options: Mapping[str, HeavyOption] = field(default_factory=dict)
    """Every heavy model the server could run, including the current one."""


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """New thresholds by device id; devices not named keep theirs."""
    note: str = ""
    """A short reason, written to the run's events when the decision changes something."""
    heavy_model: str | None = None
    """Switch the server to this heavy model (one of `SystemView.heavy_options`)."""
    max_batch_size: int | None = None
    """Cap the server's batches at this size from the next batch on."""
    replicas: int | None = None
    """Provision this many replicas of the accelerator from now on (a policy that plans its
    own capacity, as CascadeServe's gears); None leaves it to the server's autoscaling."""
    gear: Mapping[str, Any] | None = None
    """A gear switch to record (gear policies): written to the run's events as is."""


class Policy(Protocol):
    """A scheduler. Implementations are plain objects; the registry builds them by name."""

    name: ClassVar[str]

    def join(self, device: DeviceInfo, now: float) -> float:
        """A device connected; return the threshold it starts with."""

    def leave(self, device_id: str, now: float) -> None:
        """A device disconnected."""

    def step(self, view: SystemView) -> PolicyDecision:
        """Decide thresholds from the latest view (called every control interval)."""


class PolicyError(ValueError):
    """A policy name or parameter the scenario gives is not valid."""


def check_params(policy: str, params: Mapping[str, Any],
                 known: Mapping[str, Any]) -> dict[str, Any]:
    """Merge scenario params over defaults, refusing unknown names and values whose kind is not
    the default's (a number for a number, true/false for a flag, a string, a table, a list; a
    default of None takes anything). Each refusal is one line naming the parameter and what is
    accepted: the harness shows it as is, before any process starts."""
    accepted = ", ".join(sorted(known)) or "none"
    unknown = sorted(set(params) - set(known))
    if unknown:
        names = ", ".join(repr(str(k))[:42] for k in unknown[:5])
        raise PolicyError(f"policy {policy!r}: unknown parameter{'s' if len(unknown) > 1 else ''}"
                          f" {names}; accepted: {accepted} (defaults: testbed policies)")
    out = dict(known)
    for key, value in params.items():
        default = known[key]
        kind = _kind(default)
        if kind is not None and not _is_kind(value, kind):
            raise PolicyError(f"policy {policy!r}: parameter {key!r} must be {kind} "
                              f"(got {_shown(value)}; default {_shown(default)})")
        out[key] = float(value) if isinstance(default, float) else value
    return out


def _kind(default: Any) -> str | None:
    if default is None:
        return None
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, Mapping):
        return "a table"
    if isinstance(default, (list, tuple)):
        return "a list"
    return None


def _is_kind(value: Any, kind: str) -> bool:
    match kind:
        case "true or false":
            return isinstance(value, bool)
        case "a number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        case "a string":
            return isinstance(value, str)
        case "a table":
            return isinstance(value, Mapping)
        case _:
            return isinstance(value, (list, tuple))


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def curve_from_card(card: Mapping[str, Any]) -> tuple[CurvePoint, ...]:
    return _curve(card.get("threshold_curve_val", ()))


def curves_from_card(card: Mapping[str, Any]) -> dict[str, tuple[CurvePoint, ...]]:
    """The card's cascade curve for each heavy model it was measured with."""
    return {name: _curve(rows) for name, rows in card.get("threshold_curves_val", {}).items()}


def _curve(rows: Any) -> tuple[CurvePoint, ...]:
    return tuple(CurvePoint(float(p["threshold"]), float(p["forward_rate"]),
                            float(p["accuracy"])) for p in rows)


def accuracy_optimal_threshold(curve: tuple[CurvePoint, ...], tolerance: float = 0.01) -> float:
    """The lowest threshold whose cascade accuracy is within `tolerance` of the best one:
    what a designer tuning one device's cascade alone, with a server to itself, would choose."""
    if not curve:
        return 1.0
    best = max(p.accuracy for p in curve)
    return min(p.threshold for p in curve if p.accuracy >= best - tolerance)
