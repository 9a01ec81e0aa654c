"""The one loop that runs a scenario, on this host or over a Ray cluster: start the server (and
IDN nodes), start the devices, start them at one instant, apply the timeline's faults, watch
crashes, stalls and the disk, stop, collect.

It decides everything and starts nothing itself: processes live on nodes (`testbed.nodes`),
each run by a `testbed.agent.NodeAgent` that the loop calls by method name. A local run is a
one-node cluster whose agent writes straight into the run folder; under `--ray` the agents'
answers also carry their files' new bytes, appended here as they arrive (`testbed.shipping`).
Either way the run folder ends up the same and `testbed.results.collect` reads it.

Clocks: every process measures its latencies on its own monotonic clock. What crosses hosts is
the common start instant (a wall-clock time: a node whose clock is off by d starts its devices
d early or late) and the `t` of events, stamped here when the loop learns of them (up to one
poll late). docs/cluster.md has the details.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import psutil
import tomli_w

from cascade_testbed.common.config import (
    DeviceSpec,
    IdnNode,
    ScenarioConfig,
    ScenarioError,
    device_specs,
)
from cascade_testbed.common.events import EventLog
from cascade_testbed.common.files import as_disk_full, is_disk_error
from cascade_testbed.common.scenario_file import scenario_to_dict
from cascade_testbed.testbed import cgroups, provenance
from cascade_testbed.testbed.agent import SERVER, DeviceJob, ServerJob
from cascade_testbed.testbed.cgroups import CgroupPlan
from cascade_testbed.testbed.cluster.placement import PlacementError
from cascade_testbed.testbed.faults import plan_faults
from cascade_testbed.testbed.nodes import Nodes, Placement
from cascade_testbed.testbed.observe import fetch_status, live_view, server_facts
from cascade_testbed.testbed.plan.prepare import PLAN_FILE, prepare
from cascade_testbed.testbed.preflight import CheckFailed, check_scenario
from cascade_testbed.testbed.results.collect import RunFacts, collect
from cascade_testbed.testbed.shipping import BadChunk, Chunk, Sink
from cascade_testbed.testbed.stalls import Stall, StallWatch
from cascade_testbed.testbed.stop_signals import StopSignals
from cascade_testbed.testbed.timeline import Action, Interval, activity, join_actions
from cascade_testbed.testbed.versions import collect_versions

log = logging.getLogger(__name__)

TOKEN_FILE = ".token"
REGISTER_TIMEOUT_S = 60.0
DRAIN_GRACE_S = 10.0
SERVER_RESTART_DELAY_S = 1.0
"""How long a crashed server stays down before the harness restarts it (if asked to)."""
MIN_RESTART_LEFT_S = 1.0
"""A device is not restarted with less than this much of the run left."""
SPAWN_LEAD_S = 1.5
"""A device that joins mid-run is started this long before it is due, to be ready in time."""
STATUS_EVERY_S = 1.0
"""How often the live view reads the server's status (and the stall watch hears it)."""


class RunError(RuntimeError):
    """The run could not start (server failed, devices did not register)."""


class Progress(Protocol):
    """What the harness reports while it runs; the CLI draws it, tests ignore it."""

    def phase(self, text: str) -> None: ...
    def registered(self, done: int, total: int) -> None: ...
    def running(self, elapsed_s: float, duration_s: float, live: dict[str, Any]) -> None: ...


class Quiet:
    """Progress that only logs the phases."""

    def phase(self, text: str) -> None:
        log.info("%s", text)

    def registered(self, done: int, total: int) -> None:
        pass

    def running(self, elapsed_s: float, duration_s: float, live: dict[str, Any]) -> None:
        pass


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    interrupted: bool = False
    stopped_by: str = ""
    """The signal that stopped it early ("SIGINT", "SIGTERM", "SIGHUP"), "" if none did."""


@dataclass
class DeviceView:
    """The supervisor's view of one device process (an incarnation), from its node's polls."""

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
    """Killed on purpose (a fault), so its exit is not a crash."""
    exit_logged: bool = False
    restart_planned: bool = False
    pid: int | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None or not self.alive

    @property
    def key(self) -> str:
        return f"{self.spec.device_id}#{self.spec.incarnation}"


