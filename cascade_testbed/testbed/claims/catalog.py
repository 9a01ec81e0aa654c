"""The papers' headline claims: what each compares, how it is measured, the paper's number,
the seeds it needs and the condition under which its comparison is valid.

A claim names a scenario of `scenarios/claims/` whose `[sweep]` holds its arms as named
variants (and maybe more axes, e.g. device counts); the runner runs every point of it at each
seed. A claim's metric reads one arm's summaries at one seed (keyed by the point's labels
other than the variant, "" when there are none) and returns a number; the effect per seed is
the method's number against the baseline's (or against a fixed reference), oriented as the
paper states it. Tuned parameters of an arm come from `scenarios/claims/tuning/chosen.toml`
(`testbed.claims.tuning`), never from the claim scenario itself.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.scenario_file import SHIPPED_SCENARIOS
from cascade_testbed.testbed.claims.stats import Direction, Kind, null_value

SCENARIOS = SHIPPED_SCENARIOS / "claims"
"""The claim scenarios, and their tuning in `tuning/`."""
Summary = Mapping[str, Any]
Metric = Callable[[Mapping[str, Summary]], float]
Check = Callable[[Mapping[str, Summary], Mapping[str, Summary]], str | None]
"""(method's summaries, baseline's summaries) at one seed -> why the comparison is not valid
there (e.g. the arms are not at equal accuracy), or None."""
Compare = Callable[[Mapping[str, Mapping[str, Summary]]], float]
"""Every arm's summaries at one seed (arm -> point -> summary) -> the claim's per-seed value,
for a claim that weighs the method against several baselines at once."""


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    """What the paper claims, in one line."""
    paper: float | None
    """The paper's number in this claim's unit (its conservative end); None: no number."""
    paper_text: str
    unit: str
    """pp (percentage points of a rate), pt (points of accuracy), x (a ratio), %."""
    kind: Kind
    direction: Direction
    """The side of the null the paper claims the effect lies on."""
    scenario: str
    """File name in scenarios/claims/."""
    method: str
    """The method's variant name in the scenario's [sweep]."""
    baseline: str | None
    """The baseline's variant name; None when the method is held against `reference`."""
    metric: Metric
    reference: float = 0.0
    scale: float = 1.0
    """Differences are multiplied by it (100: fractions to pp/pt)."""
    invert: bool = False
    """For ratios: baseline / method (a cost or a latency "x times lower")."""
    null: float | None = None
    """The value the interval must exclude, in the claim's unit: None for "no effect" (0 or
    1); a non-inferiority margin such as -1.0 (pt) for "not more than 1 pt worse"."""
    check: Check | None = None
    """A condition the paper's comparison needs at every seed (equal accuracy, the SLO met);
    a seed that fails it makes the claim not hold, with the reason."""
    no_check: str = ""
    """Why the claim needs no `check` (every claim has one or the other)."""
    seeds: int = 5
    """Seeds 1..seeds of a full run, fixed before it from the claim's per-seed effects on the
    tuning seeds (`testbed claims --tune` prints the power calculation; docs/claims.md): the
    seeds for 80 % power at the pilot's effect and spread, at least 5; where the pilot shows no
    effect on the paper's side, the most this host's budget allows, 10. Claims that share a
    scenario's runs share its count. `--seeds` overrides it for exploration only."""
    points: tuple[str, ...] | None = None
    """The scenario's points (labels other than the arm) this claim reads; None: all. Points
    no claim reads are not run."""
    secondary: tuple[tuple[str, Metric], ...] = ()
    """Figures reported beside the verdict (per arm, and their paired difference), not
    judged."""
    paper_claim: bool = True
    """False for a question of ours reported beside the papers' claims (an ablation)."""
    compare: Compare | None = None
    """Instead of `metric`: the per-seed value from every arm at once (the method and
    `baselines`), held against `reference`; e.g. the median over points of the saving against
    the cheapest baseline."""
    baselines: tuple[str, ...] = ()
    """The arms `compare` reads besides the method."""
    note: str = ""

    def effect_inputs(self, method: float, baseline: float | None) -> tuple[float, float]:
        """(numerator or minuend, denominator or subtrahend) as `stats.paired_effects` wants."""
        other = self.reference if baseline is None else baseline
        return (other, method) if self.invert else (method, other)

    @property
    def null_value(self) -> float:
        return null_value(self.kind, self.null)

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm whose runs the claim reads."""
        return (self.method, *((self.baseline,) if self.baseline else ()), *self.baselines)


def field_at(name: str, point: str = "") -> Metric:
    """A summary field (dotted path) at one point of the arm."""
    def metric(arm: Mapping[str, Summary]) -> float:
        return get(arm[point], name)
    return metric


def worst(name: str) -> Metric:
    """The lowest value of a summary field over every point of the arm."""
    def metric(arm: Mapping[str, Summary]) -> float:
        return min(get(s, name) for s in arm.values())
    return metric


def tail_slo(arm: Mapping[str, Summary]) -> float:
    """Tail-latency SLO satisfaction: the share of devices whose p95 latency meets the SLO
    (each device a stream with a "p95 <= SLO" target)."""
    summary = _one(arm)
    devices = summary["per_device"]
    slo = float(summary["slo_ms"])
    met = sum(d["latency_ms"]["p95"] is not None and float(d["latency_ms"]["p95"]) <= slo
              for d in devices)
    return met / len(devices)


def answered_by_share(model: str) -> Metric:
    """The share of generated samples that the server model `model` finally answered."""
    def metric(arm: Mapping[str, Summary]) -> float:
        s = _one(arm)
        return float(s["answered_by"].get(model, 0)) / float(s["samples"]["generated"])
    return metric


def wan_bytes_per_sample(arm: Mapping[str, Summary]) -> float:
    """Bytes that crossed the links between the inference delivery network's nodes (both
    directions; in a two-node tree the edge-to-cloud link) per generated sample."""
    s = _one(arm)
    nodes = (s.get("server") or {}).get("idn_nodes") or {}
    total = 0
    for node in nodes.values():
        link = ((node or {}).get("idn") or {}).get("link") or {}
        total += int(link.get("bytes_up", 0)) + int(link.get("bytes_down", 0))
    return total / float(s["samples"]["generated"])


def meets_targets(s: Summary) -> bool:
    """The run kept its p95 within the SLO and its accuracy at or above its accuracy target
    (the policy's `min_accuracy`; none: any)."""
    target = float((s.get("policy_params") or {}).get("min_accuracy", -1.0))
    p95 = s["latency_ms"]["p95"]
    return p95 is not None and float(p95) <= float(s["slo_ms"]) \
        and float(s["accuracy"]) >= target


def provisioned_cost(s: Summary) -> float:
    """Replica-seconds provisioned per 1,000 samples (`summary.cost`)."""
    return float(s["cost"]["per_1000_samples"])


def cost_meeting_targets(arm: Mapping[str, Summary]) -> float:
    """Tuning objective: the mean provisioned cost over the arm's points, infinite where it
    misses its targets (a cheaper system that misses them has not done the job)."""
    return sum(provisioned_cost(s) if meets_targets(s) else math.inf
               for s in arm.values()) / len(arm)


def saving_at(method: str, baselines: tuple[str, ...], point: str
              ) -> Callable[[Mapping[str, Mapping[str, Summary]]], float | None]:
    """At one point: the cheapest baseline that meets its targets over the method's cost;
    infinite if none does, 0 if only the method misses them, None if every system misses
    them (the point says nothing)."""
    def saving(arms: Mapping[str, Mapping[str, Summary]]) -> float | None:
        m = arms[method][point]
        costs = [provisioned_cost(arms[b][point]) for b in baselines
                 if meets_targets(arms[b][point])]
        if not meets_targets(m):
            return 0.0 if costs else None
        return min(costs) / provisioned_cost(m) if costs else math.inf
    return saving


def median_saving(method: str, baselines: tuple[str, ...]) -> Compare:
    """The median over the space's points of `saving_at`."""
    def compare(arms: Mapping[str, Mapping[str, Summary]]) -> float:
        values = [v for point in arms[method]
                  if (v := saving_at(method, baselines, point)(arms)) is not None]
        if not values:
            raise ValueError("no system met its targets at any point")
        return statistics.median(values)
    return compare


def saving_point(method: str, baselines: tuple[str, ...], point: str) -> Compare:
    """`saving_at` as a reported figure (NaN where it says nothing)."""
    def compare(arms: Mapping[str, Mapping[str, Summary]]) -> float:
        if point not in arms[method]:  # a quick run of fewer points
            return math.nan
        value = saving_at(method, baselines, point)(arms)
        return math.nan if value is None else value
    return compare


def _one(arm: Mapping[str, Summary]) -> Summary:
    """The arm's only point (a claim on a scenario without other axes)."""
    if len(arm) != 1:
        raise KeyError(f"the metric reads one point, the arm has {sorted(arm)}")
    return next(iter(arm.values()))


def equal_accuracy(tolerance: float, slo: bool = False, clean: bool = False) -> Check:
    """The method is within `tolerance` of the baseline's accuracy; with `slo`, both arms' p95
    meet the SLO; with `clean`, no sample fell back or was rejected in either arm."""
    def check(method: Mapping[str, Summary], baseline: Mapping[str, Summary]) -> str | None:
        for point in method:
            m, b = method[point], baseline[point]
            at = f" at {point}" if point else ""
            if float(m["accuracy"]) < float(b["accuracy"]) - tolerance:
                return (f"accuracy {float(m['accuracy']):.4f}{at} is more than "
                        f"{tolerance:.3f} below the baseline's {float(b['accuracy']):.4f}")
            for name, s in (("method", m), ("baseline", b)):
                if slo and float(s["latency_ms"]["p95"]) > float(s["slo_ms"]):
                    return (f"the {name}'s p95 {float(s['latency_ms']['p95']):.0f} ms{at} "
                            "misses the SLO")
                if clean and s["samples"]["fallback"] + s["samples"]["rejected"]:
                    return f"the {name} had fallbacks or rejections{at}"
        return None
    return check


def equal_slo(tolerance: float) -> Check:
    """The method's SLO satisfaction is not below the baseline's by more than `tolerance` (a
    fraction) at any point: an accuracy gain is not bought with late answers."""
    def check(method: Mapping[str, Summary], baseline: Mapping[str, Summary]) -> str | None:
        for point in method:
            m = float(method[point]["slo_satisfaction"])
            b = float(baseline[point]["slo_satisfaction"])
            if m < b - tolerance:
                at = f" at {point}" if point else ""
                return (f"SLO satisfaction {m:.4f}{at} is more than {tolerance:.3f} below the "
                        f"baseline's {b:.4f}")
        return None
    return check


def to_completion(method: Mapping[str, Summary], baseline: Mapping[str, Summary]
                  ) -> str | None:
    """Every sample of both arms was answered by the server: no reply timeout (nor a
    rejection) cut a latency short, so the means are latencies to completion."""
    for name, arm in (("method", method), ("baseline", baseline)):
        for point, s in arm.items():
            cut = int(s["samples"]["fallback"]) + int(s["samples"]["rejected"])
            if cut:
                at = f" at {point}" if point else ""
                return f"the {name} had {cut} samples timed out or rejected{at}"
    return None


def same_reply_timeout(method: Mapping[str, Summary],
                       baseline: Mapping[str, Summary]) -> str | None:
    """Both arms give an answer at the same reply timeout (the same answer-by design)."""
    for point in method:
        m = method[point].get("reply_timeout_ms")
        b = baseline[point].get("reply_timeout_ms")
        if m is None or m != b:
            return f"the arms' reply timeouts differ or are not recorded ({m} vs {b} ms)"
    return None


def both(*checks: Check) -> Check:
    """Every check must pass; the first failure is the reason."""
    def check(method: Mapping[str, Summary], baseline: Mapping[str, Summary]) -> str | None:
        return next((why for c in checks if (why := c(method, baseline))), None)
    return check


def get(summary: Summary, path: str) -> float:
    value: Any = summary
    for key in path.split("."):
        value = value[key]
    return float(value)


OBJECTIVES: dict[str, Metric] = {
    "cost_meeting_targets": cost_meeting_targets,
    "tail_slo": tail_slo,
    "cloud_share": answered_by_share("heavy-cnn-xl"),
    "wan_bytes_per_sample": wan_bytes_per_sample,
}
"""Tuning objectives and requirements by name, besides summary fields (dotted paths)."""


def metric_named(name: str) -> Metric:
    """An objective of a tuning file: a name of `OBJECTIVES`, or a summary field read at every
    point and averaged (a tuning sweep usually runs one point)."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]

    def metric(arm: Mapping[str, Summary]) -> float:
        return sum(get(s, name) for s in arm.values()) / len(arm)
    return metric


_CS_BASELINES = ("single", "ms-plus", "static-cascade")
_CS_POINTS = tuple(f"slo_ms={slo},accuracy_target={acc}" for slo in ("slo100", "slo200")
                   for acc in ("acc935", "acc945", "acc953"))

TARGET = 0.95
"""The SLO-satisfaction target of the MultiTASC policies (their `target` default)."""

_SUSTAINED_WHY = ("SLO satisfaction is the paper's own measure; what the gain costs in "
                  "accuracy is the next claim, `multitasc-accuracy-sustained`")

CLAIMS: tuple[Claim, ...] = (
    Claim("multitasc-vs-static",
          "MultiTASC beats static-threshold cascades on SLO satisfaction, heterogeneous "
          "fleet of 40 devices", 20.0, "+20-25 pp", "pp", "difference", "higher",
          "multitasc-40.toml", "multitasc", "static", field_at("slo_satisfaction"),
          scale=100.0, no_check=_SUSTAINED_WHY, seeds=10),
    Claim("multitasc-accuracy-sustained",
          "...while sustaining high accuracy: MultiTASC's accuracy is not more than 1 pt below "
          "the static cascade's (non-inferiority), both arms answering at the same reply "
          "timeout", None, "sustains high accuracy", "pt", "difference", "higher",
          "multitasc-40.toml", "multitasc", "static", field_at("accuracy"), scale=100.0,
          null=-1.0, check=same_reply_timeout, seeds=10,
          secondary=(("accuracy_at_slo", field_at("accuracy_at_slo")),)),
    Claim("multitasc-vs-tuned-static",
          "...and against a static cascade tuned to this very load (one threshold for all "
          "devices; accuracy counting only answers given by the SLO)", None, "(not claimed)",
          "pt", "difference", "higher", "multitasc-40.toml", "multitasc", "static-tuned",
          field_at("accuracy_at_slo"), scale=100.0, paper_claim=False, seeds=10,
          no_check="accuracy at the SLO counts a late answer as a wrong one, so neither arm "
                   "can buy it with latency; both arms share the fleet and reply timeout"),
    Claim("multitasc-heterogeneity",
          "MultiTASC's gain comes from considering device heterogeneity: against MultiTASC "
          "with its heterogeneity awareness off (same control law, every device alike), at "
          "equal SLO satisfaction", None, "its thesis", "pt", "difference", "higher",
          "multitasc-heterogeneity.toml", "multitasc", "multitasc-uniform",
          field_at("accuracy"), scale=100.0, check=equal_slo(0.005), seeds=10,
          secondary=(("accuracy_at_slo", field_at("accuracy_at_slo")),
                     ("slo_satisfaction", field_at("slo_satisfaction")))),
    Claim("multitasc-pp-100-devices",
          "MultiTASC++ keeps its target SLO satisfaction from 40 to 100 devices (worst point "
          "minus the target)", 0.0, "at or above target up to 100 devices", "pp",
          "difference", "higher", "multitasc-pp-100-devices.toml", "multitasc-pp", None,
          worst("slo_satisfaction"), reference=TARGET, scale=100.0, seeds=5,
          no_check="held against a fixed target, not another arm; its accuracy is reported "
                   "beside it", secondary=(("accuracy", worst("accuracy")),)),
    Claim("multitasc-pp-vs-multitasc-100",
          "MultiTASC++ vs MultiTASC at 100 devices (SLO satisfaction)", None,
          "consistently maintains the target", "pp", "difference", "higher",
          "multitasc-pp-100-devices.toml", "multitasc-pp", "multitasc",
          field_at("slo_satisfaction", "devices=100"), scale=100.0, points=("devices=100",),
          check=equal_accuracy(0.01), seeds=5,
          secondary=(("accuracy", field_at("accuracy", "devices=100")),)),
    Claim("multitasc-pp-changing-load",
          "MultiTASC++ vs MultiTASC under surges and devices joining and leaving (SLO "
          "satisfaction)", None, "continuous adaptation keeps the target", "pp",
          "difference", "higher", "multitasc-pp-changing-load.toml", "multitasc-pp",
          "multitasc", field_at("slo_satisfaction"), scale=100.0, check=equal_accuracy(0.01),
          seeds=10),
    Claim("multitasc-pp-changing-load-accuracy",
          "...with the highest available accuracy (same runs, accuracy)", None,
          "highest available accuracy", "pt", "difference", "higher",
          "multitasc-pp-changing-load.toml", "multitasc-pp", "multitasc",
          field_at("accuracy"), scale=100.0, check=equal_slo(0.005), seeds=10),
    Claim("multitasc-pp-changing-load-no-switching",
          "MultiTASC++'s continuous adaptation alone (its heavy-model switching off, the base "
          "model throughout as MultiTASC) vs MultiTASC under surges and devices joining and "
          "leaving (SLO satisfaction)", None, "continuous adaptation keeps the target", "pp",
          "difference", "higher", "multitasc-pp-changing-load.toml",
          "multitasc-pp-no-switching", "multitasc", field_at("slo_satisfaction"), scale=100.0,
          check=equal_accuracy(0.01), seeds=10,
          secondary=(("accuracy", field_at("accuracy")),)),
    Claim("cascadeserve-cost-space",
          "CascadeServe saves cost across the latency-accuracy space: per point (3 accuracy "
          "targets x 2 SLOs, a load trace with sudden changes), the cheapest baseline that "
          "meets the targets (single model, MS+, static cascade) over CascadeServe's "
          "provisioned replica-seconds; the median over the points", 2.0, "2-3x", "x",
          "ratio", "higher", "cascadeserve-cost-space.toml", "cascadeserve", None,
          field_at("cost.per_1000_samples"), reference=1.0,
          compare=median_saving("cascadeserve", _CS_BASELINES), baselines=_CS_BASELINES,
          no_check="a point where a system misses its targets counts against it (the "
                   "baseline is left out, CascadeServe's saving there is 0), one where all "
                   "miss says nothing and is left out", seeds=5,
          secondary=tuple((f"saving at {p}", saving_point("cascadeserve", _CS_BASELINES, p))
                          for p in _CS_POINTS)),
    Claim("coe-edge-cloud-bytes",
          "A cascade of ensembles at the edge (answering where its members agree) sends far "
          "fewer bytes over the edge-to-cloud link than sending everything to the cloud, "
          "without sacrificing accuracy", 14.0, "14x", "x", "ratio", "higher",
          "coe-edge-cloud.toml", "coe", "cloud-only", wan_bytes_per_sample, invert=True,
          check=equal_accuracy(0.005), seeds=10,
          secondary=(("latency_ms.mean", field_at("latency_ms.mean")),
                     ("accuracy", field_at("accuracy")))),
    Claim("coe-edge-cloud-latency",
          "...and lower mean end-to-end latency (same runs)", 14.0, "14x", "x", "ratio",
          "higher", "coe-edge-cloud.toml", "coe", "cloud-only", field_at("latency_ms.mean"),
          invert=True, check=equal_accuracy(0.005), seeds=10),
    Claim("coe-vs-confidence-cascade-bytes",
          "Ablation: the cascade of ensembles against a confidence cascade of one of the same "
          "edge models, threshold tuned (bytes over the edge-to-cloud link)", None,
          "(ablation)", "x", "ratio", "higher", "coe-edge-cloud.toml", "coe",
          "confidence-cascade", wan_bytes_per_sample, invert=True,
          check=equal_accuracy(0.005), seeds=10, paper_claim=False),
    Claim("infida-vs-greedy-multitask",
          "INFIDA's allocation beats greedy heuristics of similar complexity in a realistic "
          "setting: three tasks of three model variants each, four tiers of nodes, task "
          "popularity shifting over time (time-averaged cost after a 5 s warm-up, "
          "greedy / INFIDA)", None, "improves over greedy heuristics", "x", "ratio", "higher",
          "infida-vs-greedy-multitask.toml", "infida", "greedy",
          field_at("idn.mean_cost_steady_ms"), invert=True, seeds=5,
          no_check="the cost already weighs latency and inaccuracy (alpha); both arms serve "
                   "the same requests on the same tree"),
    Claim("infida-vs-greedy-multitask-adversarial",
          "...and under an adversarial pattern (the requested task changes every slot)", None,
          "(the regret guarantee)", "x", "ratio", "higher",
          "infida-vs-greedy-multitask-adversarial.toml", "infida", "greedy",
          field_at("idn.mean_cost_steady_ms"), invert=True, seeds=10,
          no_check="as infida-vs-greedy-multitask"),
    Claim("fluid-batching-system-mean",
          "Fluid batching's system (exit-aware preemptive scheduler on an NPU with fluid "
          "batching and stackable PEs) lowers mean latency against a state-of-the-art "
          "streaming system (run-to-completion batching of the whole network on a "
          "conventional NPU), latency to completion", 1.97, "1.97x", "x", "ratio", "higher",
          "fluid-batching-system.toml", "fluid-system", "streaming-baseline",
          field_at("latency_ms.mean"), invert=True, check=to_completion, seeds=10,
          secondary=(("accuracy", field_at("accuracy")),)),
    Claim("fluid-batching-system-tail-slo",
          "...and raises tail-latency SLO satisfaction (devices whose p95 meets the SLO)",
          6.7, "6.7x", "x", "ratio", "higher", "fluid-batching-system.toml", "fluid-system",
          "streaming-baseline", tail_slo, check=to_completion, seeds=10),
    Claim("fluid-batching-scheduler-alone-mean",
          "Ablation: the exit-aware scheduler alone (on the conventional NPU) against the same "
          "baseline (mean latency)", None, "(ablation)", "x", "ratio", "higher",
          "fluid-batching-system.toml", "scheduler-alone", "streaming-baseline",
          field_at("latency_ms.mean"), invert=True, check=to_completion, seeds=10,
          paper_claim=False),
    Claim("fluid-batching-hardware-alone-mean",
          "Ablation: the fluid NPU alone (run to completion) against the same baseline (mean "
          "latency)", None, "(ablation)", "x", "ratio", "higher",
          "fluid-batching-system.toml", "hardware-alone", "streaming-baseline",
          field_at("latency_ms.mean"), invert=True, check=to_completion, seeds=10,
          paper_claim=False),
    Claim("fluid-batching-exit-aware",
          "Ablation: an exit-aware preemptive scheduler against an exit-blind one on the same "
          "early-exit model and accelerator, answers due at the reply timeout (mean latency)",
          None, "(ablation)", "x", "ratio", "higher",
          "fluid-batching-exit-aware.toml", "exit-aware", "exit-blind",
          field_at("latency_ms.mean"), invert=True, check=equal_accuracy(0.005), seeds=10,
          paper_claim=False),
    Claim("fluid-batching-exit-aware-tail-slo",
          "Ablation: ...and tail-latency SLO satisfaction (devices whose p95 meets the SLO)",
          None, "(ablation)", "x", "ratio", "higher", "fluid-batching-exit-aware.toml",
          "exit-aware", "exit-blind", tail_slo, check=equal_accuracy(0.005), seeds=10,
          paper_claim=False),
)
"""Every claim `testbed claims` runs, in the order of its table."""

QUICK: dict[str, dict[str, Any]] = {
    "multitasc-40.toml": {"duration_s": 12.0},
    "multitasc-heterogeneity.toml": {"duration_s": 12.0},
    "multitasc-pp-100-devices.toml": {"duration_s": 20.0, "points": ("devices=100",)},
    "multitasc-pp-changing-load.toml": {"time_scale": 0.6},
    "fluid-batching-system.toml": {"duration_s": 12.0},
    "fluid-batching-exit-aware.toml": {"duration_s": 12.0},
    "infida-vs-greedy-multitask.toml": {"duration_s": 20.0},
    "infida-vs-greedy-multitask-adversarial.toml": {"duration_s": 20.0},
    "coe-edge-cloud.toml": {"duration_s": 12.0},
    "cascadeserve-cost-space.toml": {
        "duration_s": 12.0, "points": ("slo_ms=slo100,accuracy_target=acc945",)},
}
"""Scenario fields replaced in `--quick` mode, per scenario (shorter runs, same design):
`points` keeps only those points of the scenario's other axes, `time_scale` shortens every
time in it (`runner.time_scaled`)."""
QUICK_SEEDS = 3
"""Seeds of a quick run: a smoke test of every design, not a result."""


@dataclass
class Catalog:
    claims: list[Claim] = field(default_factory=lambda: list(CLAIMS))
    quick: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(QUICK))
    scenarios: Path = field(default_factory=lambda: SCENARIOS)

    def select(self, ids: list[str] | None) -> list[Claim]:
        if not ids:
            return list(self.claims)
        known = {c.id: c for c in self.claims}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise KeyError(f"unknown claims {unknown}; known: {sorted(known)}")
        return [known[i] for i in ids]
