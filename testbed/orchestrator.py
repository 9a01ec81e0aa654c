"""Start a run's server and device processes, run them, inject the scenario's faults, stop
everything cleanly, and write the run folder.

The harness talks to each child over a pipe (ready/start/stop/done) and does not load the
device or server packages itself: children run an entry point of `testbed.launch` in a process
forked from a forkserver that has both packages preloaded, which also lets 40+ device processes
share the numpy/onnxruntime/aiohttp pages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import multiprocessing.forkserver
import multiprocessing.spawn
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import psutil
import tomli_w

from common.config import DeviceSpec, ScenarioConfig, ScenarioError, device_specs
from common.events import EventLog
from common.files import as_disk_full, is_disk_error
from common.names import policy_label
from common.scenario_file import scenario_to_dict
from testbed import launch, provenance
from testbed.children import Child, poll, reap, recv, send, spawn
from testbed.faults import FaultPlan, plan_faults
from testbed.observe import fetch_status, live_view, sample_resources, server_facts
from testbed.plan.prepare import PLAN_FILE, prepare
from testbed.preflight import CheckFailed, check_scenario
from testbed.results.collect import RunFacts, collect
from testbed.stalls import Stall, StallWatch
from testbed.timeline import Action, Interval, activity, join_actions
from testbed.versions import collect_versions

log = logging.getLogger(__name__)

TOKEN_FILE = ".token"
SERVER_START_TIMEOUT_S = 60.0
REGISTER_TIMEOUT_S = 60.0
START_LEAD_S = 0.3
"""Devices get the common start time this far ahead, so all of them receive it in time."""
DRAIN_GRACE_S = 10.0
SERVER_RESTART_DELAY_S = 1.0
"""How long a crashed server stays down before the harness restarts it (if asked to)."""
MIN_RESTART_LEFT_S = 1.0
"""A device is not restarted with less than this much of the run left."""
SPAWN_LEAD_S = 1.5
"""A device that joins mid-run is started this long before it is due, to be ready in time."""
DEVICE_MEMORY_MB = 16
"""Unique memory of one device process with room to spare: measured USS 9.9-10.4 MB at 10 and
100 devices (docs/density.md). 40 MB refused 1,000 devices on a 24 GiB host that holds them."""
BASE_MEMORY_MB = 1024
"""The harness, the server and the forkserver's shared pages."""
PRELOAD = ["__main__", "testbed.launch", "emulated_devices.main", "emulated_devices.preload",
           "server.main"]
"""Imported once by the forkserver. `__main__` is there because multiprocessing otherwise
re-imports the harness's main module (typer, rich, ...) in every child: ~0.1 s of CPU each
(and only works with `_start_forkserver`)."""


class RunError(RuntimeError):
    """The run could not start (server failed, devices did not register)."""


class Progress(Protocol):
    """What the harness reports while it runs; the CLI draws it, tests ignore it."""

    def phase(self, text: str) -> None: ...
    def registered(self, done: int, total: int) -> None: ...
    def running(self, elapsed_s: float, duration_s: float, live: dict[str, Any]) -> None: ...


class _Quiet:
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


STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run cleanly: Ctrl-C, and what `timeout`, systemd, `docker stop`, CI
cancellation and a closed terminal send."""


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP during a run. Each raises `KeyboardInterrupt`, so they all
    stop the run the way the first Ctrl-C does; the first one's number is kept for the exit
    code. One raised while the interpreter runs a finalizer (a `__del__`, a weakref callback)
    is printed and dropped, and the run would go on; so they are also counted, and the run's
    loops call `check` after every poll to raise the ones that were dropped."""

    def __init__(self) -> None:
        self.count = 0
        self.handled = 0
        self.first: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum
        raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return signal.Signals(self.first).name if self.first is not None else "SIGINT"

    def handled_all(self) -> None:
        self.handled = self.count

    def check(self) -> None:
        if self.count > self.handled:
            self.handled = self.count
            raise KeyboardInterrupt