@dataclass
class ServerView:
    """The server process (or one IDN node's) as last heard of."""

    name: str
    node: str
    url: str = ""
    alive: bool = False
    killed: bool = False
    exit_logged: bool = False
    exitcode: int | None = None
    pid: int | None = None


@dataclass
class _Run:
    cfg: ScenarioConfig
    run_dir: Path
    events: EventLog
    progress: Progress
    nodes: Nodes
    specs: dict[str, DeviceSpec]
    spans: dict[str, tuple[Interval, ...]]
    """When each device is connected (run time); see `testbed.timeline.activity`."""
    placement: Placement
    token: str
    """The run's token: devices present it, the harness reads the server's status with it;
    also in the run folder's `.token` (mode 0600) for tools that watch a live run."""
    sink: Sink
    agenda: list[Action] = field(default_factory=list)
    servers: dict[str, ServerView] = field(default_factory=dict)
    """`SERVER` first, then IDN nodes, parents before children."""
    server_statuses: list[dict[str, Any]] = field(default_factory=list)
    """The last status heard from each server process (one per restart)."""
    node_statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The last status of each IDN node below the repository."""
    devices: dict[str, DeviceView] = field(default_factory=dict)
    """The current process of each device."""
    retired: list[DeviceView] = field(default_factory=list)
    """Earlier processes of restarted devices."""
    lost_nodes: set[str] = field(default_factory=set)
    start_at: float = 0.0
    """Wall-clock time of run time 0 (when devices start generating)."""
    resources: dict[str, Any] = field(default_factory=dict)
    startup_s: float | None = None
    interrupted: bool = False
    disk_full: str = ""
    """Why the run stopped early: "disk full while writing <file>"."""
    stops: StopSignals = field(default_factory=StopSignals)
    stall_watch: StallWatch = field(default_factory=StallWatch)
    """Whether the server answers its status polls in time (`testbed.stalls`)."""
    cpu: CgroupPlan | None = None
    """`devices.cpu_limit = "cgroup"`: the device processes' cgroups (`testbed.cgroups`)."""

    @property
    def server(self) -> ServerView:
        return self.servers[SERVER]

    def where(self, node: str) -> dict[str, str]:
        """`node=` for an event, in a run over several nodes."""
        return {"node": node} if self.nodes.distributed else {}

    def devices_log(self, node: str) -> Path:
        return self.run_dir / "logs" / (f"devices.{node}.log" if self.nodes.distributed
                                        else "devices.log")


