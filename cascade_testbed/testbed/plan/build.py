"""`testbed plan`: from a scenario to a gear plan on disk. The I/O around `testbed.plan.planner`:
validation predictions of the scenario's models, the server's batch profiles (the scenario's
emulated ones, or measured on this host when the server does not pad), the latency the devices
and links take from the SLO, and the largest load to plan for."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from cascade_testbed.common.batch_profiles import (
    BatchProfile,
    heavy_model_names,
    on_accelerator,
    profile_for,
)
from cascade_testbed.common.cascade_math import agreement_levels, cascade_curve, vote
from cascade_testbed.common.config import ScenarioConfig, TierSpec, device_specs, parse_mix
from cascade_testbed.common.gear_plan import GearPlan
from cascade_testbed.common.modelzoo import Zoo, open_session, open_zoo, to_model_input
from cascade_testbed.testbed.plan.planner import (
    PlanInputs,
    ServerCascade,
    TierCurve,
    pareto_front,
    plan_gears,
)
from cascade_testbed.testbed.plan.val_predictions import ValPredictions, val_predictions

THRESHOLD_GRID = np.round(np.arange(0.0, 1.0001, 0.025), 4)
Z95 = 1.645


@dataclass(frozen=True)
class PlanOptions:
    max_rps: int | None = None
    """Largest load level; None: the scenario's peak (all devices at their peak rate) x 1.25."""
    no_cascade: bool = False
    """Only single models: every sample goes to the server (the "no cascade" ablation)."""
    utilization: float = 0.8
    server_cascades: bool = False
    """Also server-side cascades of two heavy models, every sample sent on (with
    `no_cascade`: the paper's setting, where the whole cascade runs on the servers)."""
    min_accuracy: float | None = None
    """An accuracy target: per load, the gear that meets it on the fewest replicas."""
    max_replicas: int = 1
    fixed: bool = False
    """With a target: one cascade (the cheapest that meets it) at every load, only its
    replicas following the load."""


def heavy_models(cfg: ScenarioConfig, zoo: Zoo) -> list[str]:
    return heavy_model_names(cfg.server, zoo)


def tier_weights(cfg: ScenarioConfig) -> dict[str, float]:
    """Each tier's share of the generated samples (its devices times their rate); empty tiers
    out."""
    weights = {t: w * (cfg.tiers[t].rate_hz or cfg.devices.rate_hz)
               for t, w in parse_mix(cfg.devices.mix, tuple(cfg.tiers)).items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items() if w > 0}


def tier_curve(val: ValPredictions, spec: TierSpec, heavy: str, no_cascade: bool) -> TierCurve:
    """Forward rate and accuracy of one tier's light stage in front of `heavy`, for each
    threshold the tier's rule can use."""
    if spec.rule == "agreement":
        votes = vote(np.stack([val.probs[m] for m in spec.members]))
        score, light_ok = votes.agreement, votes.pred == val.labels
        grid = np.array(agreement_levels(len(spec.members)))
    else:
        score, light_ok = val.confidence(spec.model), val.correct(spec.model)
        grid = THRESHOLD_GRID
    if no_cascade:
        if spec.rule != "confidence":
            raise ValueError("planning without a cascade needs confidence tiers: a threshold "
                             "of 1 sends everything only under the confidence rule")
        grid = np.array([1.0])
    fwd, acc = cascade_curve(score, light_ok, val.correct(heavy), grid, spec.rule)
    return TierCurve(grid, fwd, acc)


def server_cascades(val: ValPredictions, heavies: list[str],
                    profiles: dict[str, BatchProfile], batch: int) -> dict[str, ServerCascade]:
    """Every cascade of a cheaper heavy model before a costlier one, on the validation split:
    the share escalated and the accuracy at each threshold of the grid."""
    out = {}
    cost = {h: profiles[h].target_s(batch) for h in heavies}
    for first in heavies:
        for final in heavies:
            if cost[first] >= cost[final]:
                continue
            esc, acc = cascade_curve(val.confidence(first), val.correct(first),
                                     val.correct(final), THRESHOLD_GRID)
            out[f"{first}>{final}"] = ServerCascade(first, final, THRESHOLD_GRID, esc, acc)
    return out