@dataclass
class _Run:
    cfg: ScenarioConfig
    run_dir: Path
    events: EventLog
    progress: Progress
    ctx: Any
    plan: FaultPlan
    specs: dict[str, DeviceSpec]
    spans: dict[str, tuple[Interval, ...]]
    """When each device is connected (run time); see `testbed.timeline.activity`."""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    """The run's token: devices present it, the harness reads the server's status with it;
    also in the run folder's `.token` (mode 0600) for tools that watch a live run."""
    server: Child | None = None
    server_url: str = ""
    server_statuses: list[dict[str, Any]] = field(default_factory=list)
    """The last status heard from each server process (one per restart)."""
    nodes: dict[str, Child] = field(default_factory=dict)
    """IDN nodes other than the repository (which is `server`), by name."""
    node_urls: dict[str, str] = field(default_factory=dict)
    node_statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, Child] = field(default_factory=dict)
    """The current process of each device."""
    retired: list[Child] = field(default_factory=list)
    """Earlier processes of restarted devices, and earlier servers."""
    start_at: float = 0.0
    """Wall-clock time of run time 0 (when devices start generating)."""
    agenda: list[Action] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    startup_s: float | None = None
    interrupted: bool = False
    disk_full: str = ""
    """Why the run stopped early: "disk full while writing <file>"."""
    ctrl_c: StopSignals = field(default_factory=StopSignals)
    stall_watch: StallWatch = field(default_factory=StallWatch)
    """Whether the server answers its status polls in time (`testbed.stalls`)."""

    def children(self) -> list[Child]:
        return ([self.server] if self.server else []) + list(self.nodes.values()) + \
            list(self.devices.values()) + self.retired


