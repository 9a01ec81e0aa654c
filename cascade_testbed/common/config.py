"""Scenario configuration: frozen dataclasses, their defaults and checks, and the devices a
scenario resolves to. A leaf module (stdlib only, no I/O); `common.scenario_file` reads and
writes scenario files. Units are in the field names (`_ms`, `_s`, `_hz`, `_mbps`, `_us`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cascade_testbed.common.names import BadName, check_name, check_policy_name, shown

ArrivalKind = Literal["constant", "poisson", "onoff", "trace", "azure"]
FaultKind = Literal["kill_device", "kill_server", "cut_link", "packet_loss", "kill_node"]
AdmissionMode = Literal["bound", "deadline"]
ForwardingRuleName = Literal["confidence", "margin", "entropy", "agreement"]
ServerMode = Literal["whole", "early-exit"]
StagePolicyName = Literal["slack", "edf", "fcfs"]
IdnPolicyName = Literal["idn", "greedy-online", "greedy-static", "cloud-only", "coe"]
EdgeRule = Literal["agreement", "confidence"]
AcceleratorKind = Literal["plain", "conventional-npu", "fluid-npu"]
CpuLimit = Literal["pad", "cgroup"]
AzureLayout = Literal["2019", "2021"]
AzureMapping = Literal["round-robin", "per-tier"]
WithinMinute = Literal["poisson", "gamma"]
TIER_ORDER = ("low", "mid", "high")


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file and the field."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ScenarioError(what)


# Documented ranges (docs/security.md): wide enough for any experiment this testbed can run,
# narrow enough that a typo cannot ask for a day of arrivals at a GHz.
MAX_DURATION_S: Final = 86_400.0
MAX_RATE_HZ: Final = 1_000.0
"""Samples per second of one device; also what a device's report may claim at most."""
MAX_DEVICES: Final = 10_000
"""Hard bound of `devices.count`; the harness also checks what the host's memory can hold."""
MAX_MS: Final = 600_000.0
"""Latencies, delays, timeouts and SLOs: at most ten minutes."""
MAX_FAULTS: Final = 1_000


def _name(value: object, what: str, extra: str = "") -> None:
    try:
        check_name(value, what, extra)
    except BadName as exc:
        raise ScenarioError(str(exc)) from None


def _in(value: float, low: float, high: float, what: str, *, open_low: bool = False) -> None:
    """`value` is finite and in [low, high] (or (low, high] with `open_low`)."""
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and value <= high
    _check(ok, f"{what} must be in {'(' if open_low else '['}{low:g}, {high:g}] "
               f"(got {value!r})")


def _finite(obj: object) -> None:
    """Every float field of a config dataclass (and every float in its tuples) is finite: TOML
    and the CLI both accept inf and nan, which no field means."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        items = value if isinstance(value, tuple) else (value,)
        flat = [x for item in items for x in (item if isinstance(item, tuple) else (item,))]
        _check(all(math.isfinite(x) for x in flat if isinstance(x, float)),
               f"{f.name} must be a finite number (got {value!r})")


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of a device's emulated network link."""

    delay_ms: float = 5.0
    """One-way propagation delay."""
    jitter_ms: float = 1.0
    """Standard deviation of a normal jitter added to the delay (clipped at zero)."""
    bandwidth_mbps: float = 50.0
    """Serialisation rate; messages on one link queue behind each other (FIFO, like TCP)."""
    loss: float = 0.0
    """Probability that a message's packet is lost; TCP resends it after `rto_ms` (doubling
    while it keeps being lost), so loss shows up as delay, as on a real WebSocket."""
    rto_ms: float = 200.0
    """Retransmission timeout (Linux's minimum is 200 ms)."""
    trace: str = ""
    """A Mahimahi trace file (docs/emulation.md) whose delivery opportunities replace
    `bandwidth_mbps`; "" none. The loader resolves it (relative to the scenario's folder or
    the shipped traces) and checks it; the device reads it."""
    trace_phase: str = "spread"
    """Where in the trace each device starts: "spread" (each device at its own point, spread
    evenly over the trace's period, so the devices of a tier do not all lose the link at the
    same instant) or "aligned" (every device at the trace's start)."""

    def __post_init__(self) -> None:
        _finite(self)
        _check(len(self.trace) <= 4096 and self.trace.isprintable(),
               "link trace must be a path of at most 4096 printable characters")
        _check(self.trace_phase in ("spread", "aligned"),
               f"link trace_phase must be 'spread' or 'aligned' (got {shown(self.trace_phase)})")
        _in(self.delay_ms, 0, MAX_MS, "link delay_ms")
        _in(self.jitter_ms, 0, MAX_MS, "link jitter_ms")
        _in(self.bandwidth_mbps, 0, 1e6, "bandwidth_mbps", open_low=True)
        _check(0 <= self.loss < 1, f"link loss must be in [0, 1) (got {self.loss})")
        _in(self.rto_ms, 0, MAX_MS, "rto_ms", open_low=True)


@dataclass(frozen=True, slots=True)
class PowerSpec:
    """A device's power model (`[tiers.<name>.power]`, docs/energy.md). The defaults are a
    phone on LTE; `default_tiers` gives each tier class its own. Literature values, not
    measurements of this host: they turn the run's compute time and bytes into joules."""

    active_w: float = 3.0
    """SoC power while the light model computes (a phone's sustained CPU/NPU load)."""
    idle_w: float = 0.3
    """Power while the device waits for its next sample."""
    up_j_per_byte: float = 3.7e-6
    """Radio energy per uplink byte (Huang et al. 2012, LTE: 438.39 mW/Mbps + 1288.04 mW at
    the tier's 50 Mbps uplink)."""
    down_j_per_byte: float = 5.2e-7
    """Radio energy per downlink byte (LTE: 51.97 mW/Mbps + 1288.04 mW at 100 Mbps)."""
    tail_j: float = 12.3
    """Energy of one whole radio tail after a transfer (LTE: 1060 mW for 11.576 s)."""
    tail_s: float = 11.6
    """Length of the tail: a transfer within the previous one's tail only extends it (0: every
    transfer pays a whole `tail_j`)."""

    def __post_init__(self) -> None:
        _finite(self)
        for name in ("active_w", "idle_w", "tail_j"):
            _in(getattr(self, name), 0, 10_000, f"power.{name}")
        for name in ("up_j_per_byte", "down_j_per_byte"):
            _in(getattr(self, name), 0, 1.0, f"power.{name}")
        _in(self.tail_s, 0, 3600, "power.tail_s")


