"""A run spread over a Ray cluster, driven from this host (`testbed up/run/sweep --ray`).

The same run as `testbed.orchestrator`'s, with the processes elsewhere: the driver plans the
run (devices, faults, placement), starts one `NodeAgent` per node that has work, has the
server's agent start the server on the address Ray reports for its node, has every agent fork
its devices, and then only talks to agents: `start`/`stop` commands, faults, and a poll every
`POLL_S` that brings back the children's state and the new bytes of their files, appended to
the run folder here as they arrive. The run folder ends up as a local run's, plus
`summary.json`'s `nodes`, and the existing summary code reads it.

Clocks: every process measures its latencies on its own monotonic clock, as on one host. What
crosses hosts is the common start instant (a wall-clock time: a node whose clock is off by d
starts its devices d early or late) and the `t` of events, stamped by the driver when it
learns of them (up to one poll late). docs/cluster.md has the details.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import tomli_w

from common.config import DeviceSpec, ScenarioConfig, ScenarioError, device_specs
from common.events import EventLog
from common.scenario_file import scenario_to_dict
from testbed import provenance
from testbed.cluster.placement import (
    NodeInfo,
    PlacementError,
    pick_node,
    place_devices,
    placement_event,
)
from testbed.cluster.ray_session import AGENT_START_TIMEOUT_S, RayMissing, RaySession
from testbed.cluster.shipping import BadChunk, Chunk, Sink
from testbed.faults import plan_faults
from testbed.observe import fetch_status, live_view, server_facts
from testbed.orchestrator import (
    DRAIN_GRACE_S,
    MIN_RESTART_LEFT_S,
    REGISTER_TIMEOUT_S,
    SERVER_RESTART_DELAY_S,
    SPAWN_LEAD_S,
    TOKEN_FILE,
    Progress,
    RunError,
    RunResult,
    StopSignals,
    write_token,
)
from testbed.plan.prepare import prepare
from testbed.preflight import CheckFailed, check_scenario
from testbed.results.collect import RunFacts, collect
from testbed.timeline import Action, Interval, activity, join_actions
from testbed.versions import collect_versions

log = logging.getLogger(__name__)

POLL_S = 0.5
"""How often the driver asks every agent for news (and records)."""
CALL_TIMEOUT_S = 20.0
"""An agent that does not answer a call this long is taken as lost."""
START_LEAD_S = 1.5
"""The common start instant is this far ahead: the `start` commands cross Ray first."""


@dataclass
class _Device:
    """The driver's view of one device process (an incarnation) on a node."""

    spec: DeviceSpec
    node: str
    interval: Interval
    ready: bool = False
    started: bool = False
    done: dict[str, Any] | None = None
    error: str | None = None
    disk_full: bool = False
    alive: bool = True
    exitcode: int | None = None
    killed: bool = False
    exit_logged: bool = False
    restart_planned: bool = False
    pid: int | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None or not self.alive


@dataclass
class _ClusterRun:
    cfg: ScenarioConfig
    run_dir: Path
    events: EventLog
    progress: Progress
    session: RaySession
    specs: dict[str, DeviceSpec]
    spans: dict[str, tuple[Interval, ...]]
    placement: dict[str, str]
    server_node: NodeInfo
    token: str
    sink: Sink
    agenda: list[Action] = field(default_factory=list)
    agents: dict[str, Any] = field(default_factory=dict)
    lost_nodes: set[str] = field(default_factory=set)
    devices: dict[str, _Device] = field(default_factory=dict)
    """The current process of each device."""
    retired: list[_Device] = field(default_factory=list)
    server_url: str = ""
    server_alive: bool = False
    server_killed: bool = False
    server_exit_logged: bool = False
    server_statuses: list[dict[str, Any]] = field(default_factory=list)
    start_at: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)
    startup_s: float | None = None
    interrupted: bool = False
    stops: StopSignals = field(default_factory=StopSignals)

    def node_of(self, device_id: str) -> str:
        return self.placement[device_id]


