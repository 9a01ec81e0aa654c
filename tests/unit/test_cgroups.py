"""CPU throttling by cgroups (`cascade_testbed.testbed.cgroups`): the pure parts (hierarchy
detection from /proc, paths, quotas) everywhere; the writes only where this host permits them."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from cascade_testbed.common.config import ScenarioConfig, ScenarioError, device_specs
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed import cgroups
from cascade_testbed.testbed.cgroups import (
    MIN_QUOTA_US,
    CgroupPlan,
    CgroupUnavailable,
    CpuQuota,
    Hierarchy,
    find_hierarchy,
    quota_for,
)

V1_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V1_CGROUP = "4:memory:/job\n1:cpu:/slice/me\n0::/\n"
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
V2_CGROUP = "0::/user.slice/session-1.scope\n"


class TestHierarchy:
    def test_v1_when_only_v1_has_the_cpu_controller(self) -> None:
        h = find_hierarchy(V1_MOUNTS, V1_CGROUP, {"/sys/fs/cgroup/unified": "hugetlb\n"})
        assert h == Hierarchy(1, Path("/sys/fs/cgroup/cpu"), "/slice/me")
        assert h.device_dir("123-run", "low-000") == \
            Path("/sys/fs/cgroup/cpu/slice/me/cascade-testbed/123-run/low-000")
        assert h.device_dir("123-run", "low-000", 2).name == "low-000~2"

    def test_v2_when_its_root_offers_cpu_and_beside_our_own_cgroup(self) -> None:
        h = find_hierarchy(V2_MOUNTS, V2_CGROUP, {"/sys/fs/cgroup": "cpuset cpu io memory\n"})
        assert h is not None and h.version == 2
        # v2 keeps processes out of inner nodes: the run's cgroups go beside ours.
        assert h.run_dir("1-r") == Path("/sys/fs/cgroup/user.slice/cascade-testbed/1-r")
        at_root = Hierarchy(2, Path("/sys/fs/cgroup"), "/")
        assert at_root.run_dir("1-r") == Path("/sys/fs/cgroup/cascade-testbed/1-r")

    def test_none_without_a_cpu_controller(self) -> None:
        assert find_hierarchy(V2_MOUNTS, V2_CGROUP, {"/sys/fs/cgroup": "memory pids\n"}) is None
        assert find_hierarchy("", "", {}) is None

    @pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
    def test_names_from_a_scenario_never_become_paths(self, bad: str) -> None:
        h = Hierarchy(1, Path("/sys/fs/cgroup/cpu"), "/")
        with pytest.raises(ValueError):
            h.device_dir("1-run", bad)
        with pytest.raises(ValueError):
            h.run_dir(bad)


class TestQuota:
    def test_the_share_is_host_time_over_target_at_the_finest_period(self) -> None:
        q = quota_for(target_ms=30.0, host_ms=3.0)  # 10 % of a CPU
        assert q == CpuQuota(1000, 10_000, 0.1)
        assert q.files(2) == [("cpu.max", "1000 10000")]
        assert q.files(1) == [("cpu.cfs_period_us", "10000"), ("cpu.cfs_quota_us", "1000")]
        half = quota_for(10.0, 5.0)
        assert half is not None and (half.quota_us, half.period_us) == (1000, 2000)

    def test_a_model_far_faster_than_its_target_gets_the_floor(self) -> None:
        q = quota_for(target_ms=30.0, host_ms=0.015)
        assert q is not None and q.clamped and q.share == pytest.approx(cgroups.MIN_SHARE)
        assert q.quota_us >= MIN_QUOTA_US

    def test_nothing_to_slow_when_the_host_is_not_faster(self) -> None:
        assert quota_for(5.0, 5.0) is None and quota_for(5.0, 8.0) is None
        assert quota_for(0.0, 1.0) is None


class TestScenario:
    def test_cpu_limit_reaches_every_device_and_is_checked(self) -> None:
        cfg = scenario_from_dict({"devices": {"count": 3, "cpu_limit": "cgroup"}})
        assert {s.cpu_limit for s in device_specs(cfg)} == {"cgroup"}
        assert {s.cpu_limit for s in device_specs(ScenarioConfig())} == {"pad"}
        with pytest.raises(ScenarioError, match="cpu_limit"):
            scenario_from_dict({"devices": {"cpu_limit": "docker"}})


def _permitted() -> str | None:
    """Why this host cannot run the write tests, or None."""
    try:
        cgroups.probe(cgroups.host_hierarchy(), "test-probe")
    except CgroupUnavailable as exc:
        return str(exc)
    return None


WHY_NOT = _permitted()


def _busy(ms: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Wait to be placed, then burn `ms` of CPU and report the wall time it took."""
    time.sleep(0.3)
    start = time.perf_counter()
    cpu = time.process_time()
    while time.process_time() - cpu < ms / 1e3:
        pass
    out.put(time.perf_counter() - start)


@pytest.mark.skipif(WHY_NOT is not None, reason=f"cgroups not permitted here: {WHY_NOT}")
def test_a_quota_slows_a_real_computation_where_the_host_permits() -> None:
    """40 ms of CPU under a quarter of a CPU takes about 160 ms of wall time."""
    h = cgroups.host_hierarchy()
    plan = CgroupPlan(h, "test-quota", {"t": quota_for(target_ms=40.0, host_ms=10.0)})
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_busy, args=(40.0, out))
    proc.start()
    try:
        path = plan.place(proc.pid or 0, "dev-0", "t")
        assert (path / "cgroup.procs").read_text().split() == [str(proc.pid)]
        took = out.get(timeout=10)
    finally:
        proc.join(10)
        plan.remove()
    assert 0.12 < took < 0.6, took
    assert not h.run_dir("test-quota").exists()


def test_a_host_that_refuses_says_why_in_one_line(tmp_path: Path) -> None:
    """Where the hierarchy cannot take a cgroup (here: its mount is a file), the probe raises
    one line naming the mount; nothing is left behind."""
    (tmp_path / "cpu").write_text("")
    h = Hierarchy(1, tmp_path / "cpu", "/")
    with pytest.raises(CgroupUnavailable) as err:
        cgroups.probe(h, "1-run")
    assert str(err.value).startswith(f"cannot set a CPU quota under {tmp_path / 'cpu'}")
    assert "\n" not in str(err.value)


def test_the_preflight_refuses_a_cgroup_run_the_host_cannot_give(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cascade_testbed.testbed.preflight import CheckFailed, check_scenario

    def refuse() -> Hierarchy:
        raise CgroupUnavailable("no cgroup hierarchy with the cpu controller is mounted")

    monkeypatch.setattr(cgroups, "host_hierarchy", refuse)
    cfg = scenario_from_dict({"devices": {"count": 3, "cpu_limit": "cgroup"}})
    with pytest.raises(CheckFailed, match=r"^devices\.cpu_limit = 'cgroup': no cgroup"):
        check_scenario(cfg)
