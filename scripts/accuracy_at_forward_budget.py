"""The most accurate per-tier thresholds for a given share of samples sent to the server.

Whatever a scheduler does, a cascade that may forward at most a share f of its samples
cannot be more accurate than this: every threshold combination of the scenario's tiers is
scored on the zoo's split (the planner's Pareto front) and the best within f is printed. Used
in docs/reproduction.md to show how much accuracy the server's capacity leaves on the table.

    .venv/bin/python scripts/accuracy_at_forward_budget.py \
        scenarios/paper/slo-vs-devices-heterogeneous.toml 0.30 0.41 0.556
"""

from __future__ import annotations

import argparse
import json

from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.testbed.plan.build import heavy_models, tier_curve, tier_weights
from cascade_testbed.testbed.plan.planner import PlanInputs, pareto_front
from cascade_testbed.testbed.plan.val_predictions import val_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("budgets", nargs="+", type=float, help="shares sent, e.g. 0.41")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()
    cfg = load_scenario(args.scenario)
    zoo = open_zoo(cfg.zoo)
    heavy = heavy_models(cfg, zoo)[0]
    weights = tier_weights(cfg)
    val = val_predictions(zoo, [*(m for t in weights for m in cfg.tiers[t].members), heavy],
                          split=args.split)
    inputs = PlanInputs(weights=weights,
                        curves={heavy: {t: tier_curve(val, cfg.tiers[t], heavy, False)
                                        for t in weights}},
                        profiles={heavy: BatchProfile(1.0, 1.0)}, max_batch_size=1,
                        max_queue_delay_s=0.0, server_budget_ms=0.0, max_rps=0,
                        min_accuracy_step=0.0)
    front = pareto_front(inputs)
    out = {}
    print(f"{'sent <=':>8} {'accuracy':>9}  thresholds (forward rate per tier)  [{args.split}]")
    for f in args.budgets:
        best = max((c for c in front if c.forward_rate <= f + 1e-9), key=lambda c: c.accuracy)
        print(f"{f:8.1%} {best.accuracy:9.2%}  " + ", ".join(
            f"{t} {best.thresholds[t]:.3f} ({best.forward[t]:.0%})" for t in best.thresholds))
        out[str(f)] = round(best.accuracy, 4)
    print(json.dumps({"best_accuracy_at_sent": out}))


if __name__ == "__main__":
    main()