def write_token(path: Path, token: str) -> None:
    """Readable by the run's owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def supervise(cfg: ScenarioConfig, run_dir: Path, nodes: Nodes, progress: Progress | None = None,
              *, checked: bool = False,
              on_listening: Callable[[str], None] | None = None) -> RunResult:
    """Run one scenario end to end on `nodes` and write its run folder. The scenario is
    checked first (`testbed.preflight`, unless the caller just did: `checked`), before the
    folder exists. Ctrl-C (or SIGTERM/SIGHUP) stops it cleanly: devices stop generating,
    every sample already generated is answered, records are flushed; a second one kills. A
    full disk stops it the same way, and the summary says so. `on_listening` gets the
    server's URL as soon as it listens. `RunError` (one line for the user) when it cannot
    start; a folder nothing ran in is removed."""
    if not checked:
        try:
            check_scenario(cfg)
        except CheckFailed as exc:
            raise RunError(f"bad scenario: {exc}") from None
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not empty")
    created = not run_dir.exists()
    try:
        return _supervise(cfg, run_dir, nodes, progress, on_listening)
    except RunError:
        if created and _only_prepared(run_dir):  # nothing ran: leave no half-written folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except OSError as exc:  # the harness's own writes before the run could start
        if is_disk_error(exc):
            raise RunError(str(as_disk_full(exc, getattr(exc, "path", None)
                                            or exc.filename or run_dir))) from None
        raise


def _only_prepared(run_dir: Path) -> bool:
    """The folder holds at most what `prepare` writes (a gear plan) and the run's provenance:
    no process has run."""
    return run_dir.is_dir() and all(p.name in (PLAN_FILE, provenance.PROVENANCE_FILE)
                                    for p in run_dir.iterdir())


def _supervise(cfg: ScenarioConfig, run_dir: Path, nodes: Nodes, progress: Progress | None,
               on_listening: Callable[[str], None] | None) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    provenance.write(run_dir, cfg)  # what was asked for, before the run prepares it
    try:
        cfg = prepare(cfg, run_dir)
    except (ValueError, LookupError) as exc:
        raise RunError(f"cannot prepare the run: {exc}") from None
    t_begin = time.monotonic()  # start-up counts from here: planning is not start-up
    specs = device_specs(cfg)
    idn_below = [n.name for n in _parents_first(cfg)]
    try:
        plan = plan_faults(cfg, [(s.device_id, s.tier) for s in specs])
    except ScenarioError as exc:
        raise RunError(f"bad scenario: {exc}") from None
    try:
        placement = nodes.place(cfg, [(s.device_id, s.tier) for s in specs], idn_below)
    except PlacementError as exc:
        raise RunError(f"bad scenario for this cluster: {exc}") from None
    why = nodes.kill_targets_error(sorted({a.target for a in plan.actions
                                           if a.kind == "kill_node"}))
    if why:
        raise RunError(f"bad scenario: {why}")
    specs = [dataclasses.replace(s, link_faults=plan.links.get(s.device_id, ())) for s in specs]
    cpu = _cpu_plan(cfg, run_dir, nodes)
    spans = dict(zip([s.device_id for s in specs], activity(cfg), strict=True))
    joins = join_actions(list(spans), list(spans.values()))
    (run_dir / "scenario.toml").write_text(tomli_w.dumps(scenario_to_dict(cfg)))
    (run_dir / "versions.json").write_text(json.dumps(collect_versions(), indent=2))
    token = secrets.token_urlsafe(24)
    write_token(run_dir / TOKEN_FILE, token)
    run = _Run(cfg, run_dir, EventLog(run_dir / "events.harness.jsonl", "harness"),
               progress or Quiet(), nodes,
               {s.device_id: s for s in specs if spans[s.device_id]}, spans, placement,
               token, Sink(run_dir),
               agenda=sorted([*plan.actions, *(dataclasses.replace(
                   a, at_s=max(0.0, a.at_s - SPAWN_LEAD_S)) for a in joins)]))
    run.servers = {name: ServerView(name, placement.servers[name])
                   for name in (SERVER, *idn_below)}
    run.cpu = cpu
    if cpu is not None:
        run.events.emit("cpu_limit", **cpu.describe())
    run.events.emit("run_start", scenario=cfg.name, policy=cfg.policy.name,
                    devices=cfg.devices.count, faults_planned=plan.injected,
                    **nodes.describe())
    placed = nodes.placement_event(placement, {s.device_id: s.tier for s in specs})
    if placed:
        run.events.emit("placement", **placed)
    run.stops.install()
    try:
        try:
            _start_agents(run)
            _start_server(run)
            if on_listening is not None:
                on_listening(run.server.url)
            _start_idn_nodes(run)
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
            if not run.resources and run.devices:  # stopped before they were sampled
                with run.stops.deferred():
                    run.resources = _resources(run)
            _stop_devices(run)
        _stop_servers(run)
    finally:
        run.stops.restore()
        _shutdown(run)
        run.events.emit("run_end", interrupted=run.interrupted)
        run.events.close()
    server = server_facts(run.server_statuses)
    if run.node_statuses:
        server["idn_nodes"] = {name: {k: st.get(k) for k in ("idn", "totals")}
                               for name, st in run.node_statuses.items()}
    disk_full = run.disk_full or (str(run.events.failure) if run.events.failure else "")
    stopped_by = run.stops.name if run.interrupted else ""
    facts = RunFacts(interrupted=run.interrupted, startup_s=run.startup_s,
                     resources=run.resources, server=server, disk_full=disk_full,
                     stopped_by=stopped_by)
    summary = collect(run_dir, facts, cfg)  # with `nodes` from a cluster's placement event
    return RunResult(run_dir, summary, run.interrupted, stopped_by)


def _cpu_plan(cfg: ScenarioConfig, run_dir: Path, nodes: Nodes) -> CgroupPlan | None:
    """The cgroups of a `cpu_limit = "cgroup"` run, or `RunError` saying why this host
    cannot give them (before any process starts)."""
    if cfg.devices.cpu_limit != "cgroup":
        return None
    if nodes.distributed:
        raise RunError("bad scenario: devices.cpu_limit = 'cgroup' runs on one host only "
                       "(not over a Ray cluster)")
    try:
        return cgroups.plan(cfg, run_dir)
    except cgroups.CgroupUnavailable as exc:
        raise RunError(f"devices.cpu_limit = 'cgroup': {exc}") from None


def _parents_first(cfg: ScenarioConfig) -> list[IdnNode]:
    """The IDN nodes below the repository, each after its parent (a node needs its parent's
    URL to start)."""
    idn = cfg.idn
    if not idn.nodes:
        return []
    known = {idn.root.name}
    todo = [n for n in idn.nodes if n.parent is not None]
    out = []
    while todo:
        node = next(n for n in todo if n.parent in known)
        todo.remove(node)
        known.add(node.name)
        out.append(node)
    return out


# --- agents -----------------------------------------------------------------------------------


def _start_agents(run: _Run) -> None:
    used = run.placement.used()
    if run.nodes.distributed:
        run.progress.phase(f"starting {len(used)} node agents")
    infos = run.nodes.start(used, run.run_dir.name[:40] or "run",
                            lambda node, why: _node_lost(run, node, why))
    missing = sorted(used - set(infos)) if run.nodes.distributed else []
    if missing:
        raise RunError(f"node agents did not start on {', '.join(missing)}")
    for name, info in infos.items():
        run.events.emit("agent_started", **{**info, "node": name})


def _node_lost(run: _Run, node: str, why: str) -> None:
    """A node's agent is gone: its processes died with it. Its devices' unfinished samples
    are aborted (the records shipped so far say which), as for a crashed device."""
    if node in run.lost_nodes:
        return
    run.lost_nodes.add(node)
    run.events.emit("node_lost", node=node, reason=why)
    for dev in [*run.devices.values(), *run.retired]:
        if dev.node == node and not dev.finished:
            dev.alive = False
    for server in run.servers.values():
        if server.node == node:
            server.alive = False
    _log_exits(run)


def _poll(run: _Run, wait_s: float = 0.0, final: bool = False) -> None:
    """News from every agent: the children's state, and their files' new bytes. A stop
    signal meanwhile takes effect once the answers are in: the bytes in them are not sent
    twice."""
    with run.stops.deferred():
        for node, answer in run.nodes.call_all("poll", wait_s, final).items():
            _take(run, node, answer)
    run.stops.check()


def _take(run: _Run, node: str, answer: dict[str, Any]) -> None:
    _write_chunks(run, node, answer["chunks"])
    by_key = {d.key: d for d in [*run.retired, *run.devices.values()] if d.node == node}
    for key, state in answer["devices"].items():
        dev = by_key.get(key)
        if dev is None:
            continue
        dev.ready, dev.done, dev.error = state["ready"], state["done"], state["error"]
        dev.disk_full, dev.alive = state["disk_full"], state["alive"]
        dev.pid, dev.exitcode = state["pid"], state["exitcode"]
    for name, state in answer["servers"].items():
        server = run.servers.get(name)
        if server is not None and server.node == node:
            server.alive, server.exitcode = state["alive"], state["exitcode"]


def _write_chunks(run: _Run, node: str, chunks: list[Chunk]) -> None:
    """Append a node's new bytes to the run folder; once the disk refused one, the rest
    would only leave gaps, so they are dropped (the run is stopping for it)."""
    for chunk in chunks:
        if run.disk_full:
            return
        try:
            run.sink.write(node, chunk)
        except (BadChunk, ValueError) as exc:
            run.events.emit("bad_chunk", node=node, detail=str(exc)[:200])
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            if not run.disk_full:
                run.disk_full = str(as_disk_full(exc, exc.filename or run.run_dir))


def _shutdown(run: _Run) -> None:
    """Every agent ends its children and ships the rest of its files; then it is released."""
    try:
        for node, answer in run.nodes.call_all("shutdown", timeout=30.0).items():
            _take(run, node, answer)
    finally:
        run.nodes.close()
    _log_exits(run)


# --- servers ----------------------------------------------------------------------------------


def _server_cfg(run: _Run, node: str, port: int | None) -> ScenarioConfig:
    changes: dict[str, Any] = {}
    host = run.nodes.host(node)
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if not changes:
        return run.cfg
    return dataclasses.replace(run.cfg, server=dataclasses.replace(run.cfg.server, **changes))


def _start_server(run: _Run, port: int | None = None) -> bool:
    """Start the server process on its node; the first one binds the scenario's port (0: any
    free one), restarts reuse it (devices reconnect to the same URL). Whether it listens."""
    server = run.server
    on = f" on {server.node}" if run.nodes.distributed else ""
    run.progress.phase(f"starting server{on}" if port is None else "restarting server")
    incarnation = len(run.server_statuses)
    run.server_statuses.append({})
    answer = run.nodes.call(server.node, "start_server", ServerJob(
        SERVER, _server_cfg(run, server.node, port), run.token, incarnation))
    if not answer or "error" in answer:
        why = (answer or {}).get("error", "its node is lost")
        if port is None:
            raise RunError(f"server did not start{on}: {why}; see "
                           f"{run.run_dir / 'logs' / 'server.log'}")
        run.events.emit("server_restart_failed", reason=why)
        return False
    server.url, server.pid, server.alive = answer["url"], answer["pid"], True
    server.killed = server.exit_logged = False
    server.exitcode = None
    run.events.emit("server_listening", url=server.url, incarnation=incarnation,
                    pid=server.pid, **run.where(server.node))
    return True


def _start_idn_nodes(run: _Run) -> None:
    """IDN nodes below the repository, parents before children."""
    parent = {n.name: str(n.parent) for n in run.cfg.idn.nodes}
    urls = {run.cfg.idn.root.name: run.server.url} if run.cfg.idn.nodes else {}
    for name, view in run.servers.items():  # parents first (`_parents_first`)
        if name == SERVER:
            continue
        run.progress.phase(f"starting idn node {name}")
        answer = run.nodes.call(view.node, "start_server", ServerJob(
            name, _server_cfg(run, view.node, 0), run.token, parent_url=urls[parent[name]]))
        if not answer or "error" in answer:
            why = (answer or {}).get("error", "its node is lost")
            raise RunError(f"idn node {name} did not start: {why}; see "
                           f"{run.run_dir / 'logs' / f'node-{name}.log'}")
        view.url, view.pid, view.alive = answer["url"], answer["pid"], True
        urls[name] = view.url
        run.events.emit("node_listening", node=name, url=view.url, pid=view.pid,
                        **({"host_node": view.node} if run.nodes.distributed else {}))


def _stop_servers(run: _Run) -> None:
    """IDN nodes children first (nothing is sent up to a node that has stopped), then the
    server."""
    for name in reversed(list(run.servers)):
        server = run.servers[name]
        if not server.alive or server.node in run.lost_nodes:
            continue
        if name == SERVER:
            run.progress.phase("stopping server")
        status = run.nodes.call(server.node, "stop_server", name)
        server.alive = False
        if status:
            if name == SERVER:
                run.server_statuses[-1] = status
            else:
                run.node_statuses[name] = status


# --- devices ----------------------------------------------------------------------------------


def _spawn(run: _Run, jobs: list[tuple[DeviceSpec, Interval, bool]]) -> None:
    """Start device processes, each on its node, each talking to its access point (in an
    IDN, its access node)."""
    by_node: dict[str, list[DeviceJob]] = {}
    for spec, interval, wait in jobs:
        spec = dataclasses.replace(spec, duration_s=interval[1] - interval[0])
        node = run.placement.devices[spec.device_id]
        old = run.devices.get(spec.device_id)
        if old is not None:
            run.retired.append(old)
        run.devices[spec.device_id] = DeviceView(spec, node, interval)
        access = run.servers.get(spec.node) if spec.node else None
        url = access.url if access is not None else run.server.url
        by_node.setdefault(node, []).append(DeviceJob(spec, url, run.token, wait, interval,
                                                      run.cpu))
    for node, node_jobs in by_node.items():
        pids = run.nodes.call(node, "spawn_devices", node_jobs, timeout=60.0) or {}
        for device_id, pid in pids.items():
            run.devices[device_id].pid = pid


def _start_devices(run: _Run) -> None:
    """Start every device process; those there from the start register before the run
    begins, those that join later wait to connect until they are due."""
    specs = list(run.specs.values())
    on = f" on {len(run.placement.used())} nodes" if run.nodes.distributed else ""
    run.progress.phase(f"starting {len(specs)} devices{on}")
    _spawn(run, [(s, run.spans[s.device_id][0], run.spans[s.device_id][0][0] == 0)
                 for s in specs])
    spawned: dict[str, Any] = {"pids": {d: v.pid for d, v in run.devices.items()}}
    if run.nodes.distributed:
        spawned = {"nodes": {n: sum(d.node == n for d in run.devices.values())
                             for n in sorted(run.placement.used())}}
    run.events.emit("devices_spawned", count=len(specs), **spawned)
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    run.progress.registered(0, len(specs))
    while True:
        _poll(run, run.nodes.poll_s)
        ready = sum(d.ready for d in run.devices.values())
        run.progress.registered(ready, len(specs))
        for dev in run.devices.values():
            if dev.error or (dev.finished and not dev.ready):
                raise RunError(f"device {dev.spec.device_id} failed to start"
                               f"{' on ' + dev.node if run.nodes.distributed else ''}: "
                               f"{dev.error or 'it exited'}; see {run.devices_log(dev.node)}")
        if ready == len(specs):
            return
        if time.monotonic() > deadline:
            raise RunError(f"only {ready}/{len(specs)} devices registered within "
                           f"{REGISTER_TIMEOUT_S:.0f} s")


def _start_ready(run: _Run) -> None:
    """Tell every ready device that has not heard it when to start (its interval's start,
    or as soon as it can) and when to stop; one call per node."""
    by_node: dict[str, dict[str, Any]] = {}
    for device_id, dev in run.devices.items():
        if dev.ready and not dev.started and not dev.finished:
            begin, end = dev.interval
            at = max(run.start_at + begin, time.time() + run.nodes.start_lead_s)
            dev.started = True
            by_node.setdefault(dev.node, {})[device_id] = {
                "cmd": "start", "at": at, "run_start": run.start_at,
                "end": run.start_at + min(end, run.cfg.duration_s)}
    for node, commands in by_node.items():
        run.nodes.call(node, "start_devices", commands)


def _run_devices(run: _Run) -> None:
    run.start_at = time.time() + run.nodes.start_lead_s
    note = "run time 0 (devices start generating); fault times count from it"
    if run.nodes.distributed:
        note += "; on the driver's wall clock, each node starts its devices at this instant " \
                "of its own clock"
    run.events.emit("run_clock", start_at=round(run.start_at, 6), note=note)
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
        _poll(run, run.nodes.poll_s)
        full = _disk_full(run)
        if full:
            run.disk_full = full
            run.events.emit("disk_full", detail=full)
            run.progress.phase(f"{full}: stopping the run (what was written is kept)")
            _stop_devices(run)
            break
        _start_ready(run)
        _watch_crashes(run, t)
        if now - last_status >= STATUS_EVERY_S:
            last_status = now
            live = _live_status(run) or live
        live["done_devices"] = sum(d.done is not None for d in run.devices.values())
        if not sampled and t >= 0.6 * duration:
            sampled = True
            run.resources = _resources(run)
        run.progress.running(min(max(t, 0.0), duration), duration, live)
    _stalled(run, run.stall_watch.end(time.time() - run.start_at))
    if not sampled:
        run.resources = _resources(run)


def _disk_full(run: _Run) -> str:
    """Why the run must stop for its disk: a device, the harness's event log or the copy of a
    node's files could not write ("" while all is well)."""
    for dev in [*run.devices.values(), *run.retired]:
        if dev.disk_full and dev.error:
            return dev.error
    if run.disk_full:
        return run.disk_full
    return str(run.events.failure) if run.events.failure else ""


