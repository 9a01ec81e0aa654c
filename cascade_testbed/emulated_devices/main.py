"""Run one device: as a harness child (`device_process`) or by hand
(`python -m cascade_testbed.emulated_devices` / `testbed device --server URL`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cascade_testbed.common.azure_functions import device_workloads
from cascade_testbed.common.child_process import die_with_parent, leave_interrupts_to_parent
from cascade_testbed.common.config import ScenarioConfig, device_specs
from cascade_testbed.common.files import DiskFull, resolve_token
from cascade_testbed.common.logsetup import configure_logging
from cascade_testbed.common.names import check_name
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.emulated_devices.device import Device
from cascade_testbed.emulated_devices.loop_probe import precise_loop

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 30.0
"""A harness child: the server has just started and may be busy welcoming many devices."""
MANUAL_REGISTER_TIMEOUT_S = 3.0
"""`testbed device` by hand: the server is already running, or the user should hear at once
that nothing answers there."""


def device_process(spec: Any, server_url: str, token: str, run_dir: str,
                   wait_for_server: bool, control: Connection) -> None:
    """Entry of a device process the harness starts (forkserver child).

    Talks to the harness over `control`: sends `ready` once welcomed (or at once, for a device
    restarted mid-run, which must work while the server is away), waits for `start` (a
    wall-clock time shared by all devices), stops early on `stop`, and ends with `done`.
    """
    # Everything inherited from the forkserver (the runtime, models, dataset) goes to the
    # collector's permanent generation: a full collection would otherwise walk, and so copy,
    # every page holding an inherited object, making shared pages private (USS).
    gc.freeze()
    die_with_parent()
    leave_interrupts_to_parent()
    out = Path(run_dir)
    configure_logging("INFO", f"device {spec.device_id}", out / "logs" / "devices.log")
    try:
        with asyncio.Runner(loop_factory=precise_loop) as runner:
            runner.run(_controlled(spec, server_url, token, out, control, wait_for_server))
    except DiskFull as exc:
        _send(control, {"event": "error", "device_id": spec.device_id, "reason": str(exc),
                        "disk_full": True})
        raise SystemExit(1) from exc
    except Exception as exc:
        log.exception("device failed")
        _send(control, {"event": "error", "device_id": spec.device_id, "reason": repr(exc)})
        raise SystemExit(1) from exc


async def _controlled(spec: Any, server_url: str, token: str, out: Path,
                      control: Connection, wait_for_server: bool) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_control() -> None:
        try:
            commands.put_nowait(control.recv())
        except (EOFError, OSError):
            loop.remove_reader(control.fileno())
            commands.put_nowait({"cmd": "stop", "reason": "harness gone"})

    loop.add_reader(control.fileno(), on_control)
    device = Device(spec, server_url, token=token, out_dir=out)
    loop.add_signal_handler(signal.SIGTERM, lambda: commands.put_nowait({"cmd": "stop"}))
    if wait_for_server:
        await device.wait_registered(REGISTER_TIMEOUT_S)
    _send(control, {"event": "ready", "device_id": spec.device_id})
    cmd = await commands.get()
    if cmd.get("cmd") == "stop":
        device.stop()
    run = asyncio.create_task(device.run(start_wall=cmd.get("at"),
                                         run_start_wall=cmd.get("run_start"),
                                         end_wall=cmd.get("end")))

    async def watch() -> None:
        while True:
            if (await commands.get()).get("cmd") == "stop":
                device.stop()

    watcher = asyncio.create_task(watch())
    outcome = await run
    watcher.cancel()
    _send(control, {"event": "done", "device_id": spec.device_id, "outcome": outcome.to_dict()})


def _send(control: Connection, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, ValueError):  # harness gone: the records on disk count
        control.send(msg)


PROG = "python -m cascade_testbed.emulated_devices"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8470")
    parser.add_argument("--scenario", type=Path, help="take tiers and rates from a file")
    parser.add_argument("--tier", default="mid")
    parser.add_argument("--device-id", default=None)
    parser.add_argument("--index", type=int, default=0, help="seeds this device's streams")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--rate-hz", type=float, default=None)
    parser.add_argument("--token", default=None,
                        help="the server's token (visible in ps: prefer TESTBED_TOKEN or "
                             "--token-file)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="read the token from this file")
    parser.add_argument("--out", type=Path, default=None, help="write records here")
    args = parser.parse_args(argv)
    try:
        check_url(args.server)
        token = resolve_token(args.token, args.token_file)
        check_name(args.tier, "--tier")
        device_id = check_name(args.device_id or f"{args.tier}-manual-{args.index}",
                               "--device-id")
        cfg = load_scenario(args.scenario) if args.scenario else ScenarioConfig()
        if args.tier not in cfg.tiers:
            _fail(f"unknown tier {args.tier!r}; known: {', '.join(cfg.tiers)}")
        devices = dataclasses.replace(cfg.devices, count=1, mix=":".join(
            "1" if t == args.tier else "0" for t in cfg.tiers),
            rate_hz=args.rate_hz or cfg.devices.rate_hz)
        cfg = dataclasses.replace(cfg, devices=devices,
                                  duration_s=args.duration or cfg.duration_s)
    except (ValueError, OSError) as exc:  # bad URL, names, scenario, numbers or token file
        _fail(str(exc))
    spec = dataclasses.replace(device_specs(cfg)[0], index=args.index, device_id=device_id)
    if spec.workload is not None and cfg.devices.azure is not None:  # its own trace function
        spec = dataclasses.replace(spec, workload=device_workloads(
            cfg.devices.azure, [spec], tuple(cfg.tiers))[0])
    configure_logging("INFO", f"device {spec.device_id}")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        device = Device(spec, args.server, token=token, out_dir=args.out)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, device.stop)
        await device.wait_registered(MANUAL_REGISTER_TIMEOUT_S, fail_fast=True)
        print(f"{spec.device_id}: registered with {args.server}, running "
              f"{cfg.duration_s:.0f} s at {spec.rate_hz} Hz", flush=True)
        outcome = await device.run()
        print(outcome.to_dict(), flush=True)

    try:
        with asyncio.Runner(loop_factory=precise_loop) as runner:
            runner.run(run())
    except TimeoutError as exc:  # could not start: exit 2, as the harness does
        _fail(f"could not register with {args.server} within "
              f"{MANUAL_REGISTER_TIMEOUT_S:.0f} s: {exc}")
    except (ConnectionError, LookupError) as exc:  # refused, unreachable, or a bad model
        _fail(f"{spec.device_id}: {args.server}: {exc}")


def check_url(url: str) -> None:
    """The server's URL: http(s) or ws(s), with a host (and a valid port if one is given)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"--server {url[:80]!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"--server {url[:80]!r} must be a URL like http://127.0.0.1:8470")


def _fail(message: str) -> None:
    """One line on stderr and exit 2, as for any bad input: no usage text, no traceback."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
