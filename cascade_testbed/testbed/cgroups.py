"""Real CPU throttling (`[devices] cpu_limit = "cgroup"`, docs/emulation.md): each device
process runs in a cgroup of its own whose CPU quota makes the host's light model take about as
long as the tier's target, so the kernel slows the real model instead of the device padding it.

Pure parts first (which hierarchy holds the cpu controller, the quota from the target and the
host's measured model time, the paths); the writes (`CgroupPlan.apply` and friends) are thin
and are the only code here that touches /sys/fs/cgroup. cgroup v2 takes `cpu.max`
("quota period"); v1 takes `cpu.cfs_period_us` and `cpu.cfs_quota_us`. The kernel accepts
quotas of at least 1 ms and periods of 1 ms to 1 s.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.names import check_name

MIN_QUOTA_US: Final = 1_000
MAX_PERIOD_US: Final = 1_000_000
DEFAULT_PERIOD_US: Final = 100_000
MIN_SHARE: Final = 0.05
"""The least CPU a device's cgroup gets: a device at 10 Hz uses ~1.2 % of a CPU here for its
event loop, socket and records (summary.json `resources.device_cpu_percent_each`); below a
few times that, the quota throttles the device's loop, not its model."""
GROUP: Final = "cascade-testbed"
"""The folder under the hierarchy's root (or under this process's own cgroup) holding one
folder per run, each holding one cgroup per device process."""
Version = Literal[1, 2]


class CgroupUnavailable(RuntimeError):
    """This host does not let the testbed set CPU quotas; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where the cpu controller is mounted, and this process's cgroup in it."""

    version: Version
    mount: Path
    own: str
    """This process's cgroup, relative to the mount ("" at its root)."""

    def run_dir(self, run_tag: str) -> Path:
        """The run's folder of device cgroups: beside this process's own cgroup (v2 keeps
        processes out of inner nodes, so not inside it), under `GROUP`."""
        check_name(run_tag, "cgroup run tag")
        base = self.mount / self.own.strip("/")
        if self.version == 2 and self.own.strip("/"):
            base = base.parent
        return base / GROUP / run_tag

    def device_dir(self, run_tag: str, device_id: str, incarnation: int = 0) -> Path:
        check_name(device_id, "cgroup device id")
        return self.run_dir(run_tag) / (f"{device_id}~{incarnation}" if incarnation
                                        else device_id)


def find_hierarchy(mounts: str, proc_cgroup: str, v2_controllers: dict[str, str]
                   ) -> Hierarchy | None:
    """The hierarchy with the cpu controller, from /proc/self/mounts, /proc/self/cgroup and
    the `cgroup.controllers` of each v2 mount (by mount point); v2 when it has it, else v1;
    None when neither does."""
    own_v1 = own_v2 = ""
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            own_v2 = path
        elif "cpu" in controllers.split(","):
            own_v1 = path
    v1 = v2 = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2" and "cpu" in v2_controllers.get(point, "").split():
            v2 = Hierarchy(2, Path(point), own_v2)
        elif fstype == "cgroup" and "cpu" in options and v1 is None:
            v1 = Hierarchy(1, Path(point), own_v1)
    return v2 or v1


@dataclass(frozen=True, slots=True)
class CpuQuota:
    """`quota_us` of CPU time every `period_us`: `share` of one CPU."""

    quota_us: int
    period_us: int
    share: float
    clamped: bool = False
    """The share host/target was below `MIN_SHARE`: the device gets more CPU than its
    target calls for, and its model runs faster than the target."""

    def files(self, version: Version) -> list[tuple[str, str]]:
        """What to write, in order (v1: the period first, so the quota fits it)."""
        if version == 2:
            return [("cpu.max", f"{self.quota_us} {self.period_us}")]
        return [("cpu.cfs_period_us", str(self.period_us)),
                ("cpu.cfs_quota_us", str(self.quota_us))]


def quota_for(target_ms: float, host_ms: float) -> CpuQuota | None:
    """The quota under which a computation taking `host_ms` of CPU here takes about
    `target_ms` of wall time: a share of host/target of one CPU, at least `MIN_SHARE`. None
    when the host is not faster than the target (nothing to slow: the device runs
    unthrottled). The quota is the kernel's smallest, 1 ms, and the period what gives the
    share (up to 1 s): the finest slicing CFS can do, so a computation longer than 1 ms is
    stretched evenly; one shorter than 1 ms runs at the host's speed unless the period's
    quota is already spent (docs/emulation.md)."""
    if not (target_ms > 0 and host_ms > 0) or host_ms >= target_ms:
        return None
    share = max(host_ms / target_ms, MIN_SHARE)
    clamped = host_ms / target_ms < MIN_SHARE
    period = min(MAX_PERIOD_US, max(MIN_QUOTA_US, math.ceil(MIN_QUOTA_US / share)))
    quota = max(MIN_QUOTA_US, round(share * period))
    return CpuQuota(quota, period, quota / period, clamped)


