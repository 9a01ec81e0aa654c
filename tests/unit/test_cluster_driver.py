"""The cluster driver's bookkeeping, with stand-in agents instead of Ray actors: placement into
agents, start commands, records shipped as they are written, a node lost mid-run (its devices'
unfinished samples aborted, the others untouched), summary `nodes`. The real thing, with Ray and
real device processes, is tests/integration/test_cluster.py; this checks the driver's rules
in a second, on any machine."""

from __future__ import annotations

import json
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import DevicesConfig, FaultSpec, ScenarioConfig
from common.events import read_events
from common.records import GeneratedJournal, RecordWriter, SampleRecord, file_stem
from testbed.cluster import driver
from testbed.cluster.placement import NodeInfo
from testbed.results.collect import collect
from testbed.shipping import Tail


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
    writer: RecordWriter | None = None
    journal: GeneratedJournal | None = None


@dataclass
class FakeAgent:
    """Devices that generate at their rate from the start instant, answer each sample at
    once, and report `done` at their end; files written as a device would."""

    node: str
    root: Path
    dead: bool = False
    devices: dict[str, FakeDevice] = field(default_factory=dict)
    retired: list[FakeDevice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tail = Tail(self.root)

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "pid": 1, "host": "h", "dir": str(self.root)}

    def start_server(self, cfg: ScenarioConfig, token: str, incarnation: int) -> dict[str, Any]:
        assert cfg.server.host == "127.0.0.9" and token
        return {"url": "http://127.0.0.9:9", "pid": 2}

    def stop_server(self) -> None:
        return None

    def spawn_devices(self, jobs: list[tuple[Any, ...]]) -> dict[str, int]:
        for spec, url, token, _wait, _interval in jobs:
            assert url == "http://127.0.0.9:9" and token
            stem = file_stem(spec.device_id, spec.incarnation)
            dev = FakeDevice(spec)
            dev.writer = RecordWriter(self.root / "samples" / f"{stem}.csv")
            dev.journal = GeneratedJournal(self.root / "samples" / f"{stem}.gen")
            if spec.device_id in self.devices:
                self.retired.append(self.devices[spec.device_id])
            self.devices[spec.device_id] = dev
        return {d: 100 for d in self.devices}

    def start_devices(self, commands: dict[str, dict[str, Any]]) -> None:
        for device_id, cmd in commands.items():
            self.devices[device_id].started_at = cmd["at"]
            self.devices[device_id].end = cmd["end"]

    def stop_devices(self) -> None:
        for dev in self.devices.values():
            dev.end = min(dev.end, time.time())

    def kill_device(self, device_id: str, signal: str) -> bool:
        self.devices[device_id].alive = False
        return True

    def kill_all(self) -> None:
        pass

    def resources(self) -> dict[str, Any]:
        return {"device_uss_mb": {"mean": 10.0, "max": 10.0, "sampled": len(self.devices)},
                "agent_cpu_s": 0.1, "device_cpu_s": 0.2}

    def poll(self, final: bool = False) -> dict[str, Any]:
        now = time.time()
        states = {}
        for dev in [*self.retired, *self.devices.values()]:
            if dev.alive and dev.done is None and dev.started_at is not None:
                due = int(max(0.0, min(now, dev.end) - dev.started_at) * dev.spec.rate_hz)
                while dev.generated < due:
                    self._sample(dev)
                if now >= dev.end:
                    for i in range(max(0, dev.generated - 2), dev.generated):
                        self._finish(dev, i)  # a clean stop answers what is in flight
                    dev.done = {"device_id": dev.spec.device_id, "tier": dev.spec.tier,
                                "incarnation": dev.spec.incarnation,
                                "generated": dev.generated, "recorded": dev.generated,
                                "final_threshold": 0.5, "late_replies": 0}
                    (self.root / "devices").mkdir(exist_ok=True)
                    stem = file_stem(dev.spec.device_id, dev.spec.incarnation)
                    (self.root / "devices" / f"{stem}.json").write_text(json.dumps(dev.done))
            states[f"{dev.spec.device_id}#{dev.spec.incarnation}"] = {
                "name": dev.spec.device_id, "incarnation": dev.spec.incarnation,
                "ready": True, "done": dev.done, "error": None, "disk_full": False,
                "alive": dev.alive and dev.done is None, "exitcode": 0 if dev.done else None,
                "killed": not dev.alive, "pid": 100}
        return {"devices": states, "server": {"alive": True, "pid": 2},
                "chunks": self.tail.chunks(final), "t": now}

    def shutdown(self) -> dict[str, Any]:
        self.close()
        return self.poll(final=True)

    def close(self) -> None:
        for dev in [*self.retired, *self.devices.values()]:
            for f in (dev.writer, dev.journal):
                if f is not None:
                    f.close()

    def _sample(self, dev: FakeDevice) -> None:
        """A sample is answered when the second one after it starts: two are in flight."""
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
    def __init__(self, tmp: Path, names: list[str]) -> None:
        self.ray = FakeRay()
        self.address = "local:3"
        self.nodes = [NodeInfo(n, f"id-{n}", "127.0.0.9", i == 0, {"CPU": 1.0})
                      for i, n in enumerate(names)]
        self.tmp = tmp
        self.made: dict[str, FakeAgent] = {}

    def agent(self, node: NodeInfo, run_name: str) -> Handle:
        agent = FakeAgent(node.name, self.tmp / f"scratch-{node.name}")
        agent.root.mkdir()
        self.made[node.name] = agent
        return Handle(agent)


def test_a_lost_node_aborts_only_its_devices_unfinished_samples(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    monkeypatch.setattr(driver, "POLL_S", 0.05)
    monkeypatch.setattr(driver, "START_LEAD_S", 0.05)
    monkeypatch.setattr(driver, "DRAIN_GRACE_S", 1.0)
    cfg = ScenarioConfig(duration_s=1.2, devices=DevicesConfig(count=9, rate_hz=20.0),
                         faults=(FaultSpec(kind="kill_node", at_s=0.5, node="node2"),))
    session = FakeSession(tmp_path, ["head", "node1", "node2"])
    try:
        result = driver._run(cfg, tmp_path / "run", session, None)  # type: ignore[arg-type]
    finally:
        for agent in session.made.values():
            agent.close()
    s = result.summary
    out = tmp_path / "run"

    assert set(session.made) == {"head", "node1", "node2"}
    assert s["samples"]["lost"] == 0
    assert s["samples"]["generated"] == s["samples"]["completed"] + s["samples"]["aborted"]
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
    lost = session.made["node2"].root
    for csv in (out / "samples").glob("*.csv"):
        assert csv.read_bytes()
    assert len(list((out / "devices").glob("*.json"))) == 6
    assert {p.name for p in (lost / "samples").glob("*.gen")} <= \
        {p.name for p in (out / "samples").glob("*.gen")}


def test_an_unknown_kill_node_target_is_refused_before_anything_starts(tmp_path: Path) -> None:
    cfg = ScenarioConfig(duration_s=1.0, devices=DevicesConfig(count=2),
                         faults=(FaultSpec(kind="kill_node", at_s=0.5, node="node9"),))
    session = FakeSession(tmp_path, ["head", "node1"])
    try:
        driver._run(cfg, tmp_path / "run", session, None)  # type: ignore[arg-type]
    except driver.RunError as exc:
        assert "node9" in str(exc) and "head, node1" in str(exc)
    else:
        raise AssertionError("a kill_node of an unknown node must be refused")
    assert session.made == {}