@dataclass(frozen=True, slots=True)
class ServerPowerSpec:
    """The server accelerator's power, per replica (`[server.power]`; docs/energy.md). The
    defaults are an NVIDIA T4's board power (70 W) and a typical idle draw (~10 W): data-sheet
    and reported values, not measurements."""

    active_w: float = 70.0
    """While a batch runs (the batcher's busy time)."""
    idle_w: float = 10.0
    """While a provisioned replica waits."""

    def __post_init__(self) -> None:
        _finite(self)
        _in(self.active_w, 0, 100_000, "server.power.active_w")
        _in(self.idle_w, 0, 100_000, "server.power.idle_w")


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A device class: which light model it runs, how fast, and over which link."""

    model: str
    """Light model name in the zoo."""
    compute_ms: float
    """Median light-model latency the device emulates (the real run is padded up to it)."""
    compute_jitter: float = 0.1
    """Sigma of the log-normal spread around `compute_ms`."""
    threshold: float | None = None
    """Initial (and, under `static`, fixed) threshold; None takes the model card's
    accuracy-optimal value, the one a single-device cascade designer would pick."""
    uplink: LinkSpec = field(default_factory=LinkSpec)
    downlink: LinkSpec = field(default_factory=LinkSpec)
    ensemble: tuple[str, ...] = ()
    """Light models the device runs on every sample (a cascade-of-ensembles tier); empty: just
    `model`. `compute_ms` is then the whole ensemble's latency."""
    rule: ForwardingRuleName = "confidence"
    """confidence | margin | entropy (of `model`'s output) | agreement (of the ensemble's
    votes: keep the majority answer iff its share of the members >= the threshold)."""
    rate_hz: float | None = None
    """Mean samples per second of this tier's devices; None takes `devices.rate_hz` (a camera
    and a phone need not see frames at the same rate)."""
    task: str = ""
    """The task its samples belong to (zoo.json `tasks`: the labels taken mod `label_mod`,
    its own server models); "" the dataset's own labels. Its light answers are taken mod the
    same, and an inference delivery network serves it with that task's models."""
    popularity: tuple[tuple[float, float], ...] = ()
    """The tier's rate over run time: (t_s, multiplier of its rate), piecewise constant (a
    task whose requests come and go); empty: constant."""
    power: PowerSpec = field(default_factory=PowerSpec)
    """How much energy its computing and its radio take (docs/energy.md)."""

    @property
    def members(self) -> tuple[str, ...]:
        return self.ensemble or (self.model,)

    def __post_init__(self) -> None:
        _finite(self)
        _name(self.model, "tier model")
        if self.task:
            _name(self.task, "tier task")
        _check(len(self.popularity) <= 10_000 and all(
            0 <= t <= MAX_DURATION_S and 0 <= m <= 1000 for t, m in self.popularity)
            and [t for t, _ in self.popularity] == sorted(t for t, _ in self.popularity),
               f"tier popularity: increasing times in [0, {MAX_DURATION_S:g}] s, multipliers "
               "in [0, 1000]")
        for member in self.ensemble:
            _name(member, "tier ensemble model")
        _check(self.rule in typing.get_args(ForwardingRuleName),
               f"tier rule must be one of {typing.get_args(ForwardingRuleName)} "
               f"(got {self.rule!r})")
        _check(self.rule != "agreement" or len(self.members) >= 2,
               "rule 'agreement' needs an ensemble of at least 2 models")
        _in(self.compute_ms, 0, MAX_MS, "compute_ms", open_low=True)
        _in(self.compute_jitter, 0, 10, "compute_jitter")
        if self.rate_hz is not None:
            _in(self.rate_hz, 0, MAX_RATE_HZ, "tier rate_hz", open_low=True)
        _check(self.threshold is None or 0 <= self.threshold <= 1,
               f"threshold must be in [0, 1] (got {self.threshold})")


BOARD_POWER: Final = PowerSpec(active_w=6.4, idle_w=2.7, up_j_per_byte=2.4e-6,
                               down_j_per_byte=1.2e-6, tail_j=0.03, tail_s=0.24)
"""A Raspberry-Pi-4-class board on WiFi: published idle and full-load figures; radio from
Huang et al. 2012's WiFi model (283.17 / 137.01 mW/Mbps + 132.86 mW) at 10 / 20 Mbps, a short
power-save tail (docs/energy.md)."""
CAMERA_POWER: Final = PowerSpec(active_w=5.0, idle_w=1.3, up_j_per_byte=2.3e-6,
                                down_j_per_byte=1.1e-6, tail_j=0.03, tail_s=0.24)
"""A Jetson-Nano-class camera in its 5 W mode on WiFi, at 20 / 40 Mbps (docs/energy.md)."""


def default_tiers() -> dict[str, TierSpec]:
    """Smart-home board, camera, phone: slower devices have weaker models and slower links."""
    return {
        "low": TierSpec("light-low", compute_ms=30.0,
                        uplink=LinkSpec(8.0, 2.0, 10.0), downlink=LinkSpec(8.0, 2.0, 20.0),
                        power=BOARD_POWER),
        "mid": TierSpec("light-mid", compute_ms=15.0,
                        uplink=LinkSpec(5.0, 1.5, 20.0), downlink=LinkSpec(5.0, 1.5, 40.0),
                        power=CAMERA_POWER),
        "high": TierSpec("light-high", compute_ms=6.0,
                         uplink=LinkSpec(3.0, 1.0, 50.0), downlink=LinkSpec(3.0, 1.0, 100.0),
                         power=PowerSpec()),
    }


@dataclass(frozen=True, slots=True)
class Phase:
    """From run time `at_s` on, the first `count` devices are connected (the others are not):
    devices join and leave as phases change."""

    at_s: float
    count: int


