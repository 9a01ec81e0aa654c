"""Start a run's server and device processes, run them, stop them cleanly, collect the records.

The harness talks to each child over a pipe (ready/start/stop/done) and never imports the
device or server packages: children are forked from a forkserver that has them preloaded, which
also lets 40+ device processes share the numpy/onnxruntime/aiohttp pages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import secrets
import time
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import psutil
import tomli_w

from testbed.config import ScenarioConfig, device_specs, load_scenario, scenario_to_dict
from testbed.events import EventLog, read_events
from testbed.metrics import DeviceTally, summarize
from testbed.records import iter_record_files, read_records
from testbed.versions import collect_versions

log = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 60.0
REGISTER_TIMEOUT_S = 60.0
START_LEAD_S = 0.3
"""Devices get the common start time this far ahead, so all of them receive it in time."""
DRAIN_GRACE_S = 10.0
PRELOAD = ["__main__", "emulated_devices.main", "emulated_devices.preload", "server.main"]
"""Imported once by the forkserver. `__main__` is there because multiprocessing otherwise
re-imports the harness's main module (typer, rich, ...) in every child: ~0.1 s of CPU each."""


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


@dataclass
class _Child:
    name: str
    proc: BaseProcess
    conn: Connection
    ready: bool = False
    done: dict[str, Any] | None = None
    error: str | None = None
    exit_logged: bool = False


@dataclass
class _Run:
    cfg: ScenarioConfig
    run_dir: Path
    events: EventLog
    progress: Progress
    ctx: Any
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    server: _Child | None = None
    server_url: str = ""
    devices: list[_Child] = field(default_factory=list)
    final_status: dict[str, Any] | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    startup_s: float | None = None
    interrupted: bool = False


def default_run_dir(cfg: ScenarioConfig, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / f"{stamp}-{cfg.name}-{cfg.policy.name}-{cfg.devices.count}dev"


def run_scenario(cfg: ScenarioConfig, run_dir: Path, progress: Progress | None = None) -> RunResult:
    """Run one scenario end to end and write its run folder. Ctrl-C stops it cleanly: devices
    stop generating, every sample already generated is answered, records are flushed."""
    t_begin = time.monotonic()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "scenario.toml").write_text(tomli_w.dumps(scenario_to_dict(cfg)))
    (run_dir / "versions.json").write_text(json.dumps(collect_versions(), indent=2))
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    run = _Run(cfg, run_dir, EventLog(run_dir / "events.harness.jsonl", "harness"),
               progress or _Quiet(), ctx)
    run.events.emit("run_start", scenario=cfg.name, policy=cfg.policy.name,
                    devices=cfg.devices.count)
    try:
        try:
            _start_server(run)
            _start_devices(run)
            run.startup_s = time.monotonic() - t_begin
            run.events.emit("all_registered", startup_s=round(run.startup_s, 3))
            _run_devices(run)
        except KeyboardInterrupt:
            run.interrupted = True
            run.events.emit("interrupted")
            run.progress.phase("interrupted: stopping devices cleanly (Ctrl-C again to kill)")
            _stop_devices(run)
        _stop_server(run)
    finally:
        _kill_stragglers(run)
        run.events.emit("run_end", interrupted=run.interrupted)
        run.events.close()
    summary = collect(run_dir, run)
    return RunResult(run_dir, summary, run.interrupted)


# --- phases -----------------------------------------------------------------------------------


def _spawn(run: _Run, name: str, module: str, function: str, *args: Any) -> _Child:
    parent, child = run.ctx.Pipe(duplex=True)
    proc = run.ctx.Process(target=_launch, args=(module, function, *args, child), name=name,
                           daemon=False)
    proc.start()
    child.close()
    return _Child(name, proc, parent)


def _launch(module: str, function: str, *args: Any) -> None:
    from testbed.launch import call

    call(module, function, *args)


def _start_server(run: _Run) -> None:
    run.progress.phase("starting server")
    run.server = _spawn(run, "server", "server.main", "server_process", run.cfg, run.token,
                        str(run.run_dir))
    msg = _recv(run.server, SERVER_START_TIMEOUT_S)
    if msg is None or msg.get("event") != "listening":
        raise RunError(f"server did not start: {msg or 'no answer'}; see "
                       f"{run.run_dir / 'logs' / 'server.log'}")
    run.server_url = msg["url"]
    run.events.emit("server_listening", url=run.server_url)