def _stop_devices(run: _Run) -> None:
    """Devices stop generating and answer what they have; a second Ctrl-C kills them."""
    run.nodes.call_all("stop_devices")
    deadline = time.time() + run.cfg.devices.reply_timeout_ms / 1e3 + DRAIN_GRACE_S
    try:
        while not all(d.finished for d in run.devices.values()) and time.time() < deadline:
            _poll(run, run.nodes.poll_s)
            _log_exits(run)
    except KeyboardInterrupt:
        run.events.emit("killed")
        run.nodes.call_all("kill_all", timeout=5.0)


def _resources(run: _Run) -> dict[str, Any]:
    """Memory of the devices (USS) and the server (RSS), CPU per device over the run so far;
    per node and the harness's own in a run over several nodes."""
    nodes = run.nodes.call_all("resources", timeout=10.0)
    rows = list(nodes.values())
    uss = [r["device_uss_mb"] for r in rows if r["device_uss_mb"]["mean"] is not None]
    sampled = sum(u["sampled"] for u in uss)
    devices = sum(1 for d in run.devices.values() if not d.finished)
    elapsed = max(1e-9, time.time() - run.start_at)
    device_cpu = sum(r["device_cpu_s"] for r in rows)
    server = nodes.get(run.server.node) or {}
    out: dict[str, Any] = {
        "device_uss_mb": {
            "mean": round(sum(u["mean"] * u["sampled"] for u in uss) / sampled, 2)
            if sampled else None,
            "max": max(u["max"] for u in uss) if uss else None, "sampled": sampled},
        "server_rss_mb": server.get("server_rss_mb"),
        "device_cpu_s": round(device_cpu, 3),
        "device_cpu_percent_each": round(100 * device_cpu / max(1, devices) / elapsed, 3),
        "devices_running": devices,
        "cpu_count": psutil.cpu_count(),
        "load_avg_1m": round(psutil.getloadavg()[0], 2),
    }
    if run.nodes.distributed:
        harness = psutil.Process()
        cpu = harness.cpu_times()
        out.update(nodes=nodes, driver_cpu_s=round(cpu.user + cpu.system, 3),
                   driver_rss_mb=round(harness.memory_info().rss / 2**20, 2),
                   agent_cpu_s=round(sum(r["agent_cpu_s"] for r in rows), 3))
    return out


