"""The node agent: the only code that starts, signals and stops a run's processes.

One agent runs the processes of one node: its device processes and, where the placement puts
them, the server and IDN node processes. Every child is forked from a forkserver that has the
device and server packages preloaded (40+ device processes share the numpy/onnxruntime/aiohttp
pages) and talks to the agent over a pipe (ready/start/stop/done). The supervisor
(`testbed.supervisor`) decides; the agent does what it is told and reports what the pipes say.

A local run has one agent in the harness's own process, writing straight into the run folder.
Under `--ray` each node has one, as a Ray actor pinned to that node (`testbed.cluster.driver`
wraps this plain class), writing into a scratch folder whose new bytes every `poll` ships
(`testbed.shipping`). A Ray agent's children die with it: each sets PR_SET_PDEATHSIG and the
forkserver exits when the agent's end of its pipe closes, so a killed node leaves no orphan.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.forkserver
import multiprocessing.spawn
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from cascade_testbed.common.config import DeviceSpec, ScenarioConfig
from cascade_testbed.testbed import launch
from cascade_testbed.testbed.cgroups import CgroupPlan
from cascade_testbed.testbed.children import Child, poll, reap, recv, send, spawn
from cascade_testbed.testbed.observe import sample_resources
from cascade_testbed.testbed.shipping import Tail
from cascade_testbed.testbed.timeline import Interval

log = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 60.0
PRELOAD = ["cascade_testbed.testbed.launch", "cascade_testbed.emulated_devices.main",
           "cascade_testbed.emulated_devices.preload", "cascade_testbed.server.main"]
"""Imported once by the forkserver. The harness's own agent also preloads `__main__`
(`start_forkserver`); a Ray agent must not: there that is Ray's worker script."""
SERVER = "server"
"""The name of the run's server process (in an IDN, the repository)."""
SCRATCH = Path(tempfile.gettempdir()) / "testbed-agents"


@dataclass(frozen=True, slots=True)
class ServerJob:
    """A server process to start: the run's server, or one IDN node below the repository."""

    name: str
    """`SERVER`, or the IDN node's name."""
    cfg: ScenarioConfig
    token: str
    incarnation: int = 0
    parent_url: str = ""
    """An IDN node's parent (it needs the parent's URL); "" for the server."""

    @property
    def child_name(self) -> str:
        return SERVER if self.name == SERVER else f"node-{self.name}"


@dataclass(frozen=True, slots=True)
class DeviceJob:
    """A device process to start, generating during `interval` of run time."""

    spec: DeviceSpec
    url: str
    token: str
    wait_for_server: bool
    interval: Interval
    cpu: CgroupPlan | None = None
    """`cpu_limit = "cgroup"`: the cgroups its process goes into (`testbed.cgroups`)."""


