"""How long a fixed amount of CPU work takes under the quota
`cascade_testbed.testbed.cgroups.quota_for` gives (docs/emulation.md, "Real CPU throttling"):
10 ms of CPU at targets of 20, 40 and 100 ms,
three processes each. Needs a host where cgroups can be written (the testbed's preflight says
why not, elsewhere).

    python scripts/cgroup_quota.py
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from cascade_testbed.testbed import cgroups

HOST_MS = 10.0
TARGETS_MS = (20.0, 40.0, 100.0)


def busy(ms: float, out: Any) -> None:
    """Wait to be placed in the cgroup, then burn `ms` of CPU; report the wall time."""
    time.sleep(0.3)
    start, cpu = time.perf_counter(), time.process_time()
    while time.process_time() - cpu < ms / 1e3:
        pass
    out.put((time.perf_counter() - start) * 1e3)


def main() -> None:
    h = cgroups.host_hierarchy()
    cgroups.probe(h, "quota-demo")
    ctx = mp.get_context("fork")
    for target in TARGETS_MS:
        quota = cgroups.quota_for(target, HOST_MS)
        assert quota is not None
        plan = cgroups.CgroupPlan(h, "quota-demo", {"t": quota})
        out = ctx.Queue()
        walls = []
        try:
            for i in range(3):
                proc = ctx.Process(target=busy, args=(HOST_MS, out))
                proc.start()
                plan.place(proc.pid or 0, f"d{i}", "t")
                walls.append(out.get(timeout=30))
                proc.join()
        finally:
            plan.remove()
        print(f"{HOST_MS:g} ms of CPU, target {target:g} ms, cgroup v{h.version} quota "
              f"{quota.quota_us}/{quota.period_us} us: wall "
              f"{', '.join(f'{w:.1f}' for w in walls)} ms")


if __name__ == "__main__":
    main()
