"""Run a scenario on this host: the supervisor (`testbed.supervisor`) over one node, an agent in
the harness's own process that forks the server and device processes and writes straight into
the run folder. `--ray` runs the same loop over a cluster (`testbed.cluster.driver`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.names import policy_label
from cascade_testbed.testbed.nodes import LocalNodes
from cascade_testbed.testbed.supervisor import TOKEN_FILE, Progress, RunError, RunResult, supervise

__all__ = ["TOKEN_FILE", "RunError", "RunResult", "check_host_memory", "default_run_dir",
           "run_scenario"]

DEVICE_MEMORY_MB = 16
"""Unique memory of one device process with room to spare: measured USS 9.9-10.4 MB at 10 and
100 devices (docs/density.md). 40 MB refused 1,000 devices on a 24 GiB host that holds them."""
BASE_MEMORY_MB = 1024
"""The harness, the server and the forkserver's shared pages."""


def default_run_dir(cfg: ScenarioConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{cfg.name}-{policy_label(cfg.policy.name)}-{cfg.devices.count}dev"


def run_scenario(cfg: ScenarioConfig, run_dir: Path, progress: Progress | None = None, *,
                 force: bool = False, checked: bool = False,
                 on_listening: Callable[[str], None] | None = None) -> RunResult:
    """Run one scenario end to end on this host and write its run folder (see
    `testbed.supervisor.supervise`); unless `force`, refuse a device count the host's memory
    cannot hold."""
    if not force:
        check_host_memory(cfg.devices.count)
    return supervise(cfg, run_dir, LocalNodes(run_dir), progress, checked=checked,
                     on_listening=on_listening)


def check_host_memory(devices: int) -> None:
    """Refuse a device count the host's free memory cannot hold (each device process needs
    about `DEVICE_MEMORY_MB` of its own, on top of the pages the forkserver shares)."""
    available_mb = psutil.virtual_memory().available / 2**20
    need_mb = BASE_MEMORY_MB + devices * DEVICE_MEMORY_MB
    if need_mb > available_mb:
        raise RunError(f"{devices} devices need about {need_mb / 1024:.1f} GiB of memory and "
                       f"this host has {available_mb / 1024:.1f} GiB available; fewer "
                       "devices, or --force to try anyway")
