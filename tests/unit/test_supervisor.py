"""The supervisor's rules with stand-in node agents, on any machine in a second: every sample
accounted for, faults and crash restarts, Ctrl-C (the first stops cleanly, the second kills),
a full disk, a node lost mid-run. Each case runs twice, on the two node interfaces the harness
has: `LocalNodes` (one agent, writing straight into the run folder) and `RayNodes` (agents
behind a stand-in of Ray's API, whose files are shipped). The real processes are in
tests/integration/test_faults_overload.py, test_runs.py and test_cluster.py."""

from __future__ import annotations

import json
import os
import signal
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cascade_testbed.common.config import DevicesConfig, FaultSpec, ScenarioConfig
from cascade_testbed.common.events import read_events
from cascade_testbed.common.records import GeneratedJournal, RecordWriter, SampleRecord, file_stem
from cascade_testbed.testbed import supervisor
from cascade_testbed.testbed.agent import DeviceJob, ServerJob
from cascade_testbed.testbed.cluster.driver import RayNodes
from cascade_testbed.testbed.cluster.placement import NodeInfo
from cascade_testbed.testbed.nodes import LocalNodes
from cascade_testbed.testbed.results.collect import collect
from cascade_testbed.testbed.shipping import Tail
from cascade_testbed.testbed.supervisor import RunError, RunResult, supervise

URL = "http://127.0.0.9:9"


class ActorGone(Exception):
    pass


class GetTimeout(Exception):
    pass


class TaskFailed(Exception):
    pass


@dataclass
class Ref:
    value: Any = None
    error: Exception | None = None


class FakeRay:
    exceptions = types.SimpleNamespace(RayActorError=ActorGone, GetTimeoutError=GetTimeout,
                                       RayTaskError=TaskFailed)

    def get(self, ref: Ref, timeout: float | None = None) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, handle: Handle, no_restart: bool = True) -> None:
        handle.agent.dead = True


class Handle:
    """`agent.method.remote(...)` runs the method at once; a dead agent's calls fail."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.agent, name)

        def remote(*args: Any) -> Ref:
            if self.agent.dead:
                return Ref(error=ActorGone(name))
            return Ref(method(*args))

        return types.SimpleNamespace(remote=remote)


@dataclass
class FakeDevice:
    spec: Any
    started_at: float | None = None
    end: float = 0.0
    generated: int = 0
    done: dict[str, Any] | None = None
    alive: bool = True
    killed: bool = False
    error: str | None = None
    disk_full: bool = False
    writer: RecordWriter | None = None
    journal: GeneratedJournal | None = None


@dataclass
class Script:
    """What the stand-in agents do to the run, at run time `at_s`."""

    sigint_at_s: float | None = None
    second_sigint: bool = False
    """Another Ctrl-C while the devices drain (they ignore `stop` until killed)."""
    disk_full_at_s: float | None = None
    """One device's disk refuses a write: it says so and exits."""
    crash_at_s: float | None = None
    """One device dies on its own (restarted if the scenario says so)."""
    signalled: int = 0
    start_at: float = 0.0