def run_on_cluster(cfg: ScenarioConfig, run_dir: Path, address: str,
                   progress: Progress | None = None, *, checked: bool = False,
                   on_listening: Callable[[str], None] | None = None) -> RunResult:
    """Run one scenario over the Ray cluster at `address` (see `check_ray_address`) and write
    its run folder here. `RunError` when it cannot start (one line for the user). The scenario
    is checked first unless the caller just did (`checked`); `on_listening` gets the server's
    URL when it first listens."""
    if not checked:
        try:
            check_scenario(cfg)
        except CheckFailed as exc:
            raise RunError(f"bad scenario: {exc}") from None
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not empty")
    if cfg.idn.nodes:
        raise RunError("an idn scenario cannot run on a cluster yet (--ray): run it locally")
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, ray=address))
    try:
        session = RaySession.open(address)
    except RayMissing as exc:
        raise RunError(str(exc)) from None
    except Exception as exc:  # Ray says why in its own exception types
        raise RunError(f"cannot reach the Ray cluster {address}: "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    try:
        return _run(cfg, run_dir, session, progress, on_listening)
    finally:
        session.close()


def _run(cfg: ScenarioConfig, run_dir: Path, session: RaySession,
         progress: Progress | None,
         on_listening: Callable[[str], None] | None = None) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    provenance.write(run_dir, cfg)  # what was asked for, before the run prepares it
    try:
        cfg = prepare(cfg, run_dir)
    except (ValueError, LookupError) as exc:
        raise RunError(f"cannot prepare the run: {exc}") from None
    t_begin = time.monotonic()
    specs = device_specs(cfg)
    try:
        plan = plan_faults(cfg, [(s.device_id, s.tier) for s in specs])
        server_node = pick_node(session.nodes, cfg.cluster.server_node, "cluster.server_node")
        placement = place_devices([(s.device_id, s.tier) for s in specs], session.nodes,
                                  cfg.cluster.nodes)
    except (ScenarioError, PlacementError) as exc:
        raise RunError(f"bad scenario for this cluster: {exc}") from None
    unknown = sorted({a.target for a in plan.actions if a.kind == "kill_node"}
                     - {n.name for n in session.nodes})
    if unknown:
        raise RunError(f"bad scenario: kill_node names unknown nodes {unknown}; the cluster "
                       f"has {', '.join(n.name for n in session.nodes)}")
    specs = [dataclasses.replace(s, link_faults=plan.links.get(s.device_id, ())) for s in specs]
    spans = dict(zip([s.device_id for s in specs], activity(cfg), strict=True))
    joins = join_actions(list(spans), list(spans.values()))
    (run_dir / "scenario.toml").write_text(tomli_w.dumps(scenario_to_dict(cfg)))
    (run_dir / "versions.json").write_text(json.dumps(collect_versions(), indent=2))
    token = secrets.token_urlsafe(24)
    write_token(run_dir / TOKEN_FILE, token)
    run = _ClusterRun(
        cfg, run_dir, EventLog(run_dir / "events.harness.jsonl", "harness"),
        progress or _Quiet(), session,
        {s.device_id: s for s in specs if spans[s.device_id]}, spans, placement, server_node,
        token, Sink(run_dir),
        agenda=sorted([*plan.actions, *(dataclasses.replace(
            a, at_s=max(0.0, a.at_s - SPAWN_LEAD_S)) for a in joins)]))
    run.events.emit("run_start", scenario=cfg.name, policy=cfg.policy.name,
                    devices=cfg.devices.count, faults_planned=plan.injected,
                    ray=session.address, nodes={n.name: n.ip for n in session.nodes})
    run.events.emit("placement", **placement_event(
        placement, {s.device_id: s.tier for s in specs}, session.nodes, server_node.name))
    run.stops.install()
    try:
        try:
            _start_agents(run)
            _start_server(run)
            if on_listening is not None:
                on_listening(run.server_url)
            _start_devices(run)
            run.startup_s = time.monotonic() - t_begin
            run.events.emit("all_registered", startup_s=round(run.startup_s, 3))
            _run_devices(run)
        except KeyboardInterrupt:
            run.stops.handled_all()
            run.interrupted = True
            run.events.emit("interrupted", signal=run.stops.name)
            run.progress.phase(f"stopped by {run.stops.name}: stopping devices cleanly "
                               "(Ctrl-C again to kill)")
            _stop_devices(run)
        _stop_server(run)
    finally:
        run.stops.restore()
        _shutdown_agents(run)
        _log_exits(run)
        run.events.emit("run_end", interrupted=run.interrupted)
        run.events.close()
    stopped_by = run.stops.name if run.interrupted else ""
    facts = RunFacts(interrupted=run.interrupted, startup_s=run.startup_s,
                     resources=run.resources, server=server_facts(run.server_statuses),
                     disk_full=str(run.events.failure) if run.events.failure else "",
                     stopped_by=stopped_by)
    summary = collect(run_dir, facts, cfg)  # with `nodes`, from the placement event
    return RunResult(run_dir, summary, run.interrupted, stopped_by)


class _Quiet:
    def phase(self, text: str) -> None:
        log.info("%s", text)

    def registered(self, done: int, total: int) -> None:
        pass

    def running(self, elapsed_s: float, duration_s: float, live: dict[str, Any]) -> None:
        pass


# --- agents -----------------------------------------------------------------------------------


def _call(run: _ClusterRun, node: str, method: str, *args: Any,
          timeout: float = CALL_TIMEOUT_S) -> Any:
    """One call to a node's agent; an agent that is gone makes its node lost (None back)."""
    agent = run.agents.get(node)
    if agent is None or node in run.lost_nodes:
        return None
    ray = run.session.ray
    try:
        return ray.get(getattr(agent, method).remote(*args), timeout=timeout)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
            ray.exceptions.RayTaskError) as exc:
        _node_lost(run, node, f"{type(exc).__name__} in {method}")
        return None