def _start_devices(run: _Run) -> None:
    specs = device_specs(run.cfg)
    run.progress.phase(f"starting {len(specs)} devices")
    for spec in specs:
        run.devices.append(_spawn(run, spec.device_id, "emulated_devices.main", "device_process",
                                  spec, run.server_url, run.token, str(run.run_dir)))
    run.events.emit("devices_spawned", count=len(specs))
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    ready = 0
    run.progress.registered(0, len(specs))
    while ready < len(specs):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunError(f"only {ready}/{len(specs)} devices registered within "
                           f"{REGISTER_TIMEOUT_S:.0f} s")
        for child in _poll(run.devices, min(left, 0.5)):
            if child.error or (child.done is None and not child.proc.is_alive()
                               and not child.ready):
                raise RunError(f"device {child.name} failed to start: {child.error}; see "
                               f"{run.run_dir / 'logs' / 'devices.log'}")
        ready = sum(c.ready for c in run.devices)
        run.progress.registered(ready, len(specs))


def _run_devices(run: _Run) -> None:
    start_at = time.time() + START_LEAD_S
    for child in run.devices:
        _send(child, {"cmd": "start", "at": start_at})
    duration = run.cfg.duration_s
    hard_stop = start_at + duration + run.cfg.devices.reply_timeout_ms / 1e3 + DRAIN_GRACE_S
    sampled = False
    last_status = 0.0
    live: dict[str, Any] = {}
    run.progress.phase("running")
    while not all(_finished(c) for c in run.devices):
        now = time.time()
        if now > hard_stop:
            run.events.emit("drain_timeout", unfinished=[c.name for c in run.devices
                                                         if not _finished(c)])
            break
        _poll(run.devices, 0.2)
        _log_exits(run)
        elapsed = now - start_at
        if now - last_status >= 1.0:
            last_status = now
            live = _live_status(run.server_url) or live
            live["done_devices"] = sum(c.done is not None for c in run.devices)
        if not sampled and elapsed >= 0.6 * duration:
            sampled = True
            run.resources = _sample_resources(run)
        run.progress.running(min(max(elapsed, 0.0), duration), duration, live)
    if not sampled:
        run.resources = _sample_resources(run)


def _stop_devices(run: _Run) -> None:
    for child in run.devices:
        if not _finished(child):
            _send(child, {"cmd": "stop"})
    deadline = time.time() + run.cfg.devices.reply_timeout_ms / 1e3 + DRAIN_GRACE_S
    try:
        while not all(_finished(c) for c in run.devices) and time.time() < deadline:
            _poll(run.devices, 0.2)
            _log_exits(run)
    except KeyboardInterrupt:
        run.events.emit("killed")
        for child in run.devices:
            child.proc.kill()


def _stop_server(run: _Run) -> None:
    server = run.server
    if server is None:
        return
    run.progress.phase("stopping server")
    _send(server, {"cmd": "stop"})
    msg = _recv(server, 10.0)
    if msg is not None and msg.get("event") == "status":
        run.final_status = msg["status"]
    server.proc.join(10.0)


def _kill_stragglers(run: _Run) -> None:
    children = ([run.server] if run.server else []) + run.devices
    for child in children:
        if child.proc.is_alive():
            child.proc.terminate()
    for child in children:
        child.proc.join(3.0)
        if child.proc.is_alive():
            child.proc.kill()
            child.proc.join(1.0)
        child.conn.close()
    _log_exits(run)


# --- child plumbing -----------------------------------------------------------------------


def _finished(child: _Child) -> bool:
    return child.done is not None or not child.proc.is_alive()


def _poll(children: list[_Child], timeout: float) -> list[_Child]:
    """Read every message that is waiting; return the children that said something."""
    by_conn = {c.conn: c for c in children if not c.conn.closed}
    heard = []
    for conn in wait(list(by_conn), timeout=timeout):
        child = by_conn[conn]  # type: ignore[index]
        try:
            while child.conn.poll():
                _handle(child, child.conn.recv())
        except (EOFError, OSError):
            child.conn.close()
        heard.append(child)
    return heard


def _handle(child: _Child, msg: dict[str, Any]) -> None:
    event = msg.get("event")
    if event == "ready":
        child.ready = True
    elif event == "done":
        child.done = msg["outcome"]
    elif event == "error":
        child.error = msg.get("reason", "unknown error")