@dataclass
class FakeAgent:
    """Devices that generate at their rate from the start instant, answer each sample when
    the second after it starts, and report `done` at their end; files written as a device
    would (straight into the run folder, or into a scratch folder that `poll` ships)."""

    node: str
    root: Path
    script: Script
    ship: bool = True
    dead: bool = False
    devices: dict[str, FakeDevice] = field(default_factory=dict)
    retired: list[FakeDevice] = field(default_factory=list)
    server_alive: bool = False
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tail = Tail(self.root) if self.ship else None

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "pid": 1, "host": "h", "dir": str(self.root)}

    def start_server(self, job: ServerJob) -> dict[str, Any]:
        assert job.token and job.name == "server"
        if self.ship:
            assert job.cfg.server.host == "127.0.0.9"
        self.server_alive = True
        return {"url": URL, "pid": 2}

    def kill_server(self, name: str, how: str) -> int | None:
        self.server_alive = False
        return -9

    def stop_server(self, name: str) -> None:
        self.server_alive = False

    def spawn_devices(self, jobs: list[DeviceJob]) -> dict[str, int]:
        for job in jobs:
            spec = job.spec
            assert job.url == URL and job.token
            stem = file_stem(spec.device_id, spec.incarnation)
            dev = FakeDevice(spec)
            dev.writer = RecordWriter(self.root / "samples" / f"{stem}.csv")
            dev.journal = GeneratedJournal(self.root / "samples" / f"{stem}.gen")
            if spec.device_id in self.devices:
                self.retired.append(self.devices[spec.device_id])
            self.devices[spec.device_id] = dev
        return {job.spec.device_id: 100 for job in jobs}

    def start_devices(self, commands: dict[str, dict[str, Any]]) -> None:
        for device_id, cmd in commands.items():
            self.devices[device_id].started_at = cmd["at"]
            self.devices[device_id].end = cmd["end"]
            self.script.start_at = cmd["run_start"]

    def stop_devices(self) -> None:
        self.calls.append("stop_devices")
        if not self.script.second_sigint:
            for dev in self.devices.values():
                dev.end = min(dev.end, time.time())

    def kill_device(self, device_id: str, how: str) -> bool:
        dev = self.devices[device_id]
        dev.alive, dev.killed = False, True
        return True

    def kill_all(self) -> None:
        self.calls.append("kill_all")
        for dev in self.devices.values():
            if dev.done is None:
                dev.alive, dev.killed = False, True

    def resources(self) -> dict[str, Any]:
        return {"device_uss_mb": {"mean": 10.0, "max": 10.0, "sampled": len(self.devices)},
                "server_rss_mb": 50.0 if self.server_alive else None,
                "agent_cpu_s": 0.1, "device_cpu_s": 0.2}

    def poll(self, wait_s: float = 0.0, final: bool = False) -> dict[str, Any]:
        time.sleep(min(wait_s, 0.02))
        now = time.time()
        self._script(now)
        states = {}
        for dev in [*self.retired, *self.devices.values()]:
            if dev.alive and dev.done is None and dev.started_at is not None:
                self._generate(dev, now)
            states[f"{dev.spec.device_id}#{dev.spec.incarnation}"] = {
                "name": dev.spec.device_id, "incarnation": dev.spec.incarnation,
                "ready": True, "done": dev.done, "error": dev.error,
                "disk_full": dev.disk_full, "alive": dev.alive and dev.done is None,
                "exitcode": 0 if dev.done else (-9 if not dev.alive else None),
                "killed": dev.killed, "pid": 100}
        return {"devices": states,
                "servers": {"server": {"alive": self.server_alive, "exitcode": None}},
                "chunks": self.tail.chunks(final) if self.tail else [], "t": now}

    def shutdown(self) -> dict[str, Any]:
        self.close()
        return self.poll(final=True)

    def close(self) -> None:
        for dev in [*self.retired, *self.devices.values()]:
            for f in (dev.writer, dev.journal):
                if f is not None:
                    f.close()

    def _script(self, now: float) -> None:
        s = self.script
        t = now - s.start_at if s.start_at else -1.0
        if s.sigint_at_s is not None and t >= s.sigint_at_s and s.signalled == 0:
            s.signalled = 1
            os.kill(os.getpid(), signal.SIGINT)
        if s.second_sigint and s.signalled == 1 and "stop_devices" in self.calls:
            s.signalled = 2
            os.kill(os.getpid(), signal.SIGINT)
        running = [d for d in self.devices.values() if d.alive and d.done is None]
        if s.disk_full_at_s is not None and t >= s.disk_full_at_s and running:
            s.disk_full_at_s = None
            dev = running[0]
            dev.alive, dev.disk_full = False, True
            dev.error = f"disk full while writing samples/{dev.spec.device_id}.csv"
        if s.crash_at_s is not None and t >= s.crash_at_s and running:
            s.crash_at_s = None
            running[-1].alive = False

    def _generate(self, dev: FakeDevice, now: float) -> None:
        assert dev.started_at is not None
        due = int(max(0.0, min(now, dev.end) - dev.started_at) * dev.spec.rate_hz)
        while dev.generated < due:
            self._sample(dev)
        if now >= dev.end:
            for i in range(max(0, dev.generated - 2), dev.generated):
                self._finish(dev, i)  # a clean stop answers what is in flight
            dev.done = {"device_id": dev.spec.device_id, "tier": dev.spec.tier,
                        "incarnation": dev.spec.incarnation, "generated": dev.generated,
                        "recorded": dev.generated, "final_threshold": 0.5,
                        "late_replies": 0}
            (self.root / "devices").mkdir(exist_ok=True)
            stem = file_stem(dev.spec.device_id, dev.spec.incarnation)
            (self.root / "devices" / f"{stem}.json").write_text(json.dumps(dev.done))

    def _sample(self, dev: FakeDevice) -> None:
        assert dev.journal is not None
        i = dev.generated
        dev.journal.started(i)
        if i >= 2:
            self._finish(dev, i - 2)
        dev.generated += 1

    def _finish(self, dev: FakeDevice, i: int) -> None:
        assert dev.writer is not None
        dev.writer.write(SampleRecord(
            dev.spec.device_id, dev.spec.tier, i, dev.spec.incarnation, 0, i / 2, 0.1, 10.0,
            9.0, False, 0, 0.9, 0.5, False, 0.0, 0.0, 0, "", 0, "light", "", True, 10.0, True,
            time.time()))