def _call_all(run: _ClusterRun, method: str, *args: Any,
              timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
    """The same call to every live agent at once; answers by node."""
    ray = run.session.ray
    refs = {node: getattr(agent, method).remote(*args) for node, agent in run.agents.items()
            if node not in run.lost_nodes}
    out = {}
    deadline = time.monotonic() + timeout
    for node, ref in refs.items():
        try:
            out[node] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                ray.exceptions.RayTaskError) as exc:
            _node_lost(run, node, f"{type(exc).__name__} in {method}")
    return out


def _start_agents(run: _ClusterRun) -> None:
    wanted = [n for n in run.session.nodes
              if n.name == run.server_node.name or n.name in run.placement.values()]
    run.progress.phase(f"starting {len(wanted)} node agents")
    for node in wanted:
        run.agents[node.name] = run.session.agent(node, run.run_dir.name[:40] or "run")
    infos = _call_all(run, "info", timeout=AGENT_START_TIMEOUT_S)
    missing = sorted(set(run.agents) - set(infos))
    if missing:
        raise RunError(f"node agents did not start on {', '.join(missing)}")
    for name, info in infos.items():
        run.events.emit("agent_started", **{**info, "node": name})


def _node_lost(run: _ClusterRun, node: str, why: str) -> None:
    """A node's agent is gone: its processes died with it. Its devices' unfinished samples
    are aborted (the records shipped so far say which), as for a crashed device."""
    if node in run.lost_nodes:
        return
    run.lost_nodes.add(node)
    run.events.emit("node_lost", node=node, reason=why)
    for dev in [*run.devices.values(), *run.retired]:
        if dev.node == node and not dev.finished:
            dev.alive = False
    if node == run.server_node.name:
        run.server_alive = False
    _log_exits(run)