def _recv(child: _Child, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if child.conn.poll(0.1):
                msg: dict[str, Any] = child.conn.recv()
                return msg
        except (EOFError, OSError):
            return None
        if not child.proc.is_alive() and not child.conn.poll():
            return None
    return None


def _send(child: _Child, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, ValueError):
        child.conn.send(msg)


def _log_exits(run: _Run) -> None:
    for child in run.devices:
        if not child.exit_logged and not child.proc.is_alive() and child.done is None:
            child.exit_logged = True
            run.events.emit("device_exit", device=child.name, exitcode=child.proc.exitcode,
                            error=child.error)


def _live_status(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/status", timeout=0.5) as resp:
            status: dict[str, Any] = json.load(resp)
    except (OSError, ValueError):
        return None
    thresholds = [d["threshold"] for d in status.get("devices", {}).values()]
    return {"connected": len(thresholds), "queue": status["queue"]["length"],
            "throughput_sps": status["throughput_sps"], "arrival_sps": status["arrival_rate_sps"],
            "mean_threshold": sum(thresholds) / len(thresholds) if thresholds else None}


def _sample_resources(run: _Run) -> dict[str, Any]:
    """Unique memory (USS) of each device process: what one more device costs."""
    uss = []
    for child in run.devices:
        try:
            uss.append(psutil.Process(child.proc.pid).memory_full_info().uss / 2**20)
        except (psutil.Error, TypeError):
            continue
    server_rss = None
    if run.server is not None:
        with contextlib.suppress(psutil.Error, TypeError):
            server_rss = psutil.Process(run.server.proc.pid).memory_info().rss / 2**20
    return {
        "device_uss_mb": {"mean": round(sum(uss) / len(uss), 2) if uss else None,
                          "max": round(max(uss), 2) if uss else None, "sampled": len(uss)},
        "server_rss_mb": round(server_rss, 2) if server_rss else None,
        "cpu_count": psutil.cpu_count(),
        "load_avg_1m": round(psutil.getloadavg()[0], 2),
    }


# --- collecting -------------------------------------------------------------------------


def collect(run_dir: Path, run: _Run | None = None) -> dict[str, Any]:
    """Build summary.json from what is on disk (also for a run that was cut short)."""
    records, torn = [], 0
    for path in iter_record_files(run_dir):
        recs, bad = read_records(path)
        records.extend(recs)
        torn += bad
    tallies = []
    for path in sorted((run_dir / "devices").glob("*.json")):
        d = json.loads(path.read_text())
        tallies.append(DeviceTally(d["device_id"], d["tier"], d["generated"],
                                   d["final_threshold"], d.get("late_replies", 0)))
    reported = {t.device_id for t in tallies}
    cfg = run.cfg if run else load_scenario(run_dir / "scenario.toml")
    expected = {s.device_id: s.tier for s in device_specs(cfg)}
    missing_devices = sorted(set(expected) - reported)
    summary = summarize(records, tallies, slo_ms=cfg.slo_ms, duration_s=cfg.duration_s,
                        tier_order=tuple(cfg.tiers))
    _merge_events(run_dir)
    kinds = {e.get("kind") for e in read_events(run_dir / "events.jsonl")}
    interrupted = run.interrupted if run else ("interrupted" in kinds or "run_end" not in kinds)
    meta: dict[str, Any] = {
        "scenario": cfg.name, "policy": cfg.policy.name, "devices": cfg.devices.count,
        "mix": cfg.devices.mix, "duration_s": cfg.duration_s, "slo_ms": cfg.slo_ms,
        "seed": cfg.seed, "rate_hz": cfg.devices.rate_hz, "arrival": cfg.devices.arrival,
    }
    status = {
        "interrupted": interrupted,
        "partial": bool(missing_devices) or torn > 0 or interrupted,
        "devices_without_outcome": missing_devices,
        "torn_rows": torn,
        "startup_s": round(run.startup_s, 3) if run and run.startup_s is not None else None,
    }
    server: dict[str, Any] = {}
    if run and run.final_status:
        server = {"heavy_model": run.final_status.get("heavy_model"),
                  "totals": run.final_status.get("totals")}
    out = {**meta, **summary, "run": status, "server": server,
           "resources": run.resources if run else {}}
    (run_dir / "summary.json").write_text(json.dumps(out, indent=2))
    return out


def _merge_events(run_dir: Path) -> None:
    """One events.jsonl in time order from the harness's and the server's files."""
    parts = [run_dir / "events.harness.jsonl", run_dir / "events.server.jsonl"]
    events = sorted((e for p in parts for e in read_events(p)), key=lambda e: e.get("t", 0))
    if events:
        with (run_dir / "events.jsonl").open("w") as f:
            for e in events:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
    for p in parts:
        p.unlink(missing_ok=True)