# --- faults and crashes -----------------------------------------------------------------------


def _act(run: _Run, action: Action, t: float) -> None:
    """Carry out one planned action at run time `t`, through the agents."""
    if action.kind == "kill_device":
        dev = run.devices.get(action.target)
        if dev is None or dev.finished or dev.node in run.lost_nodes:
            run.events.emit("fault_skipped", fault=action.kind, device=action.target,
                            reason="device not running")
            return
        run.events.emit("fault", fault=action.kind, device=action.target,
                        signal=action.signal, incarnation=dev.spec.incarnation,
                        **run.where(dev.node))
        run.events.emit("device_kill", device=action.target, incarnation=dev.spec.incarnation)
        dev.killed = True
        run.nodes.call(dev.node, "kill_device", action.target, action.signal)
    elif action.kind == "kill_node":
        _kill_node(run, action.target)
    elif action.kind == "restart_device":
        _restart_device(run, action.target, t)
    elif action.kind == "join_device":
        assert action.until_s is not None
        _replace_device(run, action.target, (action.at_s + SPAWN_LEAD_S, action.until_s))
        run.events.emit("device_join", device=action.target,
                        at_s=round(action.at_s + SPAWN_LEAD_S, 3), until_s=action.until_s)
    elif action.kind == "kill_server":
        _kill_server(run, action)
    elif action.kind == "restart_server":
        server = run.server
        if not server.alive and server.node not in run.lost_nodes \
                and _start_server(run, urlsplit(server.url).port or 0):
            run.events.emit("server_restart", incarnation=len(run.server_statuses) - 1)
    elif action.kind == "link_down":
        run.events.emit("fault", fault="link", device=action.target, detail=action.detail)
        run.events.emit("link_down", device=action.target, detail=action.detail)
    elif action.kind == "link_up":
        run.events.emit("link_up", device=action.target, detail=action.detail)