# --- server -----------------------------------------------------------------------------------


def _start_server(run: _ClusterRun, port: int = 0) -> bool:
    """Start the server on its node, bound to the address Ray knows that node by."""
    node = run.server_node
    run.progress.phase(f"starting server on {node.name}" if not port else "restarting server")
    cfg = dataclasses.replace(run.cfg, server=dataclasses.replace(
        run.cfg.server, host=node.ip, port=port))
    incarnation = len(run.server_statuses)
    run.server_statuses.append({})
    answer = _call(run, node.name, "start_server", cfg, run.token, incarnation,
                   timeout=AGENT_START_TIMEOUT_S)
    if not answer or "error" in answer:
        why = (answer or {}).get("error", "its node is lost")
        if not port:
            raise RunError(f"server did not start on {node.name}: {why}; see "
                           f"{run.run_dir / 'logs' / 'server.log'}")
        run.events.emit("server_restart_failed", reason=why)
        return False
    run.server_url = answer["url"]
    run.server_alive = True
    run.server_killed = False
    run.server_exit_logged = False
    run.events.emit("server_listening", url=run.server_url, incarnation=incarnation,
                    pid=answer["pid"], node=node.name)
    return True


def _stop_server(run: _ClusterRun) -> None:
    if not run.server_alive:
        return
    run.progress.phase("stopping server")
    status = _call(run, run.server_node.name, "stop_server")
    if status:
        run.server_statuses[-1] = status


# --- devices ----------------------------------------------------------------------------------


def _spawn(run: _ClusterRun, jobs: list[tuple[DeviceSpec, Interval, bool]]) -> None:
    by_node: dict[str, list[Any]] = {}
    for spec, interval, wait in jobs:
        spec = dataclasses.replace(spec, duration_s=interval[1] - interval[0])
        node = run.node_of(spec.device_id)
        old = run.devices.get(spec.device_id)
        if old is not None:
            run.retired.append(old)
        run.devices[spec.device_id] = _Device(spec, node, interval)
        by_node.setdefault(node, []).append((spec, run.server_url, run.token, wait, interval))
    for node, node_jobs in by_node.items():
        pids = _call(run, node, "spawn_devices", node_jobs,
                     timeout=AGENT_START_TIMEOUT_S) or {}
        for device_id, pid in pids.items():
            run.devices[device_id].pid = pid