class FakeSession:
    def __init__(self, tmp: Path, names: list[str], script: Script) -> None:
        self.ray = FakeRay()
        self.address = "local:3"
        self.nodes = [NodeInfo(n, f"id-{n}", "127.0.0.9", i == 0, {"CPU": 1.0})
                      for i, n in enumerate(names)]
        self.tmp = tmp
        self.script = script
        self.made: dict[str, FakeAgent] = {}

    def agent(self, node: NodeInfo, run_name: str) -> Handle:
        agent = FakeAgent(node.name, self.tmp / f"scratch-{node.name}", self.script)
        agent.root.mkdir()
        self.made[node.name] = agent
        return Handle(agent)


@dataclass
class StandInLocal(LocalNodes):
    """`LocalNodes` whose one agent is a stand-in writing into the run folder."""

    script: Script = field(default_factory=Script)
    made: dict[str, FakeAgent] = field(default_factory=dict)

    def start(self, used: set[str], run_name: str, on_lost: Any) -> dict[str, dict[str, Any]]:
        self.agent = FakeAgent("local", self.run_dir, self.script, ship=False)  # type: ignore
        self.made["local"] = self.agent  # type: ignore[assignment]
        return {}


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "DRAIN_GRACE_S", 1.0)


def _run(kind: str, tmp_path: Path, cfg: ScenarioConfig, script: Script | None = None,
         names: tuple[str, ...] = ("head", "node1", "node2")) -> tuple[RunResult, Any]:
    script = script or Script()
    nodes: Any
    if kind == "local":
        nodes = StandInLocal(tmp_path / "run", poll_s=0.05, start_lead_s=0.05, script=script)
        made = nodes.made
    else:
        session = FakeSession(tmp_path, list(names), script)
        nodes = RayNodes(session, poll_s=0.05, start_lead_s=0.05)  # type: ignore[arg-type]
        made = session.made
    try:
        return supervise(cfg, tmp_path / "run", nodes, checked=True), made
    finally:
        for agent in made.values():
            agent.close()


def _accounted(s: dict[str, Any]) -> None:
    assert s["samples"]["lost"] == 0
    assert s["samples"]["generated"] == s["samples"]["completed"] + s["samples"]["aborted"]
    assert s["samples"]["generated"] > 0