@dataclass(frozen=True, slots=True)
class CgroupPlan:
    """The cgroups of one run on one host: the hierarchy, the run's tag and each tier's quota
    (a tier without one runs unthrottled, in a cgroup all the same)."""

    hierarchy: Hierarchy
    run_tag: str
    quotas: dict[str, CpuQuota | None]
    host_ms: dict[str, float] = field(default_factory=dict)
    """Each tier's light-model time measured on this host, unthrottled."""

    def describe(self) -> dict[str, object]:
        """For the run's events: the hierarchy and, per tier, the measured time and quota."""
        return {"version": self.hierarchy.version, "run_dir": str(self.hierarchy.run_dir(
            self.run_tag)), "tiers": {tier: {
                "host_ms": round(self.host_ms.get(tier, math.nan), 4),
                "quota_us": q.quota_us if q else None, "period_us": q.period_us if q else None,
                "share": round(q.share, 5) if q else None, "clamped": q.clamped if q else False}
                for tier, q in self.quotas.items()}}

    def place(self, pid: int, device_id: str, tier: str, incarnation: int = 0) -> Path:
        """Put process `pid` into its own cgroup with its tier's quota (the write part)."""
        path = self.hierarchy.device_dir(self.run_tag, device_id, incarnation)
        _make(self.hierarchy, path)
        quota = self.quotas.get(tier)
        if quota is not None:
            for name, value in quota.files(self.hierarchy.version):
                (path / name).write_text(value)
        (path / "cgroup.procs").write_text(str(pid))
        return path

    def remove(self) -> None:
        """Remove the run's cgroups (their processes have ended; a cgroup still holding one
        stays, and is removed by the next run's `remove_stale`)."""
        run = self.hierarchy.run_dir(self.run_tag)
        if run.is_dir():
            for child in run.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                run.rmdir()
            with contextlib.suppress(OSError):  # the last run's leaves it empty
                run.parent.rmdir()


def _make(h: Hierarchy, path: Path) -> None:
    """mkdir -p, and under v2 let every new level's children use the cpu controller."""
    top = h.run_dir("x").parent.parent  # where GROUP goes
    rel = path.relative_to(top).parts
    here = top
    for part in rel:
        if h.version == 2:
            with contextlib.suppress(OSError):  # already enabled, or the root's to give
                (here / "cgroup.subtree_control").write_text("+cpu")
        here = here / part
        here.mkdir(exist_ok=True)


# --- the host: thin reads and one probe ---------------------------------------------------


def host_hierarchy() -> Hierarchy:
    """This host's cpu hierarchy, or `CgroupUnavailable` saying why there is none."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read /proc ({exc.strerror or exc}): not Linux?"
                                ) from None
    v2 = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            with contextlib.suppress(OSError):
                v2[fields[1]] = (Path(fields[1]) / "cgroup.controllers").read_text()
    found = find_hierarchy(mounts, own, v2)
    if found is None:
        raise CgroupUnavailable("no cgroup hierarchy with the cpu controller is mounted")
    return found


def probe(h: Hierarchy, run_tag: str) -> None:
    """Create a cgroup, set a quota, move a process into it, remove it, as a run will:
    `CgroupUnavailable` with the reason when the host does not allow it (not root, read-only
    /sys/fs/cgroup, no delegation, a cgroup v2 parent that holds processes itself)."""
    path = h.device_dir(run_tag, "probe")
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        _make(h, path)
        for name, value in CpuQuota(MIN_QUOTA_US, DEFAULT_PERIOD_US, 0.01).files(h.version):
            (path / name).write_text(value)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        (path / "cgroup.procs").write_text(str(sleeper.pid))
    except OSError as exc:
        why = {errno.EACCES: "permission denied (run as root, or delegate a cgroup to this "
                             "user)",
               errno.EPERM: "not permitted (run as root, or delegate a cgroup to this user)",
               errno.EROFS: "the cgroup file system is mounted read-only (a container "
                            "without --cgroupns=private or a writable /sys/fs/cgroup)",
               errno.ENOENT: "the cpu controller's files are missing (the controller is "
                             "not enabled for this cgroup)"}.get(exc.errno or 0,
                                                                exc.strerror or str(exc))
        raise CgroupUnavailable(f"cannot set a CPU quota under {h.mount} (cgroup v{h.version}):"
                                f" {why}") from None
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        CgroupPlan(h, run_tag, {}).remove()


def measure_ms(run: Callable[[], object], runs: int = 200) -> float:
    """The median wall time of `run()`, after a few warm-up calls."""
    for _ in range(10):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def run_tag(run_dir: Path) -> str:
    """A cgroup folder name for a run: the harness's pid and the run folder's name."""
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_dir.name)[:40]
    return f"{os.getpid()}-{name or 'run'}"


def host_light_ms(zoo: str | None, members: tuple[str, ...]) -> float:
    """This host's median time of one sample through a tier's light models (as a device runs
    them: one session each, one thread)."""
    from cascade_testbed.common.modelzoo import open_session, open_zoo, to_model_input

    z = open_zoo(zoo)
    x = to_model_input(z.dataset("test").x[:1])
    sessions = [open_session(z.model_path(name), 1, 1) for name in members]
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]

    def run_all() -> None:
        for session, feed in zip(sessions, feeds, strict=True):
            session.run(None, feed)

    return measure_ms(run_all)


def plan(cfg: ScenarioConfig, run_dir: Path, measured: dict[str, float] | None = None
         ) -> CgroupPlan:
    """The run's cgroups: the host's hierarchy (checked writable by a probe) and each tier's
    quota from its `compute_ms` and the host's light-model time (`measured` by tier, else
    measured now). `CgroupUnavailable` when the host does not permit it."""
    h = host_hierarchy()
    tag = run_tag(run_dir)
    probe(h, tag)
    times = measured if measured is not None else {
        tier: host_light_ms(cfg.zoo, spec.members) for tier, spec in cfg.tiers.items()}
    return CgroupPlan(h, tag, {tier: quota_for(spec.compute_ms, times[tier])
                               for tier, spec in cfg.tiers.items()}, dict(times))
