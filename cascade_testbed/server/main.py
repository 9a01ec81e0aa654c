"""Run the server: in-process (`serve`), as a harness child (`server_process`), or by hand
(`python -m cascade_testbed.server` / `testbed server`), which prints the URL it listens on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aiohttp import web

from cascade_testbed.common.child_process import die_with_parent, leave_interrupts_to_parent
from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.files import resolve_token, run_path
from cascade_testbed.common.logsetup import configure_logging
from cascade_testbed.common.scenario_file import load_scenario
from cascade_testbed.server.app import make_app
from cascade_testbed.server.guard import GuardedSite
from cascade_testbed.server.peer_errors import PeerErrors
from cascade_testbed.server.runtime import GUARD, RUNTIME, ServerSettings
from cascade_testbed.server.scheduling import check_policy, make_policy

log = logging.getLogger(__name__)


async def serve(settings: ServerSettings, on_listening: Callable[[str], None],
                stop: asyncio.Event, on_stopping: Callable[[dict[str, Any]], None] | None = None
                ) -> None:
    """Listen until `stop` is set, then shut down gracefully (sockets closed, queue answered)."""
    app = make_app(settings)
    # Idle keep-alive connections go after 15 s (aiohttp's default is 75); the guard closes
    # those that never finish their first request's headers.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0,
                           keepalive_timeout=15.0)
    await runner.setup()  # builds the runtime (the app's startup)
    undo = PeerErrors(app[RUNTIME].stats.on_protocol_error).install(asyncio.get_running_loop())
    try:
        site = GuardedSite(runner, settings.server.host, settings.server.port, app[GUARD])
        await site.start()
        host, port = runner.addresses[0][:2]
        on_listening(f"http://{host}:{port}")
        await stop.wait()
        if on_stopping is not None:
            on_stopping(app[RUNTIME].status())
    finally:
        await runner.cleanup()
        undo()


def server_process(scenario: ScenarioConfig, token: str, run_dir: str,
                   control: Connection) -> None:
    """Entry of the server process the harness starts (forkserver child)."""
    _child(scenario, token, run_dir, control)


def node_process(scenario: ScenarioConfig, token: str, run_dir: str, idn_node: str,
                 parent_url: str, control: Connection) -> None:
    """Entry of an IDN node other than the repository (which is `server_process`)."""
    _child(scenario, token, run_dir, control, idn_node, parent_url)


def _child(scenario: ScenarioConfig, token: str, run_dir: str, control: Connection,
           idn_node: str = "", parent_url: str = "") -> None:
    die_with_parent()
    leave_interrupts_to_parent()
    out = Path(run_dir)
    stem = f"node-{idn_node}" if idn_node else "server"
    configure_logging("INFO", stem, run_path(out, "logs", stem, suffix=".log"))
    settings = ServerSettings.from_scenario(scenario, token,
                                            run_path(out, f"events.{stem}", suffix=".jsonl"),
                                            idn_node=idn_node, parent_url=parent_url)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def on_control() -> None:
            try:
                msg = control.recv()
            except (EOFError, OSError):
                loop.remove_reader(control.fileno())
                stop.set()  # the harness is gone
                return
            if msg.get("cmd") == "stop":
                stop.set()

        loop.add_reader(control.fileno(), on_control)
        await serve(settings, lambda url: control.send({"event": "listening", "url": url}),
                    stop, lambda status: control.send({"event": "status", "status": status}))

    try:
        asyncio.run(main())
    except Exception as exc:
        log.exception("server failed")
        with contextlib.suppress(OSError):
            control.send({"event": "error", "reason": repr(exc)})
        raise SystemExit(1) from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cascade_testbed.server", description=__doc__)
    parser.add_argument("--scenario", type=Path, help="take server, policy and SLO from a file")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--policy", default=None)
    parser.add_argument("--slo-ms", type=float, default=None)
    parser.add_argument("--token", default=None,
                        help="token devices must present (visible in ps: prefer the "
                             "TESTBED_TOKEN environment variable or --token-file)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="read the token from this file")
    parser.add_argument("--public-metrics", action="store_true",
                        help="serve /v1/status and /metrics without the token")
    parser.add_argument("--events", type=Path, default=None, help="write events (JSON lines)")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        make_policy(settings.policy.name, settings.policy.params)  # unknown name, bad params
    except (ValueError, OSError, LookupError) as exc:  # a bad scenario, number, token file
        _fail(str(exc))
    configure_logging("INFO", "server")
    if args.token and argv is None:
        log.warning("--token is visible to other users of this host (ps); prefer "
                    "TESTBED_TOKEN or --token-file")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, lambda url: print(f"listening on {url}", flush=True), stop)

    try:
        asyncio.run(run())
    except OSError as exc:  # the port is taken, or the address is not this host's
        _fail(f"cannot listen on {settings.server.host}:{settings.server.port}: "
              f"{exc.strerror or exc}")
    except LookupError as exc:  # a model the zoo does not have
        _fail(str(exc))


def _fail(message: str) -> None:
    """One line on stderr and exit 2, as for any bad input: no usage text, no traceback."""
    print(f"python -m cascade_testbed.server: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    import dataclasses

    cfg = load_scenario(args.scenario) if args.scenario else ScenarioConfig()
    server = dataclasses.replace(
        cfg.server, **{k: v for k, v in (("host", args.host), ("port", args.port))
                       if v is not None})
    policy = dataclasses.replace(cfg.policy, name=args.policy) if args.policy else cfg.policy
    cfg = dataclasses.replace(cfg, server=server, policy=policy,
                              slo_ms=args.slo_ms if args.slo_ms else cfg.slo_ms)
    check_policy(cfg.policy.name, cfg.policy.params)  # one line now, not a traceback later
    settings = ServerSettings.from_scenario(cfg, resolve_token(args.token, args.token_file),
                                            args.events)
    return dataclasses.replace(settings, public_metrics=args.public_metrics)