def _kill_node(run: _Run, node: str) -> None:
    if node in run.lost_nodes or node not in run.placement.used():
        run.events.emit("fault_skipped", fault="kill_node", node=node,
                        reason="no agent running there")
        return
    _poll(run)  # what it has written so far
    on_node = [d for d in run.devices.values() if d.node == node and not d.finished]
    run.events.emit("fault", fault="kill_node", node=node, devices=len(on_node))
    run.events.emit("node_kill", node=node, devices=[d.spec.device_id for d in on_node])
    for dev in on_node:
        dev.killed = True
    for server in run.servers.values():
        if server.node == node:
            server.killed = True
    run.nodes.kill(node)
    _node_lost(run, node, "killed (fault)")


def _kill_server(run: _Run, action: Action) -> None:
    server = run.server
    if not server.alive:
        run.events.emit("fault_skipped", fault=action.kind, reason="server not running")
        return
    run.server_statuses[-1] = fetch_status(server.url, run.token) or run.server_statuses[-1]
    run.events.emit("fault", fault=action.kind, signal=action.signal)
    run.events.emit("server_kill", incarnation=len(run.server_statuses) - 1)
    server.killed = True
    server.exitcode = run.nodes.call(server.node, "kill_server", SERVER, action.signal)
    server.alive = False
    _log_server_exit(run)


