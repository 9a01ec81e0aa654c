"""Decision overhead of the `gears` policy, away from the server's noise: one plan for a
scenario, a view of N reporting devices, and many policy steps timed one by one.

    .venv/bin/python scripts/bench_gears.py scenarios/paper/gears-loads.toml --devices 60

Prints the step time (p50 / p99 / max, microseconds) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from cascade_testbed.common.config import device_specs
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    DeviceState,
    DeviceWindow,
    ServerWindow,
    SystemView,
)
from cascade_testbed.server.scheduling.gears import GearsPolicy
from cascade_testbed.testbed.plan.build import build_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    cfg = load_scenario(args.scenario)
    t = time.perf_counter()
    plan = build_plan(cfg)
    plan_s = time.perf_counter() - t
    policy = GearsPolicy({"smoothing_s": 1.0}, plan=plan)
    fleet = dataclasses.replace(cfg, devices=dataclasses.replace(cfg.devices,
                                                                 count=args.devices))
    infos = [DeviceInfo(s.device_id, s.tier, s.spec.model) for s in device_specs(fleet)]
    for info in infos:
        policy.join(info, 0.0)
    rng = np.random.default_rng(1)
    table = plan.table
    loads = rng.uniform(0, len(table), args.steps) / max(len(infos), 1)  # per device
    times = np.empty(args.steps)
    for k in range(args.steps):
        rate = float(loads[k])
        view = SystemView(now=k * 0.1, slo_ms=cfg.slo_ms, server=ServerWindow(queue_len=k % 7),
                          heavy_model=plan.gears[policy.current].heavy_model, devices={
                              d.device_id: DeviceState(d, 0.5, DeviceWindow(
                                  0.25, int(rate * 0.25), 0, 0, 0, 0, 0, 0.5, 0.5, 5.0))
                              for d in infos})
        t = time.perf_counter()
        policy.step(view)
        times[k] = (time.perf_counter() - t) * 1e6
    p50, p99 = np.percentile(times, [50, 99])
    print(f"plan: {len(plan.gears)} gears over loads 0..{len(table) - 1}, built in {plan_s:.1f} s")
    print(f"gears policy step with {len(infos)} devices, {args.steps} steps: "
          f"p50 {p50:.1f} us, p99 {p99:.1f} us, max {times.max():.1f} us")
    print(json.dumps({"devices": len(infos), "step_us_p50": round(float(p50), 1),
                      "step_us_p99": round(float(p99), 1),
                      "step_us_max": round(float(times.max()), 1),
                      "gears": len(plan.gears), "plan_s": round(plan_s, 2)}))


if __name__ == "__main__":
    main()