def write_token(path: Path, token: str) -> None:
    """Readable by the run's owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def default_run_dir(cfg: ScenarioConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{cfg.name}-{policy_label(cfg.policy.name)}-{cfg.devices.count}dev"


def run_scenario(cfg: ScenarioConfig, run_dir: Path, progress: Progress | None = None, *,
                 force: bool = False, checked: bool = False,
                 on_listening: Callable[[str], None] | None = None) -> RunResult:
    """Run one scenario end to end and write its run folder. Ctrl-C stops it cleanly: devices
    stop generating, every sample already generated is answered, records are flushed. A full
    disk stops it the same way, and the summary says so. The scenario is checked first
    (`testbed.preflight`, unless the caller just did: `checked`), before the folder exists.
    `on_listening` gets the server's URL as soon as it listens (the CLI prints it and points a
    live view at it)."""
    if not force:
        check_host_memory(cfg.devices.count)
    if not checked:
        try:
            check_scenario(cfg)
        except CheckFailed as exc:
            raise RunError(f"bad scenario: {exc}") from None
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not empty")
    created = not run_dir.exists()
    try:
        return _run_scenario(cfg, run_dir, progress, on_listening)
    except RunError:
        if created and _only_prepared(run_dir):  # nothing ran: leave no half-written folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except OSError as exc:  # the harness's own writes before the run could start
        if is_disk_error(exc):
            raise RunError(str(as_disk_full(exc, getattr(exc, "path", None)
                                            or exc.filename or run_dir))) from None
        raise


def _run_scenario(cfg: ScenarioConfig, run_dir: Path, progress: Progress | None,
                  on_listening: Callable[[str], None] | None = None) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    provenance.write(run_dir, cfg)  # what was asked for, before the run prepares it
    try:
        cfg = prepare(cfg, run_dir)
    except (ValueError, LookupError) as exc:
        raise RunError(f"cannot prepare the run: {exc}") from None
    t_begin = time.monotonic()  # start-up counts from here: planning is not start-up
    specs = device_specs(cfg)
    try:
        plan = plan_faults(cfg, [(s.device_id, s.tier) for s in specs])
    except ScenarioError as exc:
        raise RunError(f"bad scenario: {exc}") from None
    if any(a.kind == "kill_node" for a in plan.actions):
        raise RunError("bad scenario: kill_node faults need a cluster run (--ray)")
    specs = [dataclasses.replace(s, link_faults=plan.links.get(s.device_id, ())) for s in specs]
    spans = dict(zip([s.device_id for s in specs], activity(cfg), strict=True))
    joins = join_actions(list(spans), list(spans.values()))
    (run_dir / "scenario.toml").write_text(tomli_w.dumps(scenario_to_dict(cfg)))
    (run_dir / "versions.json").write_text(json.dumps(collect_versions(), indent=2))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    _start_forkserver()
    token = secrets.token_urlsafe(24)
    write_token(run_dir / TOKEN_FILE, token)
    run = _Run(cfg, run_dir, EventLog(run_dir / "events.harness.jsonl", "harness"),
               progress or _Quiet(), ctx, plan, {s.device_id: s for s in specs if spans[
                   s.device_id]}, spans,
               agenda=sorted([*plan.actions, *(dataclasses.replace(
                   a, at_s=max(0.0, a.at_s - SPAWN_LEAD_S)) for a in joins)]), token=token)
    run.events.emit("run_start", scenario=cfg.name, policy=cfg.policy.name,
                    devices=cfg.devices.count, faults_planned=plan.injected)
    run.ctrl_c.install()
    try:
        try:
            _start_server(run)
            if on_listening is not None:
                on_listening(run.server_url)
            _start_nodes(run)
            _start_devices(run)
            run.startup_s = time.monotonic() - t_begin
            run.events.emit("all_registered", startup_s=round(run.startup_s, 3))
            _run_devices(run)
        except KeyboardInterrupt:
            run.ctrl_c.handled_all()
            run.interrupted = True
            run.events.emit("interrupted", signal=run.ctrl_c.name)
            run.progress.phase(f"stopped by {run.ctrl_c.name}: stopping devices cleanly "
                               "(Ctrl-C again to kill)")
            _stop_devices(run)
        _stop_nodes(run)
        _stop_server(run)
    finally:
        run.ctrl_c.restore()
        reap(run.children())
        _log_exits(run)
        run.events.emit("run_end", interrupted=run.interrupted)
        run.events.close()
    server = server_facts(run.server_statuses)
    if run.node_statuses:
        server["idn_nodes"] = {name: {k: st.get(k) for k in ("idn", "totals")}
                               for name, st in run.node_statuses.items()}
    disk_full = run.disk_full or (str(run.events.failure) if run.events.failure else "")
    stopped_by = run.ctrl_c.name if run.interrupted else ""
    facts = RunFacts(interrupted=run.interrupted, startup_s=run.startup_s,
                     resources=run.resources, server=server, disk_full=disk_full,
                     stopped_by=stopped_by)
    summary = collect(run_dir, facts, cfg)
    return RunResult(run_dir, summary, run.interrupted, stopped_by)


def _only_prepared(run_dir: Path) -> bool:
    """The folder holds at most what `prepare` writes (a gear plan) and the run's provenance:
    no process has run."""
    return run_dir.is_dir() and all(p.name in (PLAN_FILE, provenance.PROVENANCE_FILE)
                                    for p in run_dir.iterdir())


def check_host_memory(devices: int) -> None:
    """Refuse a device count the host's free memory cannot hold (each device process needs
    about `DEVICE_MEMORY_MB` of its own, on top of the pages the forkserver shares)."""
    available_mb = psutil.virtual_memory().available / 2**20
    need_mb = BASE_MEMORY_MB + devices * DEVICE_MEMORY_MB
    if need_mb > available_mb:
        raise RunError(f"{devices} devices need about {need_mb / 1024:.1f} GiB of memory and "
                       f"this host has {available_mb / 1024:.1f} GiB available; fewer "
                       "devices, or --force to try anyway")


def _start_forkserver() -> None:
    """Start the forkserver so that it really preloads the harness's main module.

    CPython before 3.14 asks for the key `main_path` where `get_preparation_data` writes
    `init_main_from_path`, so a preloaded `__main__` is silently skipped and every child
    re-runs the main script (for `testbed up`: typer, rich, the CLI) before doing anything:
    ~0.1 s of CPU per device, 12 of the 13 s that 200 devices took to start on 2 cores.
    Giving the forkserver the path under the key it reads makes it import the script once;
    children then find it already there and skip it. A no-op when the server is running.
    """
    original = multiprocessing.spawn.get_preparation_data

    def with_main_path(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if "init_main_from_path" in data:
            data.setdefault("main_path", data["init_main_from_path"])
        return data

    multiprocessing.spawn.get_preparation_data = with_main_path
    # A closed terminal's SIGHUP reaches the whole process group: the forkserver (which
    # CPython lets ignore only SIGINT) must outlive it, or every child it forked reads as
    # crashed. An ignored signal stays ignored across fork and exec.
    hup = signal.signal(signal.SIGHUP, signal.SIG_IGN) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        multiprocessing.spawn.get_preparation_data = original
        if hup is not None:
            signal.signal(signal.SIGHUP, hup)


# --- phases -----------------------------------------------------------------------------------


def _start_server(run: _Run, port: int | None = None) -> bool:
    """Start a server process; the first one picks a free port, restarts reuse it (devices
    reconnect to the same URL). Return whether it is listening."""
    cfg = run.cfg
    if port is not None:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=port))
    run.progress.phase("starting server" if port is None else "restarting server")
    incarnation = len(run.server_statuses)
    run.server = spawn(run.ctx, "server", launch.server_process, cfg, run.token,
                       str(run.run_dir), incarnation=incarnation)
    run.server_statuses.append({})
    msg = recv(run.server, SERVER_START_TIMEOUT_S)
    if msg is None or msg.get("event") != "listening":
        if port is None:
            raise RunError(f"server did not start: {msg or 'no answer'}; see "
                           f"{run.run_dir / 'logs' / 'server.log'}")
        run.events.emit("server_restart_failed", reason=str(msg or "no answer"))
        return False
    run.server_url = msg["url"]
    run.events.emit("server_listening", url=run.server_url, incarnation=incarnation,
                    pid=run.server.proc.pid)
    return True


def _spawn_device(run: _Run, spec: DeviceSpec, interval: Interval,
                  wait_for_server: bool) -> Child:
    spec = dataclasses.replace(spec, duration_s=interval[1] - interval[0])
    url = run.node_urls.get(spec.node, run.server_url)  # in an IDN: its access node
    child = spawn(run.ctx, spec.device_id, launch.device_process, spec,
                  url, run.token, str(run.run_dir), wait_for_server,
                  incarnation=spec.incarnation)
    child.interval = interval
    return child


def _start_devices(run: _Run) -> None:
    """Start every device process; those there from the start register before the run
    begins, those that join later wait to connect until they are due."""
    specs = list(run.specs.values())
    run.progress.phase(f"starting {len(specs)} devices")
    for spec in specs:
        first = run.spans[spec.device_id][0]
        run.devices[spec.device_id] = _spawn_device(run, spec, first,
                                                    wait_for_server=first[0] == 0)
    run.events.emit("devices_spawned", count=len(specs),
                    pids={d: c.proc.pid for d, c in run.devices.items()})
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    ready = 0
    children = list(run.devices.values())
    run.progress.registered(0, len(specs))
    while ready < len(specs):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunError(f"only {ready}/{len(specs)} devices registered within "
                           f"{REGISTER_TIMEOUT_S:.0f} s")
        for child in poll(children, min(left, 0.5)):
            if child.error or (child.done is None and not child.proc.is_alive()
                               and not child.ready):
                raise RunError(f"device {child.name} failed to start: {child.error}; see "
                               f"{run.run_dir / 'logs' / 'devices.log'}")
        run.ctrl_c.check()
        ready = sum(c.ready for c in children)
        run.progress.registered(ready, len(specs))


def _start(run: _Run, child: Child) -> None:
    """Tell a ready device when to start (its interval's start, or as soon as it can) and
    when to stop."""
    begin, end = child.interval
    at = max(run.start_at + begin, time.time() + START_LEAD_S)
    send(child, {"cmd": "start", "at": at, "run_start": run.start_at,
                 "end": run.start_at + min(end, run.cfg.duration_s)})
    child.started = True


def _run_devices(run: _Run) -> None:
    run.start_at = time.time() + START_LEAD_S
    run.events.emit("run_clock", start_at=round(run.start_at, 6),
                    note="run time 0 (devices start generating); fault times count from it")
    for child in run.devices.values():
        _start(run, child)
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
        if all(c.finished for c in run.devices.values()) and not run.agenda:
            break
        if now > hard_stop:
            run.events.emit("drain_timeout", unfinished=[
                c.name for c in run.devices.values() if not c.finished])
            break
        children = list(run.devices.values()) + ([run.server] if run.server else [])
        poll(children, 0.2)
        run.ctrl_c.check()
        full = _disk_full(run)
        if full:
            run.disk_full = full
            run.events.emit("disk_full", detail=full)
            run.progress.phase(f"{full}: stopping the run (what was written is kept)")
            _stop_devices(run)
            break
        for child in run.devices.values():
            if child.ready and not child.started:
                _start(run, child)
        _watch_crashes(run, t)
        if now - last_status >= 1.0:
            last_status = now
            live = _live_status(run) or live
            live["done_devices"] = sum(c.done is not None for c in run.devices.values())
        if not sampled and t >= 0.6 * duration:
            sampled = True
            run.resources = _sample_resources(run)
        run.progress.running(min(max(t, 0.0), duration), duration, live)
    _stalled(run, run.stall_watch.end(time.time() - run.start_at))
    if not sampled:
        run.resources = _sample_resources(run)


def _disk_full(run: _Run) -> str:
    """Why the run must stop for its disk: a device or the harness's event log could not
    write ("" while all is well)."""
    for child in [*run.devices.values(), *run.retired]:
        if child.disk_full and child.error:
            return child.error
    return str(run.events.failure) if run.events.failure else ""


def _stop_devices(run: _Run) -> None:
    for child in run.devices.values():
        if not child.finished:
            send(child, {"cmd": "stop"})
    deadline = time.time() + run.cfg.devices.reply_timeout_ms / 1e3 + DRAIN_GRACE_S
    try:
        while not all(c.finished for c in run.devices.values()) and time.time() < deadline:
            poll(list(run.devices.values()), 0.2)
            run.ctrl_c.check()
            _log_exits(run)
    except KeyboardInterrupt:
        run.events.emit("killed")
        for child in run.devices.values():
            child.proc.kill()


def _start_nodes(run: _Run) -> None:
    """IDN nodes below the repository, parents before children (each needs its parent's URL)."""
    idn = run.cfg.idn
    if not idn.nodes:
        return
    run.node_urls[idn.root.name] = run.server_url
    todo = [n for n in idn.nodes if n.parent is not None]
    while todo:
        node = next(n for n in todo if n.parent in run.node_urls)
        todo.remove(node)
        run.progress.phase(f"starting idn node {node.name}")
        cfg = dataclasses.replace(run.cfg, server=dataclasses.replace(run.cfg.server, port=0))
        child = spawn(run.ctx, f"node-{node.name}", launch.node_process, cfg,
                      run.token, str(run.run_dir), node.name, run.node_urls[str(node.parent)])
        run.nodes[node.name] = child
        msg = recv(child, SERVER_START_TIMEOUT_S)
        if msg is None or msg.get("event") != "listening":
            raise RunError(f"idn node {node.name} did not start: {msg or 'no answer'}; see "
                           f"{run.run_dir / 'logs' / f'node-{node.name}.log'}")
        run.node_urls[node.name] = msg["url"]
        run.events.emit("node_listening", node=node.name, url=msg["url"],
                        pid=child.proc.pid)


def _stop_nodes(run: _Run) -> None:
    """Children before parents, so nothing is sent up to a node that has stopped."""
    order = list(run.nodes)[::-1]
    for name in order:
        child = run.nodes[name]
        if not child.proc.is_alive():
            continue
        send(child, {"cmd": "stop"})
        msg = recv(child, 10.0)
        if msg is not None and msg.get("event") == "status":
            run.node_statuses[name] = msg["status"]
        child.proc.join(10.0)


def _stop_server(run: _Run) -> None:
    server = run.server
    if server is None or not server.proc.is_alive():
        return
    run.progress.phase("stopping server")
    send(server, {"cmd": "stop"})
    msg = recv(server, 10.0)
    if msg is not None and msg.get("event") == "status":
        run.server_statuses[-1] = msg["status"]
    server.proc.join(10.0)


# --- faults -----------------------------------------------------------------------------------


def _act(run: _Run, action: Action, t: float) -> None:
    """Carry out one planned fault action at run time `t`."""
    if action.kind == "kill_device":
        child = run.devices.get(action.target)
        if child is None or child.finished:
            run.events.emit("fault_skipped", fault=action.kind, device=action.target,
                            reason="device not running")
            return
        run.events.emit("fault", fault=action.kind, device=action.target,
                        signal=action.signal, incarnation=child.incarnation)
        run.events.emit("device_kill", device=action.target, incarnation=child.incarnation)
        child.killed = True
        _signal(child, action.signal)
    elif action.kind == "restart_device":
        _restart_device(run, action.target, t)
    elif action.kind == "join_device":
        assert action.until_s is not None
        _replace_device(run, action.target, (action.at_s + SPAWN_LEAD_S, action.until_s))
        run.events.emit("device_join", device=action.target,
                        at_s=round(action.at_s + SPAWN_LEAD_S, 3), until_s=action.until_s)
    elif action.kind == "kill_server":
        server = run.server
        if server is None or not server.proc.is_alive():
            run.events.emit("fault_skipped", fault=action.kind, reason="server not running")
            return
        run.server_statuses[-1] = fetch_status(run.server_url, run.token) \
            or run.server_statuses[-1]
        run.events.emit("fault", fault=action.kind, signal=action.signal)
        run.events.emit("server_kill", incarnation=server.incarnation)
        server.killed = True
        _signal(server, action.signal)
        server.proc.join(5.0)
    elif action.kind == "restart_server":
        _restart_server(run)
    elif action.kind == "link_down":
        run.events.emit("fault", fault="link", device=action.target, detail=action.detail)
        run.events.emit("link_down", device=action.target, detail=action.detail)
    elif action.kind == "link_up":
        run.events.emit("link_up", device=action.target, detail=action.detail)


def _signal(child: Child, signal: str) -> None:
    if signal == "term":
        child.proc.terminate()
    else:
        child.proc.kill()


def _restart_device(run: _Run, device_id: str, t: float) -> None:
    """Bring a killed or crashed device back for the rest of its current interval."""
    old = run.devices.get(device_id)
    if old is None or not old.finished:
        return  # still (or again) running
    end = min(old.interval[1], run.cfg.duration_s)
    if end - t < MIN_RESTART_LEFT_S:
        return
    child = _replace_device(run, device_id, (t, end))
    run.events.emit("device_restart", device=device_id, incarnation=child.incarnation,
                    pid=child.proc.pid)


def _replace_device(run: _Run, device_id: str, interval: Interval) -> Child:
    """A new process (the next incarnation) for a device, generating during `interval`."""
    old = run.devices[device_id]
    if not old.finished:  # a join that overlaps a process still draining: let it finish
        old.proc.join(5.0)
    run.retired.append(old)
    spec = dataclasses.replace(run.specs[device_id], incarnation=old.incarnation + 1)
    child = _spawn_device(run, spec, interval, wait_for_server=False)
    run.devices[device_id] = child
    return child


def _restart_server(run: _Run) -> None:
    old = run.server
    if old is not None and old.proc.is_alive():
        return
    if old is not None:
        run.retired.append(old)
    port = urlsplit(run.server_url).port
    if _start_server(run, port):
        run.events.emit("server_restart", incarnation=len(run.server_statuses) - 1)


def _watch_crashes(run: _Run, t: float) -> None:
    """Notice processes that died on their own; restart them if the scenario says so."""
    _log_exits(run)
    for device_id, child in run.devices.items():
        if child.exit_logged and not child.killed and child.done is None \
                and run.cfg.devices.restart_dead and not child.restart_planned \
                and not child.disk_full:
            child.restart_planned = True
            _schedule(run, Action(t + run.cfg.devices.restart_delay_s, "restart_device",
                                  device_id))
    server = run.server
    if server is not None and not server.proc.is_alive() and not server.exit_logged:
        server.exit_logged = True
        run.events.emit("server_exit", exitcode=server.proc.exitcode, planned=server.killed,
                        incarnation=server.incarnation)
        if not server.killed and run.cfg.server.restart_on_exit:
            _schedule(run, Action(t + SERVER_RESTART_DELAY_S, "restart_server"))


def _schedule(run: _Run, action: Action) -> None:
    run.agenda.append(action)
    run.agenda.sort()


def _log_exits(run: _Run) -> None:
    for child in list(run.devices.values()) + run.retired:
        if child.name == "server" or child.exit_logged:
            continue
        if child.proc.is_alive() or child.done is not None:
            continue
        poll([child], 0)  # its `done` may still be in the pipe: it exited just after sending
        if child.done is None:
            child.exit_logged = True
            run.events.emit("device_exit", device=child.name, incarnation=child.incarnation,
                            exitcode=child.proc.exitcode, planned=child.killed,
                            clean=child.proc.exitcode == 0 and not child.error,
                            error=child.error, disk_full=child.disk_full)


def _live_status(run: _Run) -> dict[str, Any] | None:
    if run.server is None or not run.server.proc.is_alive():
        # A dead server is a death (or a planned kill), not a stall: a gap still open is
        # closed here, and the polls of a restarted server start afresh.
        _stalled(run, run.stall_watch.end(time.time() - run.start_at))
        return {"connected": 0, "queue": "-", "server_down": True}
    t, t0 = time.time() - run.start_at, time.monotonic()
    status = fetch_status(run.server_url, run.token)
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


def _sample_resources(run: _Run) -> dict[str, Any]:
    pids = [c.proc.pid for c in run.devices.values() if c.proc.pid is not None]
    return sample_resources(pids, run.server.proc.pid if run.server else None)