def _restart_device(run: _Run, device_id: str, t: float) -> None:
    """Bring a killed or crashed device back for the rest of its current interval."""
    old = run.devices.get(device_id)
    if old is None or not old.finished or old.node in run.lost_nodes:
        return  # still (or again) running, or its node is gone
    end = min(old.interval[1], run.cfg.duration_s)
    if end - t < MIN_RESTART_LEFT_S:
        return
    dev = _replace_device(run, device_id, (t, end))
    run.events.emit("device_restart", device=device_id, incarnation=dev.spec.incarnation,
                    pid=dev.pid, **run.where(dev.node))


def _replace_device(run: _Run, device_id: str, interval: Interval) -> DeviceView:
    """A new process (the next incarnation) for a device, generating during `interval`."""
    old = run.devices[device_id]
    spec = dataclasses.replace(run.specs[device_id], incarnation=old.spec.incarnation + 1)
    _spawn(run, [(spec, interval, False)])
    return run.devices[device_id]


def _watch_crashes(run: _Run, t: float) -> None:
    """Notice processes that died on their own; restart them if the scenario says so."""
    _log_exits(run)
    for device_id, dev in run.devices.items():
        if dev.exit_logged and not dev.killed and dev.done is None \
                and run.cfg.devices.restart_dead and not dev.restart_planned \
                and not dev.disk_full and dev.node not in run.lost_nodes:
            dev.restart_planned = True
            _schedule(run, Action(t + run.cfg.devices.restart_delay_s, "restart_device",
                                  device_id))
    server = run.server
    if not server.alive and not server.exit_logged and server.url:
        _log_server_exit(run)
        if not server.killed and run.cfg.server.restart_on_exit:
            _schedule(run, Action(t + SERVER_RESTART_DELAY_S, "restart_server"))