def start_forkserver(with_main: bool) -> Any:
    """The forkserver context, started with `PRELOAD` (plus `__main__` if `with_main`).

    With `with_main` (the harness's own agent): CPython before 3.14 asks for the key
    `main_path` where `get_preparation_data` writes `init_main_from_path`, so a preloaded
    `__main__` is silently skipped and every child re-runs the main script (for `testbed up`:
    typer, rich, the CLI) before doing anything: ~0.1 s of CPU per device, 12 of the 13 s that
    200 devices took to start on 2 cores. Giving the forkserver the path under the key it
    reads makes it import the script once. Without it (a Ray agent), the parent's main module
    is left out: children of a Ray worker must not re-run Ray's worker script. A no-op when
    the forkserver is running.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *PRELOAD] if with_main else PRELOAD)
    original = multiprocessing.spawn.get_preparation_data

    def prepare(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if with_main:
            if "init_main_from_path" in data:
                data.setdefault("main_path", data["init_main_from_path"])
        else:
            for key in ("init_main_from_path", "init_main_from_name", "main_path"):
                data.pop(key, None)
        return data

    multiprocessing.spawn.get_preparation_data = prepare
    # A closed terminal's SIGHUP reaches the whole process group: the forkserver (which
    # CPython lets ignore only SIGINT) must outlive it, or every child it forked reads as
    # crashed. An ignored signal stays ignored across fork and exec.
    hup = signal.signal(signal.SIGHUP, signal.SIG_IGN) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if with_main:
            multiprocessing.spawn.get_preparation_data = original
        if hup is not None:
            signal.signal(signal.SIGHUP, hup)
    return ctx


def remove_orphaned_scratch(root: Path) -> None:
    """Scratch folders of agents that are gone (a killed node's: nobody else removes them),
    named `<agent pid>-...`."""
    for path in root.iterdir():
        pid = path.name.partition("-")[0]
        if path.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


class NodeAgent:
    """Runs the processes of one node. Every method takes and returns plain data (under
    `--ray` it crosses the network)."""

    def __init__(self, node: str, run_name: str, root: Path | None = None) -> None:
        """`root`: write into this run folder (the harness's own agent); None: into a scratch
        folder that `poll` ships (a Ray agent)."""
        self.node = node
        if root is None:
            SCRATCH.mkdir(parents=True, exist_ok=True)
            remove_orphaned_scratch(SCRATCH)
            root = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{run_name}-{node}-",
                                         dir=SCRATCH))
            self.tail: Tail | None = Tail(root)
        else:
            self.tail = None
        self.dir = root
        self.ctx = start_forkserver(with_main=self.tail is None)
        self.devices: dict[str, Child] = {}
        self.retired: list[Child] = []
        self.servers: dict[str, Child] = {}
        self.retired_servers: list[Child] = []
        self.proc = psutil.Process()
        self.cgroups: dict[str, CgroupPlan] = {}

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid(), "host": socket.gethostname(),
                "dir": str(self.dir)}

    # --- servers -------------------------------------------------------------------------

    def start_server(self, job: ServerJob) -> dict[str, Any]:
        """Start a server (or IDN node) process; the answer is {"url", "pid"} or {"error"}."""
        old = self.servers.get(job.name)
        if old is not None:
            self.retired_servers.append(old)
        if job.name == SERVER:
            child = spawn(self.ctx, job.child_name, launch.server_process, job.cfg, job.token,
                          str(self.dir), incarnation=job.incarnation)
        else:
            child = spawn(self.ctx, job.child_name, launch.node_process, job.cfg, job.token,
                          str(self.dir), job.name, job.parent_url, incarnation=job.incarnation)
        self.servers[job.name] = child
        msg = recv(child, SERVER_START_TIMEOUT_S)
        if msg is None or msg.get("event") != "listening":
            return {"error": str(msg or "no answer")}
        return {"url": msg["url"], "pid": child.proc.pid}

    def kill_server(self, name: str, how: str) -> int | None:
        """Kill (or terminate) a server process; its exit code once it is gone."""
        child = self.servers.get(name)
        if child is None or not child.proc.is_alive():
            return None
        child.killed = True
        _signal(child, how)
        child.proc.join(5.0)
        return child.proc.exitcode

    def stop_server(self, name: str) -> dict[str, Any] | None:
        """Stop a server process cleanly; its last status, if it said one."""
        child = self.servers.get(name)
        if child is None or not child.proc.is_alive():
            return None
        send(child, {"cmd": "stop"})
        msg = recv(child, 10.0)
        child.proc.join(10.0)
        return msg["status"] if msg is not None and msg.get("event") == "status" else None

    # --- devices -------------------------------------------------------------------------

    def spawn_devices(self, jobs: list[DeviceJob]) -> dict[str, int | None]:
        """Start device processes; a device that had a process already gets its next
        incarnation (the old one, if still draining, is given 5 s to finish). Their pids."""
        pids: dict[str, int | None] = {}
        for job in jobs:
            spec = job.spec
            old = self.devices.get(spec.device_id)
            if old is not None:
                if not old.finished:
                    old.proc.join(5.0)
                self.retired.append(old)
            child = spawn(self.ctx, spec.device_id, launch.device_process, spec, job.url,
                          job.token, str(self.dir), job.wait_for_server,
                          incarnation=spec.incarnation)
            child.interval = job.interval
            self.devices[spec.device_id] = child
            pids[spec.device_id] = child.proc.pid
            if job.cpu is not None and child.proc.pid is not None:
                self.cgroups[job.cpu.run_tag] = job.cpu
                try:
                    job.cpu.place(child.proc.pid, spec.device_id, spec.tier, spec.incarnation)
                except OSError as exc:  # the probe passed: the host changed under the run
                    log.error("device %s: cannot set its CPU quota: %s", spec.device_id, exc)
                    child.proc.kill()
        return pids

    def start_devices(self, commands: dict[str, dict[str, Any]]) -> None:
        """Send each named device its `start` command (computed by the supervisor)."""
        for device_id, cmd in commands.items():
            child = self.devices.get(device_id)
            if child is not None:
                send(child, cmd)
                child.started = True

    def stop_devices(self) -> None:
        for child in self.devices.values():
            if not child.finished:
                send(child, {"cmd": "stop"})

    def kill_device(self, device_id: str, how: str) -> bool:
        child = self.devices.get(device_id)
        if child is None or child.finished:
            return False
        child.killed = True
        _signal(child, how)
        return True

    def kill_all(self) -> None:
        """The last resort (a second Ctrl-C): SIGKILL every device."""
        for child in self.devices.values():
            if child.proc.is_alive():
                child.proc.kill()

    # --- what the supervisor polls -------------------------------------------------------

    def poll(self, wait_s: float = 0.0, final: bool = False) -> dict[str, Any]:
        """Messages from the children (waiting up to `wait_s` for the first), their state,
        and the new bytes of their files (a Ray agent's)."""
        poll(self._children(), wait_s)
        devices = {f"{c.name}#{c.incarnation}": _state(c)
                   for c in [*self.retired, *self.devices.values()]}
        servers = {name: _state(c) for name, c in self.servers.items()}
        return {"devices": devices, "servers": servers,
                "chunks": self.tail.chunks(final) if self.tail else [], "t": time.time()}

    def resources(self) -> dict[str, Any]:
        """Memory of the node's devices and server, the CPU its devices and the agent used."""
        pids = [c.proc.pid for c in self.devices.values()
                if c.proc.pid is not None and c.proc.is_alive()]
        server = self.servers.get(SERVER)
        out = sample_resources(pids, server.proc.pid if server else None)
        times = self.proc.cpu_times()
        out["agent_cpu_s"] = round(times.user + times.system, 3)
        out["agent_rss_mb"] = round(self.proc.memory_info().rss / 2**20, 2)
        cpu = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
                cpu += times.user + times.system
            except psutil.Error:
                continue
        out["device_cpu_s"] = round(cpu, 3)
        return out

    def shutdown(self) -> dict[str, Any]:
        """End every child (terminate, then kill), then answer as `poll` does with every
        remaining byte of the files; a Ray agent removes its scratch folder."""
        children = self._all()
        poll(children, 0)  # `done`s still in the pipes
        reap(children)
        for cpu in self.cgroups.values():
            cpu.remove()
        answer = self.poll(final=True)
        if self.tail is not None:
            while more := self.tail.chunks(final=True):
                answer["chunks"] += more
            shutil.rmtree(self.dir, ignore_errors=True)
        return answer

    def _all(self) -> list[Child]:
        return [*self.servers.values(), *self.retired_servers, *self.devices.values(),
                *self.retired]

    def _children(self) -> list[Child]:
        return [c for c in self._all() if not c.conn.closed]


def _state(child: Child) -> dict[str, Any]:
    alive = child.proc.is_alive()
    if not alive and child.done is None and not child.conn.closed:
        poll([child], 0)  # its `done` may still be in the pipe: it exited just after sending
    return {"name": child.name, "incarnation": child.incarnation, "ready": child.ready,
            "done": child.done, "error": child.error, "disk_full": child.disk_full,
            "alive": alive, "exitcode": child.proc.exitcode, "killed": child.killed,
            "pid": child.proc.pid}


def _signal(child: Child, how: str) -> None:
    if how == "term":
        child.proc.terminate()
    else:
        child.proc.kill()