@dataclass(frozen=True, slots=True)
class AzureTraceConfig:
    """`[devices.azure]` with `devices.arrival = "azure"`: arrivals follow functions of an Azure
    Functions trace (docs/arrival-traces.md). The loader reads `file` (relative to the
    scenario) and keeps only the chosen functions' values over the run in `series`."""

    file: str = ""
    layout: AzureLayout = "2019"
    """"2019": per-minute invocation counts (`HashOwner,HashApp,HashFunction,Trigger,1..1440`);
    "2021": one row per invocation (`app,func,end_timestamp,duration`, seconds)."""
    functions: int = 4
    """How many functions, the busiest first (by invocations in the run's window)."""
    ids: tuple[str, ...] = ()
    """Functions by id (2019: HashFunction, 2021: func) instead of the busiest."""
    mapping: AzureMapping = "round-robin"
    """"round-robin": device i follows function i mod n; "per-tier": the k-th declared tier's
    devices follow function k mod n. Each device follows its function's whole rate x `scale`."""
    minute_s: float = 60.0
    """Run seconds per trace minute (< 60 compresses time: the rate per run second grows by
    60 / minute_s)."""
    start_minute: int = 0
    """The trace minute the run starts at."""
    scale: float = 1.0
    """Multiplies every function's rate (2021: fewer invocations are dropped at random, more
    are copied)."""
    within: WithinMinute = "poisson"
    """2019: how a minute's invocations spread over it: "poisson" (uniform, given the count) or
    "gamma" (gaps of coefficient of variation `cv`)."""
    cv: float = 1.0
    series: tuple[tuple[str, tuple[float, ...]], ...] = ()
    """Filled by the loader: (function id, counts per minute (2019) or invocation start
    seconds (2021)) from `start_minute` over the run."""
    window_minutes: int = 0
    """Filled by the loader: how many trace minutes `series` covers."""

    def __post_init__(self) -> None:
        _check(1 <= self.functions <= 10_000, "devices.azure.functions must be in [1, 10000]")
        _check(len(self.ids) <= 10_000, "devices.azure.ids: at most 10000")
        for fid in self.ids:
            _name(fid, "devices.azure.ids item")
        _in(self.minute_s, 0, 3600, "devices.azure.minute_s", open_low=True)
        _check(0 <= self.start_minute <= 100_000, "devices.azure.start_minute must be in "
                                                  "[0, 100000]")
        _in(self.scale, 0, 1e6, "devices.azure.scale", open_low=True)
        _in(self.cv, 0, 100, "devices.azure.cv", open_low=True)
        _check(self.within in typing.get_args(WithinMinute),
               f"devices.azure.within must be one of {typing.get_args(WithinMinute)}")
        _check(sum(len(v) for _, v in self.series) <= MAX_AZURE_VALUES,
               f"devices.azure: the chosen functions have more than {MAX_AZURE_VALUES} values "
               "in the run's window (choose fewer functions or a shorter run)")
        _check(0 <= self.window_minutes <= 100_000,
               "devices.azure.window_minutes must be in [0, 100000]")
        for fid, values in self.series:
            _name(fid, "devices.azure function id")
            _check(all(math.isfinite(v) and v >= 0 for v in values),
                   f"devices.azure: function {fid} has values that are not finite >= 0")
            if self.layout == "2019":
                per_minute = max(values, default=0.0)
            else:  # invocation start seconds: the busiest minute's count
                counts: dict[int, int] = {}
                for t in values:
                    counts[int(t // 60)] = counts.get(int(t // 60), 0) + 1
                per_minute = float(max(counts.values(), default=0))
            peak = per_minute * self.scale / self.minute_s
            _check(peak <= MAX_RATE_HZ,
                   f"devices.azure: function {fid[:16]}... peaks at {peak:.0f} samples/s per "
                   f"device after scale {self.scale:g} and minute_s {self.minute_s:g}; a "
                   f"device takes at most {MAX_RATE_HZ:g}: lower devices.azure.scale or raise "
                   "minute_s")


MAX_AZURE_VALUES: Final = 40_000
"""Trace values a scenario keeps (they are written into the run's scenario.toml)."""


@dataclass(frozen=True, slots=True)
class DevicesConfig:
    count: int = 40
    """Device processes; with `phases`, the most that are ever connected at once."""
    mix: str = "1:1:1"
    """Ratio of low:mid:high devices (or of the tiers in the order they are declared)."""
    rate_hz: float = 10.0
    """Mean samples per second per device (open loop)."""
    arrival: ArrivalKind = "poisson"
    """constant | poisson | onoff (Poisson bursts and silences) | trace (a rate over time)."""
    burst_on_s: float = 1.0
    """onoff: mean length of a burst (exponential); the burst rate keeps the mean at rate_hz."""
    burst_off_s: float = 3.0
    """onoff: mean length of a silence (exponential)."""
    trace: str | None = None
    """trace: CSV with columns t_s,rate_hz (per device, piecewise constant from each t_s on),
    resolved relative to the scenario file; the loader reads it into `trace_points`."""
    trace_points: tuple[tuple[float, float], ...] = ()
    """trace: the (run time, rate) points, read from `trace` or given inline."""
    trace_scale: float = 1.0
    """trace: multiplies every rate of the trace."""
    phases: tuple[Phase, ...] = ()
    """Devices joining and leaving; empty: all `count` devices for the whole run."""
    reply_timeout_ms: float = 1000.0
    """How long a device waits for the server before its light answer becomes final."""
    report_interval_s: float = 0.5
    """Window of the `report` messages that feed the scheduler."""
    restart_dead: bool = False
    """Restart a device process that dies on its own (a crash, not a planned fault)."""
    restart_delay_s: float = 1.0
    """How long a crashed device stays down before the harness restarts it."""
    cpu_limit: CpuLimit = "pad"
    """How a device is made as slow as its tier: "pad" (the real light model runs at the
    host's speed and is padded up to `compute_ms`) or "cgroup" (each device process runs in a
    cgroup whose CPU quota slows the real model to about `compute_ms`; docs/emulation.md)."""
    azure: AzureTraceConfig | None = None
    """arrival = "azure": which Azure Functions trace, functions and time compression."""

    def __post_init__(self) -> None:
        _finite(self)
        _check(self.cpu_limit in typing.get_args(CpuLimit),
               f"devices.cpu_limit must be one of {typing.get_args(CpuLimit)}")
        _check(0 <= self.count <= MAX_DEVICES,
               f"devices.count must be in [0, {MAX_DEVICES}] (got {self.count})")
        _in(self.restart_delay_s, 0, MAX_DURATION_S, "devices.restart_delay_s")
        _in(self.rate_hz, 0, MAX_RATE_HZ, "devices.rate_hz", open_low=True)
        _check(self.arrival in typing.get_args(ArrivalKind),
               f"devices.arrival must be one of {typing.get_args(ArrivalKind)}")
        _in(self.burst_on_s, 0, MAX_DURATION_S, "devices.burst_on_s", open_low=True)
        _in(self.burst_off_s, 0, MAX_DURATION_S, "devices.burst_off_s")
        _check(self.arrival != "trace" or bool(self.trace_points),
               "devices.arrival = 'trace' needs devices.trace (a CSV of t_s,rate_hz) or "
               "devices.trace_points")
        times = [t for t, _ in self.trace_points]
        _check(times == sorted(times) and (not times or times[0] <= 0)
               and all(r >= 0 for _, r in self.trace_points),
               "trace: t_s must start at 0 and increase, rates must be >= 0")
        _in(self.trace_scale, 0, MAX_RATE_HZ, "devices.trace_scale", open_low=True)
        _check(all(t <= MAX_DURATION_S and r * self.trace_scale <= MAX_RATE_HZ
                   for t, r in self.trace_points),
               f"trace: times must be <= {MAX_DURATION_S:g} s and scaled rates <= "
               f"{MAX_RATE_HZ:g} Hz")
        _check(len(self.trace_points) <= 100_000, "trace: at most 100000 points")
        _check(self.arrival != "azure" or (self.azure is not None and bool(self.azure.series)),
               "devices.arrival = 'azure' needs [devices.azure] with a file (an Azure "
               "Functions trace)")
        times = [p.at_s for p in self.phases]
        _check(all(t >= 0 for t in times) and times == sorted(set(times)),
               "devices.phases must have distinct at_s >= 0 in increasing order")
        _check(all(0 <= p.count <= self.count for p in self.phases),
               f"devices.phases counts must be in [0, devices.count = {self.count}]")
        _in(self.reply_timeout_ms, 0, MAX_MS, "devices.reply_timeout_ms", open_low=True)
        _in(self.report_interval_s, 0, 60, "devices.report_interval_s", open_low=True)


@dataclass(frozen=True, slots=True)
class AcceleratorConfig:
    """What the server's emulated accelerator does with a batch of b samples, on top of the
    profile L(b) = base + per_sample * b (docs/early-exit.md, "The NPUs"):
    "plain" runs any b at L(b); "conventional-npu" runs a network compiled for fixed batch
    sizes, so b is padded up to the smallest compiled size that holds it (larger batches run
    in passes of the largest); "fluid-npu" runs any b without padding (fluid batching) and its
    stackable processing elements keep small batches from idling the array: only
    `fixed_share` of the per-batch base cost remains."""

    kind: AcceleratorKind = "plain"
    batch_shapes: tuple[int, ...] = (8, 32)
    """conventional-npu: the batch sizes the network was compiled for."""
    fixed_share: float = 0.5
    """fluid-npu: the share of the per-batch base cost that stackable PEs leave."""

    def __post_init__(self) -> None:
        _finite(self)
        _check(bool(self.batch_shapes) and all(1 <= b <= 4096 for b in self.batch_shapes)
               and list(self.batch_shapes) == sorted(set(self.batch_shapes)),
               "server.accelerator.batch_shapes must be increasing sizes in [1, 4096]")
        _in(self.fixed_share, 0, 1, "server.accelerator.fixed_share")


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """The autoscaling rule (`server.replicas.AutoscaleRule`): every control interval, enough
    replicas for the server's arrival rate (and backlog) at `utilization` of one replica's
    capacity at the largest batch; up at once, down after `down_after_s`. A policy that
    plans its own replicas (CascadeServe's gears) overrides it."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 8
    utilization: float = 0.7
    down_after_s: float = 5.0
    drain_s: float = 1.0

    def __post_init__(self) -> None:
        _finite(self)
        _check(1 <= self.min_replicas <= self.max_replicas <= 64,
               "server.autoscale needs 1 <= min_replicas <= max_replicas <= 64")
        _in(self.utilization, 0, 1, "server.autoscale.utilization", open_low=True)
        _in(self.down_after_s, 0, 3600, "server.autoscale.down_after_s")
        _in(self.drain_s, 0, 3600, "server.autoscale.drain_s", open_low=True)


@dataclass(frozen=True, slots=True)
class FairnessConfig:
    """How the server keeps one device from taking the service from the others
    (`server.fairness`, docs/security.md "Fair sharing"): each device's requests are admitted
    up to `headroom` times the rate it declared in its hello, with a bucket of `burst_s` of
    that rate; each connection's frames are read at most `max_frames_per_s`."""

    enabled: bool = True
    """False: no request budgets (frames are still paced and the queue still shared)."""
    headroom: float = 2.0
    burst_s: float = 2.0
    min_burst: int = 32
    undeclared_rate_sps: float = 10.0
    """The rate assumed for a device whose hello declares none (`rate_sps` = 0)."""
    max_frames_per_s: float = 2000.0
    """Frames of any kind, invalid ones included, that one connection may send per second
    (a second's burst); past it the server stops reading that socket until it may again."""

    def __post_init__(self) -> None:
        _finite(self)
        _in(self.headroom, 1, 1000, "server.fairness.headroom")
        _in(self.burst_s, 0, 3600, "server.fairness.burst_s", open_low=True)
        _check(1 <= self.min_burst <= 1_000_000, "server.fairness.min_burst must be in "
                                                  "[1, 1000000]")
        _in(self.undeclared_rate_sps, 0, 1e6, "server.fairness.undeclared_rate_sps",
            open_low=True)
        _in(self.max_frames_per_s, 1, 1e6, "server.fairness.max_frames_per_s")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port; the server reports the URL it listens on."""
    heavy_model: str | None = None
    """Heavy model name in the zoo; None takes the zoo's default."""
    heavy_models: tuple[str, ...] = ()
    """Heavy models the server loads and a policy may switch between (e.g. the zoo's
    `heavy_variants`); empty: only `heavy_model`. It starts with `heavy_model`."""
    profiles: dict[str, Any] = field(default_factory=dict)
    """Emulated batch latency per heavy model, `{name = {base_ms = .., per_sample_ms = ..}}`.
    A model without one is scaled from the default's profile by the ratio of the two models'
    measured latency at batch 32 (model cards)."""
    ensemble: tuple[str, ...] = ()
    """Heavy models voting before `heavy_model` (a server tier of a cascade of ensembles): a
    sample whose members agree (share >= `ensemble_theta`) is answered with the majority, the
    others by `heavy_model`. Empty: `heavy_model` answers every sample."""
    ensemble_theta: float = 1.0
    mode: ServerMode = "whole"
    """How an early-exit heavy model (zoo card with `stages`) runs: "whole" (every batch runs
    every stage, no exits: whole-network dynamic batching) or "early-exit" (stage by stage,
    confident samples leave at each exit; `stage_scheduler` picks the next stage batch)."""
    exit_threshold: float = 0.9
    """early-exit: a sample leaves at a stage whose exit's top-1 probability is >= this."""
    target_ms: float = 0.0
    """early-exit: the latency the stage scheduler aims each request at, from its arrival at
    the server (a soft deadline: a request past it still runs to completion); 0: the
    request's own deadline (its device's reply timeout), past which it expires."""
    stage_scheduler: StagePolicyName = "slack"
    """early-exit: "slack" (exit-aware and preemptive: runs only samples that can still be in
    time at an exit they may take; the stage batch letting most samples leave per second,
    unless another batch would miss its slack), "edf" (least slack, blind to exits) or "fcfs"
    (run each batch to completion)."""
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    """How long the first request of a batch may wait for more (Triton semantics)."""
    max_queue_size: int = 512
    """Admission bound; a full queue rejects at once (counted by reason)."""
    admission: AdmissionMode = "bound"
    """"bound" admits while the queue has room; "deadline" also refuses a request that the
    queue ahead of it would make miss its deadline, so its device falls back at once."""
    batch_base_ms: float = 6.0
    batch_per_sample_ms: float = 4.2
    """Emulated batch latency L(b) = base + per_sample * b of the server's accelerator; the
    real model always runs and the batch is padded up to L(b)."""
    pad_compute: bool = True
    accelerator: AcceleratorConfig = field(default_factory=AcceleratorConfig)
    """How the emulated accelerator runs a batch: any size at L(b), or as an NPU."""
    replicas: int = 1
    """Replicas of the emulated accelerator, each running batches from the one queue (as a
    Triton instance group); with `autoscale`, the count it starts with. Cost is replica-
    seconds provisioned (`summary.cost`)."""
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    max_held_mb: float = 128.0
    """Bytes of messages held for devices' emulated uplinks (`hold_ms`), over every connection
    together; past it a sample is rejected (`link_backlog`)."""
    intra_op_threads: int = 1
    control_interval_s: float = 0.5
    """How often the scheduler policy runs."""
    restart_on_exit: bool = False
    """The harness restarts a server process that dies on its own (same port, same token)."""
    slow_client_stall_s: float = 5.0
    """A device socket whose replies have been stuck this long, with more than
    `slow_client_backlog` waiting, is closed instead of buffered without end."""
    slow_client_backlog: int = 1024
    max_connections: int = 4096
    """Connections the server holds at once (lowered to what its open-file limit allows);
    past it a client gets 503 at once."""
    max_connections_per_peer: int = 2048
    """From one address (a testbed's devices all come from 127.0.0.1)."""
    max_pending_connections: int = 512
    """Connections that have not yet sent a whole request (or a device its hello); when full,
    the one waiting longest is closed."""
    header_timeout_s: float = 10.0
    """A connection must send its first request's headers (a device its hello) this soon."""
    power: ServerPowerSpec = field(default_factory=ServerPowerSpec)
    """The accelerator's active and idle power per replica (docs/energy.md)."""

    def __post_init__(self) -> None:
        _finite(self)
        _check(0 <= self.port < 65536, f"server.port out of range (got {self.port})")
        for i, model in enumerate((*((self.heavy_model,) if self.heavy_model else ()),
                                   *self.heavy_models, *self.ensemble, *self.profiles)):
            _name(model, f"server model [{i}]")
        _check(1 <= self.max_batch_size <= 4096, "server.max_batch_size must be in [1, 4096]")
        _check(0 <= self.max_queue_delay_us <= 10_000_000,
               "server.max_queue_delay_us must be in [0, 10000000]")
        _check(self.max_queue_size <= 1_000_000, "server.max_queue_size must be <= 1000000")
        for model, prof in self.profiles.items():
            _check(isinstance(prof, dict) and set(prof) == {"base_ms", "per_sample_ms"}
                   and all(isinstance(v, int | float) and not isinstance(v, bool)
                           and math.isfinite(v) and 0 <= v <= MAX_MS for v in prof.values()),
                   f"server.profiles.{model} must be {{base_ms = .., per_sample_ms = ..}} "
                   f"with numbers in [0, {MAX_MS:g}]")
        _check(self.max_queue_size >= self.max_batch_size,
               f"server.max_queue_size ({self.max_queue_size}) must be >= max_batch_size "
               f"({self.max_batch_size})")
        _in(self.batch_base_ms, 0, MAX_MS, "server.batch_base_ms")
        _in(self.batch_per_sample_ms, 0, MAX_MS, "server.batch_per_sample_ms")
        _check(1 <= self.intra_op_threads <= 256, "server.intra_op_threads must be in [1, 256]")
        _check(not self.ensemble or len(self.ensemble) >= 2,
               "server.ensemble needs at least 2 models")
        _check(0 < self.ensemble_theta <= 1, "server.ensemble_theta must be in (0, 1]")
        _check(0 <= self.exit_threshold <= 1, "server.exit_threshold must be in [0, 1]")
        _in(self.target_ms, 0, MAX_MS, "server.target_ms")
        _check(1 <= self.replicas <= 64, "server.replicas must be in [1, 64]")
        _check(self.mode == "whole" or (self.replicas == 1 and not self.autoscale.enabled),
               "server.replicas and server.autoscale need mode = 'whole' (an early-exit "
               "model runs on one accelerator)")
        _check(not (self.ensemble and self.heavy_models),
               "server.ensemble and server.heavy_models (model switching) do not combine")
        _check(self.mode == "whole" or not self.heavy_models,
               "server.mode = 'early-exit' and server.heavy_models (model switching) do not "
               "combine: the early-exit batcher runs its one staged model throughout")
        _in(self.control_interval_s, 0, 60, "server.control_interval_s", open_low=True)
        _in(self.slow_client_stall_s, 0, 3600, "server.slow_client_stall_s", open_low=True)
        _check(1 <= self.slow_client_backlog <= 1_000_000,
               "server.slow_client_backlog must be in [1, 1000000]")
        _check(1 <= self.max_pending_connections <= self.max_connections <= 1_000_000
               and 1 <= self.max_connections_per_peer <= self.max_connections,
               "server connection limits need 1 <= max_pending_connections, "
               "max_connections_per_peer <= max_connections <= 1000000")
        _in(self.header_timeout_s, 0, 3600, "server.header_timeout_s", open_low=True)
        _in(self.max_held_mb, 0, 1e6, "server.max_held_mb", open_low=True)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault the harness injects during a run (`[[faults]]` in a scenario).

    Targets: the devices named in `devices`, else `count` devices drawn (seeded) from `tier`
    or from all. `every_s` repeats the fault until the run ends, drawing targets anew.
    """

    kind: FaultKind
    at_s: float
    """Run time of the (first) injection, seconds after the devices start."""
    duration_s: float = 0.0
    """How long a link stays cut or lossy."""
    restart_after_s: float | None = None
    """kill_device / kill_server: restart after this long; absent, it stays down."""
    devices: tuple[str, ...] = ()
    tier: str | None = None
    count: int = 1
    loss: float = 0.0
    """packet_loss: probability each message is lost (and resent after the link's RTO)."""
    direction: Literal["both", "up", "down"] = "both"
    signal: Literal["kill", "term"] = "kill"
    """kill_*: SIGKILL (a crash: nothing is flushed) or SIGTERM (a clean stop)."""
    every_s: float | None = None
    node: str | None = None
    """kill_node (cluster runs only): the node whose agent is killed, with its devices."""

    def __post_init__(self) -> None:
        _finite(self)
        _check(self.kind in typing.get_args(FaultKind),
               f"fault kind must be one of {typing.get_args(FaultKind)} (got {self.kind!r})")
        _in(self.at_s, 0, MAX_DURATION_S, "fault at_s")
        _in(self.duration_s, 0, MAX_DURATION_S, "fault duration_s")
        if self.restart_after_s is not None:
            _in(self.restart_after_s, 0, MAX_DURATION_S, "fault restart_after_s")
        _check(1 <= self.count <= MAX_DEVICES, f"fault count must be in [1, {MAX_DEVICES}] "
                                               f"(got {self.count})")
        if self.every_s is not None:
            _in(self.every_s, 0, MAX_DURATION_S, "fault every_s", open_low=True)
        for device in self.devices:
            _name(device, "fault device")
        if self.tier is not None:
            _name(self.tier, "fault tier")
        if self.node is not None:
            _name(self.node, "fault node")
        _check((self.kind == "kill_node") == (self.node is not None),
               "a kill_node fault needs node = \"<name>\" (and only kill_node takes a node)")
        if self.kind in ("cut_link", "packet_loss"):
            _check(self.duration_s > 0, f"{self.kind} needs duration_s > 0")
        if self.kind == "packet_loss":
            _check(0 < self.loss < 1, f"packet_loss needs 0 < loss < 1 (got {self.loss})")


@dataclass(frozen=True, slots=True)
class LinkFault:
    """A device's link is cut (`loss` = 1) or lossy during [start_s, end_s) of run time."""

    start_s: float
    end_s: float
    loss: float
    direction: Literal["both", "up", "down"] = "both"


@dataclass(frozen=True, slots=True)
class IdnNode:
    """A node of an inference delivery network: a server process with a model memory budget,
    an accelerator of its own speed, and a link to its parent (none for the repository)."""

    name: str
    tier: str = "edge"
    """A label: access, edge, regional, cloud."""
    parent: str | None = None
    """The next node towards the repository; None: this node is the repository (cloud), which
    holds every catalog model and serves whatever reaches it."""
    memory_kb: float = 1000.0
    """Budget for loaded models (the cards' file sizes)."""
    speed: float = 1.0
    """Accelerator speed relative to the server profile (0.25: batches take 4x as long)."""
    link_ms: float = 5.0
    """One-way delay of the link to the parent."""
    devices: float = 0.0
    """Share of the scenario's devices attached to this node (access nodes)."""
    trace: tuple[tuple[float, float], ...] = ()
    """Popularity over run time: (t_s, multiplier of devices.rate_hz) for the devices attached
    here, piecewise constant; empty: their rate is constant."""
    link_mbps: float = 0.0
    """Bandwidth of the link to the parent, each way (messages queue for it in order); 0:
    unlimited, only `link_ms` of delay."""

    def __post_init__(self) -> None:
        _name(self.name, "idn node name")
        _check(0 <= self.link_mbps <= 1e6, f"idn node {self.name}: link_mbps in [0, 1e6]")
        _name(self.tier, f"idn node {self.name}: tier")
        if self.parent is not None:
            _name(self.parent, f"idn node {self.name}: parent")
        _finite(self)
        _check(0 <= self.memory_kb <= 1e9 and 0 < self.speed <= 1000
               and 0 <= self.link_ms <= MAX_MS,
               f"idn node {self.name}: memory_kb in [0, 1e9], speed in (0, 1000], link_ms in "
               f"[0, {MAX_MS:g}]")
        _check(0 <= self.devices <= 1e6, f"idn node {self.name}: devices share must be >= 0")
        _check(all(0 <= t <= MAX_DURATION_S and 0 <= m <= 1000 for t, m in self.trace),
               f"idn node {self.name}: trace times in [0, {MAX_DURATION_S:g}] s and "
               "multipliers in [0, 1000]")


@dataclass(frozen=True, slots=True)
class IdnConfig:
    nodes: tuple[IdnNode, ...] = ()
    """Empty: no IDN, one server."""
    catalog: tuple[str, ...] = ()
    """Models nodes may load; empty: the zoo's heavy variants."""
    policy: IdnPolicyName = "idn"
    """idn (online mirror ascent, INFIDA) | greedy-online | greedy-static | cloud-only | coe
    (no allocation: each node answers with its `serve` models by its rule and sends the rest
    up; the repository serves with the catalog: a cascade of ensembles across tiers)."""
    alpha_ms: float = 1000.0
    """Cost of serving = latency (ms) + alpha_ms * (1 - accuracy)."""
    slot_s: float = 2.0
    eta: float = 1.0
    """Mirror-ascent step; gains per kB are scaled by the largest seen so far, so exp(eta) is
    the most a weight can grow in one slot."""
    load_s: float = 0.5
    """A model a node loads serves only after this long (emulated loading time)."""
    edge_serve: tuple[str, ...] = ()
    """policy "coe": the models every node but the repository answers with, a cascade-of-
    ensembles tier; what it does not answer goes to its parent. Empty: all goes up."""
    edge_rule: EdgeRule = "agreement"
    """policy "coe": "agreement" answers when the share of `edge_serve` agreeing is >=
    `edge_theta`; "confidence" (one model) when its top-1 confidence is >= `edge_theta`."""
    edge_theta: float = 1.0

    def __post_init__(self) -> None:
        _finite(self)
        for model in (*self.catalog, *self.edge_serve):
            _name(model, "idn catalog model")
        _check(0 <= self.edge_theta <= 1, "idn.edge_theta must be in [0, 1]")
        _check(self.edge_rule != "agreement" or len(self.edge_serve) != 1,
               "idn.edge_rule 'agreement' needs 2 or more models in edge_serve")
        _check(self.edge_rule != "confidence" or len(self.edge_serve) <= 1,
               "idn.edge_rule 'confidence' takes one model in edge_serve")
        if not self.nodes:
            return
        _check(len(self.nodes) <= 64, "an idn has at most 64 nodes")
        names = [n.name for n in self.nodes]
        _check(len(set(names)) == len(names), "idn node names must be unique")
        roots = [n for n in self.nodes if n.parent is None]
        _check(len(roots) == 1, "an idn needs exactly one node without a parent (the cloud)")
        for n in self.nodes:
            _check(n.parent is None or n.parent in names,
                   f"idn node {n.name}: parent {n.parent!r} is not a node")
        _check(sum(n.devices for n in self.nodes) > 0, "idn: no node has devices attached")
        _check(0 <= self.alpha_ms <= 1e9 and 0 < self.slot_s <= MAX_DURATION_S
               and 0 < self.eta <= 1e3 and 0 <= self.load_s <= MAX_DURATION_S,
               "idn: alpha_ms in [0, 1e9], slot_s > 0, eta in (0, 1000], load_s >= 0")
        for n in self.nodes:  # no cycles: every path reaches the root
            seen, cur = set(), n
            while cur.parent is not None:
                _check(cur.name not in seen, f"idn: the parents of {n.name} form a cycle")
                seen.add(cur.name)
                cur = next(x for x in self.nodes if x.name == cur.parent)

    @property
    def root(self) -> IdnNode:
        return next(n for n in self.nodes if n.parent is None)

    def node(self, name: str) -> IdnNode:
        return next(n for n in self.nodes if n.name == name)

    def depth_ms(self, name: str) -> float:
        """One-way delay from a device at an access node below `name` up to `name`: the links
        of the nodes on the way (an access node's own is to its parent)."""
        below = [n for n in self.nodes if n.parent == name]
        return 0.0 if not below else below[0].link_ms + self.depth_ms(below[0].name)


RAY_LOCAL_MAX_NODES: Final = 16


def check_ray_address(address: str) -> str:
    """`address` if Ray can be asked for it: "auto" (the cluster this host has joined),
    "ray://host:port" (Ray Client), "local:N" (a throwaway cluster of N nodes on this host)
    or "" (no cluster: the local harness)."""
    if address in ("", "auto"):
        return address
    if address.startswith("local:"):
        n = address.removeprefix("local:")
        _check(n.isascii() and n.isdigit() and 1 <= int(n) <= RAY_LOCAL_MAX_NODES,
               f"ray address local:N needs N in [1, {RAY_LOCAL_MAX_NODES}] (got {address!r})")
        return address
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    ok = address.startswith("ray://") and sep == ":" and port.isascii() and port.isdigit() \
        and 0 < int(port) < 65536 and bool(host) and len(address) <= 260 \
        and all(c.isascii() and (c.isalnum() or c in ".-[]:") for c in host)
    _check(ok, "ray address must be auto, local:N or ray://host:port (got "
               f"{address[:60]!r})")
    return address


@dataclass(frozen=True, slots=True)
class ClusterNodes:
    """Which Ray nodes take the devices of some tiers (`[[cluster.nodes]]`)."""

    resource: str
    """Selector: a Ray node resource the nodes have (`ray start --resources='{"boards": 8}'`)."""
    tiers: tuple[str, ...] = ()
    """The tiers whose devices go to those nodes (spread evenly over them)."""

    def __post_init__(self) -> None:
        _name(self.resource, "cluster.nodes resource")
        for tier in self.tiers:
            _name(tier, "cluster.nodes tier")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A run spread over a Ray cluster (`[cluster]`; `--ray` overrides `ray`)."""

    ray: str = ""
    """"" runs on this host alone; else see `check_ray_address`."""
    server_node: str = ""
    """The node of the server: a node name or a node resource; "" is the head node."""
    nodes: tuple[ClusterNodes, ...] = ()
    """Tier selectors; tiers no selector names are spread over every node."""
    idn_nodes: dict[str, str] = field(default_factory=dict)
    """`[cluster.idn_nodes]`: an IDN node's name -> the Ray node (a node name or a node
    resource) its process runs on; one not named goes to the node with the fewest server
    processes."""

    def __post_init__(self) -> None:
        check_ray_address(self.ray)
        if self.server_node:
            _name(self.server_node, "cluster.server_node")
        _check(len(self.nodes) <= 1000, "at most 1000 cluster.nodes")
        _check(isinstance(self.idn_nodes, dict) and len(self.idn_nodes) <= 1000,
               "cluster.idn_nodes must be a table of at most 1000 entries")
        for idn_node, node in self.idn_nodes.items():
            _name(idn_node, "cluster.idn_nodes key")
            _name(node, f"cluster.idn_nodes.{idn_node}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: str = "multitasc"
    params: dict[str, Any] = field(default_factory=dict)
    """Policy-specific knobs, checked by the policy's own config class."""

    def __post_init__(self) -> None:
        try:
            check_policy_name(self.name, "policy name")
        except BadName as exc:
            raise ScenarioError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    name: str = "default"
    duration_s: float = 30.0
    slo_ms: float = 150.0
    seed: int = 0
    zoo: str | None = None
    """Path of a model zoo; None is the embedded one."""
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    tiers: dict[str, TierSpec] = field(default_factory=default_tiers)
    server: ServerConfig = field(default_factory=ServerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    faults: tuple[FaultSpec, ...] = ()
    idn: IdnConfig = field(default_factory=IdnConfig)
    """An inference delivery network of server processes instead of one server."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the processes run: this host (default) or the nodes of a Ray cluster."""
    sweep: dict[str, Any] = field(default_factory=dict)
    """Axes of `testbed sweep` (see testbed.sweep); a single run ignores them."""
    max_fault_fallback: float | None = None
    """Largest share of generated samples that may fall back for a cause that is not load (a
    lost connection, a failed model, an error reply) before the run counts as failed (non-zero
    exit). None: 0.05, or no limit when the scenario plans faults."""

    def __post_init__(self) -> None:
        _name(self.name, "scenario name")
        if self.max_fault_fallback is not None:
            _in(self.max_fault_fallback, 0, 1, "max_fault_fallback")
        _finite(self)
        _in(self.duration_s, 0, MAX_DURATION_S, "duration_s", open_low=True)
        _check(not (self.idn.nodes and self.faults),
               "faults are not supported in an idn run (they target the one server)")
        _in(self.slo_ms, 0, MAX_MS, "slo_ms", open_low=True)
        _check(0 <= self.seed < 2**63, f"seed must be in [0, 2**63) (got {self.seed})")
        _check(bool(self.tiers), "at least one tier is needed")
        _check(len(self.tiers) <= 64, "at most 64 tiers")
        for tier in self.tiers:
            _name(tier, "tier name")
        _check(len(self.faults) <= MAX_FAULTS, f"at most {MAX_FAULTS} faults")
        parse_mix(self.devices.mix, tuple(self.tiers))
        for i, fault in enumerate(self.faults):
            _check(fault.tier is None or fault.tier in self.tiers,
                   f"faults[{i}]: unknown tier {fault.tier!r}")
        for i, sel in enumerate(self.cluster.nodes):
            unknown = sorted(set(sel.tiers) - set(self.tiers))
            _check(not unknown, f"cluster.nodes[{i}]: unknown tiers {unknown}")
        azure = self.devices.azure
        if self.devices.arrival == "azure" and azure is not None:
            _check(self.duration_s <= azure.window_minutes * azure.minute_s + 1e-6,
                   f"devices.azure: the trace was read for {azure.window_minutes} minutes "
                   f"({azure.window_minutes * azure.minute_s:g} s of run); a longer run needs "
                   "the scenario's duration_s raised (the trace is read for it)")
            _check(not any(t.popularity for t in self.tiers.values())
                   and not any(n.trace for n in self.idn.nodes),
                   "devices.arrival = 'azure' and tier popularity or idn node traces do not "
                   "combine: the trace sets every device's rate")
        tasks = sorted({t.task for t in self.tiers.values() if t.task})
        _check(not tasks or bool(self.idn.nodes),
               f"tiers with tasks ({', '.join(tasks)}) need an inference delivery network "
               "([idn]), whose nodes serve each task with its own models")


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device of a run, resolved from the scenario (what a device process is given)."""

    device_id: str
    index: int
    tier: str
    spec: TierSpec
    rate_hz: float
    arrival: ArrivalKind
    burst_on_s: float
    burst_off_s: float
    trace_points: tuple[tuple[float, float], ...]
    """trace: (run time, rate) points, already scaled."""
    seed: int
    slo_ms: float
    duration_s: float
    reply_timeout_ms: float
    report_interval_s: float
    zoo: str | None
    incarnation: int = 0
    """0 for the first process of this device, k for its k-th restart."""
    link_faults: tuple[LinkFault, ...] = ()
    """Cuts and loss on its link, in run time."""
    node: str = ""
    """The IDN access node it sends to ("" outside an IDN: the one server)."""
    cpu_limit: CpuLimit = "pad"
    """`devices.cpu_limit`: "cgroup" runs the light model unpadded (the kernel throttles)."""
    workload: WorkloadTrace | None = None
    """arrival = "azure": the trace function it follows."""


@dataclass(frozen=True, slots=True)
class WorkloadTrace:
    """What one device replays of an Azure Functions trace, in run time from 0, period by
    period (one trace minute = `period_s`)."""

    function: str
    period_s: float
    counts: tuple[float, ...] = ()
    """2019: expected arrivals in each period, already scaled."""
    times: tuple[float, ...] = ()
    """2021: run times of the invocations (not scaled: `scale` thins or copies them)."""
    scale: float = 1.0
    within: WithinMinute = "poisson"
    cv: float = 1.0


def parse_mix(mix: str, tiers: tuple[str, ...]) -> dict[str, float]:
    """'1:1:1' -> {tier: weight}; the n-th number belongs to the n-th tier."""
    try:
        weights = [float(x) for x in mix.split(":")]
    except ValueError:
        raise ScenarioError(f"mix {mix!r} must be numbers separated by ':'") from None
    _check(len(weights) == len(tiers),
           f"mix {mix!r} has {len(weights)} parts but there are {len(tiers)} tiers {tiers}")
    _check(all(math.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0,
           f"mix {mix!r} needs finite non-negative weights with a positive sum")
    return dict(zip(tiers, weights, strict=True))


def assign_tiers(count: int, weights: dict[str, float]) -> list[str]:
    """Split `count` devices by weight (largest remainder), interleaved so that any prefix of
    the devices is as mixed as possible."""
    total = sum(weights.values())
    exact = {t: count * w / total for t, w in weights.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)[
            : count - sum(counts.values())]:
        counts[t] += 1
    order: list[str] = []
    left = dict(counts)
    while len(order) < count:
        for t in weights:
            if left[t] > 0:
                order.append(t)
                left[t] -= 1
    return order


def device_specs(cfg: ScenarioConfig) -> list[DeviceSpec]:
    tiers = assign_tiers(cfg.devices.count, parse_mix(cfg.devices.mix, tuple(cfg.tiers)))
    dev = cfg.devices
    trace = tuple((t, r * dev.trace_scale) for t, r in dev.trace_points)
    specs = [
        DeviceSpec(device_id=f"{tier}-{i:03d}", index=i, tier=tier, spec=cfg.tiers[tier],
                   rate_hz=cfg.tiers[tier].rate_hz or dev.rate_hz, arrival=dev.arrival,
                   burst_on_s=dev.burst_on_s, burst_off_s=dev.burst_off_s,
                   trace_points=trace, seed=cfg.seed, slo_ms=cfg.slo_ms, duration_s=cfg.duration_s,
                   reply_timeout_ms=cfg.devices.reply_timeout_ms,
                   report_interval_s=cfg.devices.report_interval_s, zoo=cfg.zoo,
                   cpu_limit=dev.cpu_limit)
        for i, tier in enumerate(tiers)
    ]
    if dev.arrival == "azure" and dev.azure is not None:
        from cascade_testbed.common.azure_functions import (
            device_workloads,  # pure; imports this module
        )

        specs = [dataclasses.replace(s, workload=w) for s, w in
                 zip(specs, device_workloads(dev.azure, specs, tuple(cfg.tiers)), strict=True)]
    if not cfg.idn.nodes:
        return [_popular(s, s.spec.popularity) for s in specs]
    access = {n.name: n for n in cfg.idn.nodes if n.devices > 0}
    nodes = assign_tiers(len(specs), {n: a.devices for n, a in access.items()})
    out = []
    for spec, name in zip(specs, nodes, strict=True):
        node = access[name]
        # The node's popularity over time and its tier's drive its devices' rates.
        spec = _popular(spec, multiply(node.trace, spec.spec.popularity))
        out.append(dataclasses.replace(spec, node=name))
    return out


def _popular(spec: DeviceSpec, multipliers: tuple[tuple[float, float], ...]) -> DeviceSpec:
    """A device whose rate follows `multipliers` of its own rate over run time."""
    if not multipliers:
        return spec
    return dataclasses.replace(spec, arrival="trace", trace_points=tuple(
        (t, m * spec.rate_hz) for t, m in multipliers))


def multiply(a: tuple[tuple[float, float], ...], b: tuple[tuple[float, float], ...]
             ) -> tuple[tuple[float, float], ...]:
    """The product of two piecewise-constant functions of run time, given as (t, value)
    steps (empty: 1 everywhere; before its first step a function is 1 too)."""
    if not a or not b:
        return a or b
    def at(steps: tuple[tuple[float, float], ...], t: float) -> float:
        value = 1.0
        for start, v in steps:
            if start > t:
                break
            value = v
        return value
    times = sorted({0.0, *(t for t, _ in a), *(t for t, _ in b)})
    return tuple((t, at(a, t) * at(b, t)) for t in times)