def _log_server_exit(run: _Run) -> None:
    server = run.server
    if server.exit_logged:
        return
    server.exit_logged = True
    run.events.emit("server_exit", exitcode=server.exitcode, planned=server.killed,
                    incarnation=len(run.server_statuses) - 1, **run.where(server.node))


def _schedule(run: _Run, action: Action) -> None:
    run.agenda.append(action)
    run.agenda.sort()


def _log_exits(run: _Run) -> None:
    """A `device_exit` for every process that ended without its `done`: the summary counts
    its unfinished samples as aborted."""
    for dev in [*run.devices.values(), *run.retired]:
        if dev.exit_logged or not dev.finished or dev.done is not None:
            continue
        dev.exit_logged = True
        lost = dev.node in run.lost_nodes
        run.events.emit("device_exit", device=dev.spec.device_id,
                        incarnation=dev.spec.incarnation, exitcode=dev.exitcode,
                        planned=dev.killed,
                        clean=not lost and dev.exitcode == 0 and not dev.error,
                        error=dev.error or ("node lost" if lost else None),
                        disk_full=dev.disk_full, **run.where(dev.node))


def _live_status(run: _Run) -> dict[str, Any] | None:
    server = run.server
    if not server.alive:
        # A dead server is a death (or a planned kill), not a stall: a gap still open is
        # closed here, and the polls of a restarted server start afresh.
        _stalled(run, run.stall_watch.end(time.time() - run.start_at))
        return {"connected": 0, "queue": "-", "server_down": True}
    t, t0 = time.time() - run.start_at, time.monotonic()
    status = fetch_status(server.url, run.token)
    _stalled(run, run.stall_watch.poll(t, status is not None, time.monotonic() - t0))
    if status is None:
        return None
    run.server_statuses[-1] = status
    return live_view(status)


def _stalled(run: _Run, stall: Stall | None) -> None:
    """Record a stall the watch reports (None: none ended)."""
    if stall is None:
        return
    run.events.emit("server_stall", **stall.as_event())
    run.progress.phase(f"the server did not answer for {stall.duration_s:.1f} s")
