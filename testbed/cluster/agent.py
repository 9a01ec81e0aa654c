"""The node agent: one per Ray node that runs part of a run, as a Ray actor pinned to that node.

It forks its node's device processes (and, on the server's node, the server) exactly as the
local harness does: from a forkserver that has the device and server packages preloaded, one
real OS process per device, each talking to the agent over a pipe. The driver calls the
agent's methods through Ray; the agent never decides anything on its own beyond what a child's
pipe says. Its children die with it: each sets PR_SET_PDEATHSIG, and the forkserver exits when
the agent's end of its pipe closes, so killing the agent (a lost node) leaves no orphan.

The class is plain Python (the driver wraps it with `ray.remote`), so this module does not
import Ray.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.forkserver
import multiprocessing.spawn
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from common.config import DeviceSpec, ScenarioConfig
from testbed import launch
from testbed.children import Child, poll, reap, recv, send, spawn
from testbed.cluster.shipping import Tail
from testbed.observe import sample_resources

AGENT_PRELOAD = ["testbed.launch", "emulated_devices.main", "emulated_devices.preload",
                 "server.main"]
"""As the local harness's, without `__main__`: here that is Ray's worker script."""
SERVER_START_TIMEOUT_S = 60.0


SCRATCH = Path(tempfile.gettempdir()) / "testbed-agents"


def remove_orphaned_scratch(root: Path) -> None:
    """Scratch folders of agents that are gone (a killed node's: nobody else removes them),
    named `<agent pid>-...`."""
    for path in root.iterdir():
        pid = path.name.partition("-")[0]
        if path.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _without_main(original: Any) -> Any:
    """`get_preparation_data` that leaves out the parent's main module: children of a Ray
    worker must not re-run Ray's worker script as their `__mp_main__`."""

    def prepare(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        for key in ("init_main_from_path", "init_main_from_name", "main_path"):
            data.pop(key, None)
        return data

    return prepare


class NodeAgent:
    """Runs the processes of one node. Every method returns plain data (it crosses Ray)."""

    def __init__(self, node: str, run_name: str) -> None:
        self.node = node
        SCRATCH.mkdir(parents=True, exist_ok=True)
        remove_orphaned_scratch(SCRATCH)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{run_name}-{node}-",
                                         dir=SCRATCH))
        """The node's part of the run folder; shipped to the driver, removed at shutdown (or,
        if the agent was killed, by the next agent on this host)."""
        multiprocessing.spawn.get_preparation_data = _without_main(
            multiprocessing.spawn.get_preparation_data)
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(AGENT_PRELOAD)
        multiprocessing.forkserver.ensure_running()
        self.devices: dict[str, Child] = {}
        self.retired: list[Child] = []
        self.server: Child | None = None
        self.tail = Tail(self.dir)
        self.proc = psutil.Process()

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid(), "host": socket.gethostname(),
                "dir": str(self.dir)}

    # --- server --------------------------------------------------------------------------

    def start_server(self, cfg: ScenarioConfig, token: str, incarnation: int) -> dict[str, Any]:
        """Start a server process; the answer is {"url", "pid"} or {"error"}."""
        if self.server is not None:
            self.retired.append(self.server)
        self.server = spawn(self.ctx, "server", launch.server_process, cfg, token,
                            str(self.dir), incarnation=incarnation)
        msg = recv(self.server, SERVER_START_TIMEOUT_S)
        if msg is None or msg.get("event") != "listening":
            return {"error": str(msg or "no answer")}
        return {"url": msg["url"], "pid": self.server.proc.pid}

    def kill_server(self, signal: str) -> bool:
        server = self.server
        if server is None or not server.proc.is_alive():
            return False
        server.killed = True
        _signal(server, signal)
        server.proc.join(5.0)
        return True

    def stop_server(self) -> dict[str, Any] | None:
        """Stop the server cleanly; its last status, if it said one."""
        server = self.server
        if server is None or not server.proc.is_alive():
            return None
        send(server, {"cmd": "stop"})
        msg = recv(server, 10.0)
        server.proc.join(10.0)
        return msg["status"] if msg is not None and msg.get("event") == "status" else None

    # --- devices -------------------------------------------------------------------------

    def spawn_devices(self, jobs: list[tuple[DeviceSpec, str, str, bool, tuple[float, float]]]
                      ) -> dict[str, int | None]:
        """Start device processes: (spec, server URL, token, wait for the server, interval)
        each; a device that had a process already gets its next incarnation. Their pids."""
        pids: dict[str, int | None] = {}
        for spec, url, token, wait, interval in jobs:
            old = self.devices.get(spec.device_id)
            if old is not None:
                if not old.finished:
                    old.proc.join(5.0)
                self.retired.append(old)
            child = spawn(self.ctx, spec.device_id, launch.device_process, spec, url, token,
                          str(self.dir), wait, incarnation=spec.incarnation)
            child.interval = interval
            self.devices[spec.device_id] = child
            pids[spec.device_id] = child.proc.pid
        return pids

    def start_devices(self, commands: dict[str, dict[str, Any]]) -> None:
        """Send each named device its `start` command (computed by the driver)."""
        for device_id, cmd in commands.items():
            child = self.devices.get(device_id)
            if child is not None:
                send(child, cmd)
                child.started = True

    def stop_devices(self) -> None:
        for child in self.devices.values():
            if not child.finished:
                send(child, {"cmd": "stop"})

    def kill_device(self, device_id: str, signal: str) -> bool:
        child = self.devices.get(device_id)
        if child is None or child.finished:
            return False
        child.killed = True
        _signal(child, signal)
        return True

    def kill_all(self) -> None:
        """The driver's last resort (a second Ctrl-C): SIGKILL every device."""
        for child in self.devices.values():
            if child.proc.is_alive():
                child.proc.kill()

    # --- what the driver polls -----------------------------------------------------------

    def poll(self, final: bool = False) -> dict[str, Any]:
        """Messages from the children, their state, and the new bytes of their files."""
        children = [*self.devices.values(), *([self.server] if self.server else [])]
        poll(children, 0)
        states = {}
        for child in [*self.retired, *self.devices.values()]:
            if child.name == "server":
                continue
            states[f"{child.name}#{child.incarnation}"] = _state(child)
        server = self.server
        return {"devices": states,
                "server": None if server is None else {**_state(server), "pid": server.proc.pid},
                "chunks": self.tail.chunks(final), "t": time.time()}

    def resources(self) -> dict[str, Any]:
        """Memory of the node's devices and server, and the CPU the agent itself used."""
        pids = [c.proc.pid for c in self.devices.values()
                if c.proc.pid is not None and c.proc.is_alive()]
        out = sample_resources(pids, self.server.proc.pid if self.server else None)
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
        remaining byte of the files, and remove the scratch folder."""
        children = [*self.devices.values(), *self.retired,
                    *([self.server] if self.server else [])]
        poll(children, 0)  # `done`s still in the pipes
        reap(children)
        answer = self.poll(final=True)
        while more := self.tail.chunks(final=True):
            answer["chunks"] += more
        shutil.rmtree(self.dir, ignore_errors=True)
        return answer


def _state(child: Child) -> dict[str, Any]:
    return {"name": child.name, "incarnation": child.incarnation, "ready": child.ready,
            "done": child.done, "error": child.error, "disk_full": child.disk_full,
            "alive": child.proc.is_alive(), "exitcode": child.proc.exitcode,
            "killed": child.killed, "pid": child.proc.pid}


def _signal(child: Child, signal: str) -> None:
    if signal == "term":
        child.proc.terminate()
    else:
        child.proc.kill()