def device_p95_ms(spec: TierSpec) -> float:
    """What a tier's device and links take of the end-to-end latency, at about their p95."""
    light = spec.compute_ms * math.exp(Z95 * spec.compute_jitter)
    jitter = math.hypot(spec.uplink.jitter_ms, spec.downlink.jitter_ms)
    return light + spec.uplink.delay_ms + spec.downlink.delay_ms + Z95 * jitter


def peak_rps(cfg: ScenarioConfig) -> float:
    d = cfg.devices
    if d.arrival == "trace":
        return d.count * max(r for _, r in d.trace_points) * d.trace_scale
    burst = (d.burst_on_s + d.burst_off_s) / d.burst_on_s if d.arrival == "onoff" else 1.0
    return sum(s.rate_hz for s in device_specs(cfg)) * burst


def measured_profile(zoo: Zoo, model: str, sizes: tuple[int, ...] = (1, 8, 32)) -> BatchProfile:
    """Fit L(b) = base + per_sample * b to this host's median batch latency (1 thread)."""
    session = open_session(zoo.model_path(model), 1, 1)
    name = session.get_inputs()[0].name
    x = to_model_input(zoo.dataset("val").x)
    times = []
    for b in sizes:
        batch = x[:b]
        runs = []
        for _ in range(30):
            t = time.perf_counter()
            session.run(None, {name: batch})
            runs.append(time.perf_counter() - t)
        times.append(float(np.median(runs)) * 1e3)
    per_sample, base = np.polyfit(np.array(sizes, float), np.array(times), 1)
    return BatchProfile(max(float(base), 0.0), max(float(per_sample), 1e-6))


def build_plan(cfg: ScenarioConfig, options: PlanOptions = PlanOptions()) -> GearPlan:
    zoo = open_zoo(cfg.zoo)
    heavies = heavy_models(cfg, zoo)
    weights = tier_weights(cfg)
    members = [m for t in weights for m in cfg.tiers[t].members]
    val = val_predictions(zoo, [*members, *heavies])
    base = BatchProfile(cfg.server.batch_base_ms, cfg.server.batch_per_sample_ms)
    profiles = {h: on_accelerator(profile_for(zoo, h, heavies[0], base, cfg.server.profiles),
                                  cfg.server.accelerator)
                if cfg.server.pad_compute else measured_profile(zoo, h) for h in heavies}
    budget = cfg.slo_ms - max(device_p95_ms(cfg.tiers[t]) for t in weights)
    max_rps = options.max_rps if options.max_rps is not None \
        else math.ceil(peak_rps(cfg) * 1.25)
    inputs = PlanInputs(
        weights=weights,
        curves={h: {t: tier_curve(val, cfg.tiers[t], h, options.no_cascade) for t in weights}
                for h in heavies},
        profiles=profiles, max_batch_size=cfg.server.max_batch_size,
        max_queue_delay_s=cfg.server.max_queue_delay_us / 1e6, server_budget_ms=budget,
        max_rps=max_rps, utilization=options.utilization,
        server_cascades=server_cascades(val, heavies, profiles, cfg.server.max_batch_size)
        if options.server_cascades else {},
        max_replicas=options.max_replicas, min_accuracy=options.min_accuracy,
        fixed=options.fixed)
    t = time.perf_counter()
    front = pareto_front(inputs)
    plan = plan_gears(inputs, front)
    return GearPlan(gears=plan.gears, table=plan.table, slo_ms=cfg.slo_ms,
                    server_budget_ms=budget, meta={
                        "scenario": cfg.name, "weights": weights, "max_rps": max_rps,
                        "no_cascade": options.no_cascade,
                        "server_cascades": options.server_cascades,
                        "min_accuracy": options.min_accuracy,
                        "max_replicas": options.max_replicas, "fixed": options.fixed,
                        "pareto_points": len(front),
                        "profiles": {h: [p.base_ms, p.per_sample_ms]
                                     for h, p in profiles.items()},
                        "profiled": "emulated" if cfg.server.pad_compute else "measured",
                        "planning_s": round(time.perf_counter() - t, 2)})