KINDS = ["local", "ray"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_sample_is_answered_and_recorded(tmp_path: Path, kind: str) -> None:
    cfg = ScenarioConfig(duration_s=0.8, devices=DevicesConfig(count=6, rate_hz=20.0))
    result, _ = _run(kind, tmp_path, cfg)
    s = result.summary
    _accounted(s)
    assert s["samples"]["aborted"] == 0 and not s["run"]["problems"], s["run"]["problems"]
    assert s["resources"]["device_uss_mb"]["sampled"] == 6
    assert s["resources"]["device_uss_mb"]["max"] == 10.0
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert ("placement" in {e["kind"] for e in events}) == (kind == "ray")
    assert ("nodes" in s) == (kind == "ray")


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_device_and_one_that_crashed_come_back(tmp_path: Path, kind: str) -> None:
    cfg = ScenarioConfig(duration_s=2.5, devices=DevicesConfig(
        count=4, rate_hz=20.0, restart_dead=True, restart_delay_s=0.1), faults=(
        FaultSpec(kind="kill_device", at_s=0.3, devices=("low-000",), restart_after_s=0.2),))
    result, _ = _run(kind, tmp_path, cfg, Script(crash_at_s=0.6))
    s = result.summary
    _accounted(s)
    events = read_events(tmp_path / "run" / "events.jsonl")
    kinds = [e["kind"] for e in events]
    assert kinds.count("device_kill") == 1 and kinds.count("device_restart") == 2
    exits = [e for e in events if e["kind"] == "device_exit"]
    assert [e["planned"] for e in exits] == [True, False]
    assert all(("node" in e) == (kind == "ray") for e in exits)
    assert s["faults"]["device_crashes"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_ctrl_c_stops_cleanly_and_every_sample_is_answered(tmp_path: Path, kind: str) -> None:
    cfg = ScenarioConfig(duration_s=30.0, devices=DevicesConfig(count=4, rate_hz=20.0))
    t0 = time.monotonic()
    result, made = _run(kind, tmp_path, cfg, Script(sigint_at_s=0.4))
    assert time.monotonic() - t0 < 10
    assert result.interrupted and result.stopped_by == "SIGINT"
    s = result.summary
    _accounted(s)
    assert s["samples"]["aborted"] == 0 and s["run"]["stopped_by"] == "SIGINT"
    # sampled as it stops (0.4 s is before the sample at 60 %), per node on a cluster
    assert s["resources"]["device_uss_mb"]["max"] == 10.0
    assert all("stop_devices" in a.calls and "kill_all" not in a.calls for a in made.values())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_ctrl_c_kills_and_the_killed_samples_are_aborted(tmp_path: Path,
                                                                   kind: str) -> None:
    cfg = ScenarioConfig(duration_s=30.0, devices=DevicesConfig(count=4, rate_hz=20.0))
    result, made = _run(kind, tmp_path, cfg, Script(sigint_at_s=0.4, second_sigint=True))
    assert result.interrupted
    s = result.summary
    _accounted(s)
    assert s["samples"]["aborted"] > 0
    assert all("kill_all" in a.calls for a in made.values())
    kinds = [e["kind"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    assert kinds.count("interrupted") == 1 and kinds.count("killed") == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_disk_stops_the_run_and_says_why(tmp_path: Path, kind: str) -> None:
    cfg = ScenarioConfig(duration_s=30.0, devices=DevicesConfig(
        count=4, rate_hz=20.0, restart_dead=True))
    t0 = time.monotonic()
    result, _ = _run(kind, tmp_path, cfg, Script(disk_full_at_s=0.4))
    assert time.monotonic() - t0 < 10
    s = result.summary
    assert "disk full while writing" in s["run"]["disk_full"]
    assert any("disk full" in p for p in s["run"]["problems"])
    assert s["samples"]["lost"] == 0
    kinds = [e["kind"] for e in read_events(tmp_path / "run" / "events.jsonl")]
    assert kinds.count("disk_full") == 1 and "device_restart" not in kinds


def test_a_lost_node_aborts_only_its_devices_unfinished_samples(tmp_path: Path) -> None:
    cfg = ScenarioConfig(duration_s=1.2, devices=DevicesConfig(count=9, rate_hz=20.0),
                         faults=(FaultSpec(kind="kill_node", at_s=0.5, node="node2"),))
    result, made = _run("ray", tmp_path, cfg)
    s = result.summary
    out = tmp_path / "run"

    assert set(made) == {"head", "node1", "node2"}
    _accounted(s)
    nodes = s["nodes"]
    assert {n: row["devices"] for n, row in nodes.items()} == {"head": 3, "node1": 3,
                                                               "node2": 3}
    assert nodes["node2"]["lost_node"] and not nodes["head"]["lost_node"]
    assert nodes["head"]["server"] and not nodes["node1"]["server"]
    for name in ("head", "node1"):  # ran to the end, every sample answered
        assert nodes[name]["aborted"] == 0
        assert nodes[name]["generated"] >= 3 * 20
    # node2 stopped at ~0.5 s; the two samples each of its devices had in flight are aborted
    assert 0 < nodes["node2"]["generated"] < nodes["head"]["generated"]
    assert nodes["node2"]["aborted"] == 3 * 2
    assert sum(r["generated"] for r in nodes.values()) == s["samples"]["generated"]
    assert not s["run"]["problems"], s["run"]["problems"]
    assert s["run"]["devices_without_outcome"] == []

    events = read_events(out / "events.jsonl")
    kinds = [e["kind"] for e in events]
    assert kinds.count("node_kill") == 1 and kinds.count("node_lost") == 1
    assert s["faults"]["node_kill"] == 1 and s["faults"]["injected"] == 1
    exits = [e for e in events if e["kind"] == "device_exit"]
    assert {e["node"] for e in exits} == {"node2"} and len(exits) == 3
    assert all(e["planned"] and not e["clean"] for e in exits)
    assert json.loads((out / "summary.json").read_text())["nodes"] == nodes
    (out / "summary.json").unlink()  # `testbed report` rebuilds it from the folder alone
    assert collect(out)["nodes"] == nodes
    # what was shipped is what the nodes wrote, under the local names
    lost = made["node2"].root
    for csv in (out / "samples").glob("*.csv"):
        assert csv.read_bytes()
    assert len(list((out / "devices").glob("*.json"))) == 6
    assert {p.name for p in (lost / "samples").glob("*.gen")} <= \
        {p.name for p in (out / "samples").glob("*.gen")}


@pytest.mark.parametrize("kind", KINDS)
def test_a_kill_node_it_cannot_carry_out_is_refused_before_anything_starts(
        tmp_path: Path, kind: str) -> None:
    cfg = ScenarioConfig(duration_s=1.0, devices=DevicesConfig(count=2),
                         faults=(FaultSpec(kind="kill_node", at_s=0.5, node="node9"),))
    with pytest.raises(RunError) as err:
        _run(kind, tmp_path, cfg, names=("head", "node1"))
    if kind == "ray":
        assert "node9" in str(err.value) and "head, node1" in str(err.value)
    else:
        assert "--ray" in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing ran: no folder left behind
