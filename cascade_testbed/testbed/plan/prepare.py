"""Offline steps a scenario asks for before its run starts, done by the harness so a run
folder holds everything it used: the gear plan of a `gears` policy that names none, and the
agreement threshold of each ensemble tier that sets none (calibrated on the validation split)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from cascade_testbed.common.cascade_math import calibrate_theta, vote
from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.gear_plan import write_plan
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.testbed.plan.build import PlanOptions, build_plan, heavy_models, peak_rps
from cascade_testbed.testbed.plan.val_predictions import val_predictions

PLAN_FILE = "gear_plan.json"


def calibrate_tiers(cfg: ScenarioConfig) -> ScenarioConfig:
    """Agreement tiers without a threshold get the calibrated theta."""
    todo = [t for t, s in cfg.tiers.items() if s.rule == "agreement" and s.threshold is None]
    if not todo:
        return cfg
    zoo = open_zoo(cfg.zoo)
    heavy = heavy_models(cfg, zoo)[0]
    val = val_predictions(zoo, [*(m for t in todo for m in cfg.tiers[t].members), heavy])
    tiers = dict(cfg.tiers)
    for t in todo:
        members = cfg.tiers[t].members
        votes = vote(np.stack([val.probs[m] for m in members]))
        theta = calibrate_theta(votes.agreement, votes.pred == val.labels, val.correct(heavy),
                                len(members))
        tiers[t] = dataclasses.replace(cfg.tiers[t], threshold=round(theta, 6))
    return dataclasses.replace(cfg, tiers=tiers)


def plan_if_needed(cfg: ScenarioConfig, run_dir: Path) -> ScenarioConfig:
    """A `gears` run without `params.plan` plans for its own scenario into the run folder."""
    params = dict(cfg.policy.params)
    if cfg.policy.name != "gears" or params.get("plan"):
        return cfg
    pin = float(params.get("pin_load", -1.0))
    peak = math.ceil(peak_rps(cfg) * 1.25)
    target = float(params.pop("min_accuracy", -1.0))
    options = PlanOptions(no_cascade=bool(params.pop("no_cascade", False)),
                          max_rps=max(peak, math.ceil(pin)),  # a pinned load must be planned
                          utilization=float(params.pop("utilization", 0.8)),
                          server_cascades=bool(params.pop("server_cascades", False)),
                          min_accuracy=target if target >= 0 else None,
                          max_replicas=int(params.pop("max_replicas", 1)),
                          fixed=bool(params.pop("fixed", False)))
    path = write_plan(build_plan(cfg, options), run_dir / PLAN_FILE)
    params["plan"] = str(path.resolve())
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, params=params))


def prepare(cfg: ScenarioConfig, run_dir: Path) -> ScenarioConfig:
    return plan_if_needed(calibrate_tiers(cfg), run_dir)