def _start_devices(run: _ClusterRun) -> None:
    specs = list(run.specs.values())
    run.progress.phase(f"starting {len(specs)} devices on {len(run.agents)} nodes")
    _spawn(run, [(s, run.spans[s.device_id][0], run.spans[s.device_id][0][0] == 0)
                 for s in specs])
    run.events.emit("devices_spawned", count=len(specs), nodes={
        n: sum(d.node == n for d in run.devices.values()) for n in run.agents})
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    run.progress.registered(0, len(specs))
    while True:
        _poll(run)
        ready = sum(d.ready for d in run.devices.values())
        run.progress.registered(ready, len(specs))
        for dev in run.devices.values():
            if dev.error or (dev.finished and not dev.ready):
                raise RunError(f"device {dev.spec.device_id} failed to start on {dev.node}: "
                               f"{dev.error or 'it exited'}; see "
                               f"{run.run_dir / 'logs' / f'devices.{dev.node}.log'}")
        if ready == len(specs):
            return
        if time.monotonic() > deadline:
            raise RunError(f"only {ready}/{len(specs)} devices registered within "
                           f"{REGISTER_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)


def _start_command(run: _ClusterRun, dev: _Device) -> dict[str, Any]:
    begin, end = dev.interval
    at = max(run.start_at + begin, time.time() + START_LEAD_S)
    dev.started = True
    return {"cmd": "start", "at": at, "run_start": run.start_at,
            "end": run.start_at + min(end, run.cfg.duration_s)}


def _start_ready(run: _ClusterRun) -> None:
    """Send `start` to every ready device that has not had it, per node in one call."""
    by_node: dict[str, dict[str, Any]] = {}
    for device_id, dev in run.devices.items():
        if dev.ready and not dev.started and not dev.finished:
            by_node.setdefault(dev.node, {})[device_id] = _start_command(run, dev)
    for node, commands in by_node.items():
        _call(run, node, "start_devices", commands)


def _run_devices(run: _ClusterRun) -> None:
    run.start_at = time.time() + START_LEAD_S
    run.events.emit("run_clock", start_at=round(run.start_at, 6),
                    note="run time 0 on the driver's wall clock; each node starts its devices "
                         "at this instant of its own clock")
    _start_ready(run)
    duration = run.cfg.duration_s
    hard_stop = run.start_at + duration + run.cfg.devices.reply_timeout_ms / 1e3 + DRAIN_GRACE_S
    sampled = False
    last_status = 0.0
    live: dict[str, Any] = {}
    run.progress.phase("running")
    while True:
        now = time.time()
        t = now - run.start_at
        while run.agenda and run.agenda[0].at_s <= t:
            _act(run, run.agenda.pop(0), t)
        if all(d.finished for d in run.devices.values()) and not run.agenda:
            break
        if now > hard_stop:
            run.events.emit("drain_timeout", unfinished=[
                d for d, dev in run.devices.items() if not dev.finished])
            break
        time.sleep(max(0.0, POLL_S - (time.time() - now)))
        _poll(run)
        _start_ready(run)
        _watch_crashes(run, t)
        if now - last_status >= 1.0:
            last_status = now
            live = _live_status(run) or live
        live["done_devices"] = sum(d.done is not None for d in run.devices.values())
        if not sampled and t >= 0.6 * duration:
            sampled = True
            run.resources = _resources(run)
        run.progress.running(min(max(t, 0.0), duration), duration, live)
    if not sampled:
        run.resources = _resources(run)


def _poll(run: _ClusterRun, final: bool = False) -> None:
    """News from every agent: children's state, and their files' new bytes."""
    for node, answer in _call_all(run, "poll", final).items():
        _take(run, node, answer)


def _take(run: _ClusterRun, node: str, answer: dict[str, Any]) -> None:
    _write_chunks(run, node, answer["chunks"])
    by_key = {f"{d.spec.device_id}#{d.spec.incarnation}": d
              for d in [*run.retired, *run.devices.values()] if d.node == node}
    for key, state in answer["devices"].items():
        dev = by_key.get(key)
        if dev is None:
            continue
        dev.ready, dev.done, dev.error = state["ready"], state["done"], state["error"]
        dev.disk_full, dev.alive = state["disk_full"], state["alive"]
        dev.pid, dev.exitcode = state["pid"], state["exitcode"]
    server = answer.get("server")
    if node == run.server_node.name and server is not None:
        run.server_alive = server["alive"]


def _write_chunks(run: _ClusterRun, node: str, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        try:
            run.sink.write(node, chunk)
        except (BadChunk, ValueError) as exc:
            run.events.emit("bad_chunk", node=node, detail=str(exc)[:200])


def _stop_devices(run: _ClusterRun) -> None:
    _call_all(run, "stop_devices")
    deadline = time.time() + run.cfg.devices.reply_timeout_ms / 1e3 + DRAIN_GRACE_S
    try:
        while not all(d.finished for d in run.devices.values()) and time.time() < deadline:
            time.sleep(POLL_S)
            _poll(run)
            _log_exits(run)
    except KeyboardInterrupt:
        run.events.emit("killed")
        _call_all(run, "kill_all", timeout=5.0)


def _shutdown_agents(run: _ClusterRun) -> None:
    """Every agent ends its children and ships the rest of its files; then it is killed."""
    for node, answer in _call_all(run, "shutdown", timeout=30.0).items():
        _take(run, node, answer)
    for agent in run.agents.values():
        with contextlib.suppress(Exception):  # already gone with its node
            run.session.ray.kill(agent, no_restart=True)


def _resources(run: _ClusterRun) -> dict[str, Any]:
    """Per node: memory of devices and server, the agent's CPU; the driver's own CPU and
    memory; CPU per device over the run so far."""
    nodes = _call_all(run, "resources", timeout=10.0)
    driver = psutil.Process()
    cpu = driver.cpu_times()
    devices = sum(1 for d in run.devices.values() if not d.finished)
    uss = [(r["device_uss_mb"]["mean"], r["device_uss_mb"]["sampled"]) for r in nodes.values()
           if r["device_uss_mb"]["mean"] is not None]
    sampled = sum(n for _, n in uss)
    elapsed = max(1e-9, time.time() - run.start_at)
    device_cpu = sum(r["device_cpu_s"] for r in nodes.values())
    return {
        "nodes": nodes,
        "device_uss_mb": {"mean": round(sum(m * n for m, n in uss) / sampled, 2)
                          if sampled else None, "sampled": sampled},
        "driver_cpu_s": round(cpu.user + cpu.system, 3),
        "driver_rss_mb": round(driver.memory_info().rss / 2**20, 2),
        "agent_cpu_s": round(sum(r["agent_cpu_s"] for r in nodes.values()), 3),
        "device_cpu_s": round(device_cpu, 3),
        "device_cpu_percent_each": round(100 * device_cpu / max(1, devices) / elapsed, 3),
        "devices_running": devices,
        "cpu_count": psutil.cpu_count(),
        "load_avg_1m": round(psutil.getloadavg()[0], 2),
    }


# --- faults and crashes -----------------------------------------------------------------------


def _act(run: _ClusterRun, action: Action, t: float) -> None:
    """Carry out one planned action at run time `t`, through the agents."""
    if action.kind == "kill_device":
        dev = run.devices.get(action.target)
        if dev is None or dev.finished or dev.node in run.lost_nodes:
            run.events.emit("fault_skipped", fault=action.kind, device=action.target,
                            reason="device not running")
            return
        run.events.emit("fault", fault=action.kind, device=action.target, node=dev.node,
                        signal=action.signal, incarnation=dev.spec.incarnation)
        run.events.emit("device_kill", device=action.target, incarnation=dev.spec.incarnation)
        dev.killed = True
        _call(run, dev.node, "kill_device", action.target, action.signal)
    elif action.kind == "kill_node":
        node = action.target
        if node in run.lost_nodes or node not in run.agents:
            run.events.emit("fault_skipped", fault=action.kind, node=node,
                            reason="no agent running there")
            return
        _poll(run)  # what it has written so far
        on_node = [d for d in run.devices.values() if d.node == node and not d.finished]
        run.events.emit("fault", fault=action.kind, node=node, devices=len(on_node))
        run.events.emit("node_kill", node=node, devices=[d.spec.device_id for d in on_node])
        for dev in on_node:
            dev.killed = True
        if node == run.server_node.name:
            run.server_killed = True
        run.session.ray.kill(run.agents[node], no_restart=True)
        _node_lost(run, node, "killed (fault)")
    elif action.kind == "restart_device":
        _restart_device(run, action.target, t)
    elif action.kind == "join_device":
        assert action.until_s is not None
        _replace_device(run, action.target, (action.at_s + SPAWN_LEAD_S, action.until_s))
        run.events.emit("device_join", device=action.target,
                        at_s=round(action.at_s + SPAWN_LEAD_S, 3), until_s=action.until_s)
    elif action.kind == "kill_server":
        if not run.server_alive:
            run.events.emit("fault_skipped", fault=action.kind, reason="server not running")
            return
        run.server_statuses[-1] = fetch_status(run.server_url, run.token) \
            or run.server_statuses[-1]
        run.events.emit("fault", fault=action.kind, signal=action.signal)
        run.events.emit("server_kill", incarnation=len(run.server_statuses) - 1)
        run.server_killed = True
        _call(run, run.server_node.name, "kill_server", action.signal)
        run.server_alive = False
        _log_server_exit(run)
    elif action.kind == "restart_server":
        if not run.server_alive and run.server_node.name not in run.lost_nodes:
            port = urlsplit(run.server_url).port or 0
            if _start_server(run, port):
                run.events.emit("server_restart", incarnation=len(run.server_statuses) - 1)
    elif action.kind == "link_down":
        run.events.emit("fault", fault="link", device=action.target, detail=action.detail)
        run.events.emit("link_down", device=action.target, detail=action.detail)
    elif action.kind == "link_up":
        run.events.emit("link_up", device=action.target, detail=action.detail)


def _restart_device(run: _ClusterRun, device_id: str, t: float) -> None:
    old = run.devices.get(device_id)
    if old is None or not old.finished or old.node in run.lost_nodes:
        return
    end = min(old.interval[1], run.cfg.duration_s)
    if end - t < MIN_RESTART_LEFT_S:
        return
    dev = _replace_device(run, device_id, (t, end))
    run.events.emit("device_restart", device=device_id, incarnation=dev.spec.incarnation,
                    pid=dev.pid, node=dev.node)


def _replace_device(run: _ClusterRun, device_id: str, interval: Interval) -> _Device:
    old = run.devices[device_id]
    spec = dataclasses.replace(run.specs[device_id], incarnation=old.spec.incarnation + 1)
    _spawn(run, [(spec, interval, False)])
    return run.devices[device_id]


def _watch_crashes(run: _ClusterRun, t: float) -> None:
    _log_exits(run)
    for device_id, dev in run.devices.items():
        if dev.exit_logged and not dev.killed and dev.done is None \
                and run.cfg.devices.restart_dead and not dev.restart_planned \
                and not dev.disk_full and dev.node not in run.lost_nodes:
            dev.restart_planned = True
            _schedule(run, Action(t + run.cfg.devices.restart_delay_s, "restart_device",
                                  device_id))
    if not run.server_alive and not run.server_exit_logged and run.server_url:
        _log_server_exit(run)
        if not run.server_killed and run.cfg.server.restart_on_exit:
            _schedule(run, Action(t + SERVER_RESTART_DELAY_S, "restart_server"))


def _log_server_exit(run: _ClusterRun) -> None:
    if run.server_exit_logged:
        return
    run.server_exit_logged = True
    run.events.emit("server_exit", planned=run.server_killed,
                    incarnation=len(run.server_statuses) - 1, node=run.server_node.name)


def _schedule(run: _ClusterRun, action: Action) -> None:
    run.agenda.append(action)
    run.agenda.sort()


def _log_exits(run: _ClusterRun) -> None:
    """A `device_exit` for every process that ended without its `done` (as the local harness
    writes): the summary counts its unfinished samples as aborted."""
    for dev in [*run.devices.values(), *run.retired]:
        if dev.exit_logged or not dev.finished or dev.done is not None:
            continue
        dev.exit_logged = True
        lost = dev.node in run.lost_nodes
        run.events.emit("device_exit", device=dev.spec.device_id,
                        incarnation=dev.spec.incarnation, node=dev.node,
                        exitcode=dev.exitcode, planned=dev.killed,
                        clean=not lost and dev.exitcode == 0 and not dev.error,
                        error=dev.error or ("node lost" if lost else None),
                        disk_full=dev.disk_full)


def _live_status(run: _ClusterRun) -> dict[str, Any] | None:
    if not run.server_alive:
        return {"connected": 0, "queue": "-", "server_down": True}
    status = fetch_status(run.server_url, run.token)
    if status is None:
        return None
    run.server_statuses[-1] = status
    return live_view(status)
