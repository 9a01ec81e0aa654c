"""The harness's side of its child processes: start them, and talk to them over a pipe.

Children are started from a forkserver with an entry point of `testbed.launch`, which imports
the device or server package only in the child. Messages are small dicts: the
harness sends `{"cmd": ...}`, children answer `{"event": ...}`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any


@dataclass
class Child:
    name: str
    proc: BaseProcess
    conn: Connection
    incarnation: int = 0
    ready: bool = False
    started: bool = False
    done: dict[str, Any] | None = None
    error: str | None = None
    exit_logged: bool = False
    disk_full: bool = False
    """Its error is a write the disk refused: the run must stop, not the device be restarted."""
    killed: bool = False
    """The harness killed it on purpose (a fault), so its exit is not a crash."""
    restart_planned: bool = False
    interval: tuple[float, float] = (0.0, float("inf"))
    """Run times between which this process generates samples."""

    @property
    def finished(self) -> bool:
        return self.done is not None or not self.proc.is_alive()


def spawn(ctx: Any, name: str, entry: Callable[..., None], *args: Any,
          incarnation: int = 0) -> Child:
    """Start `entry(*args, pipe)` in a child; `entry` is one of `testbed.launch`'s functions."""
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=entry, args=(*args, child), name=name, daemon=False)
    proc.start()
    child.close()
    # `Process.start` first polls every child it still tracks (a `wait` with a fresh selector
    # per child) to reap finished ones: 1,000 devices cost 500,500 polls, most of the
    # harness's 28 s start-up (docs/density.md). The harness tracks its children itself and
    # `reap` joins every one of them, so the process need not be in multiprocessing's set.
    getattr(mp_process, "_children", set()).discard(proc)
    return Child(name, proc, parent, incarnation)


def poll(children: list[Child], timeout: float) -> list[Child]:
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


def _handle(child: Child, msg: dict[str, Any]) -> None:
    event = msg.get("event")
    if event == "ready":
        child.ready = True
    elif event == "done":
        child.done = msg["outcome"]
    elif event == "error":
        child.error = msg.get("reason", "unknown error")
        child.disk_full = bool(msg.get("disk_full"))


def recv(child: Child, timeout: float) -> dict[str, Any] | None:
    """The child's next message, or None if it does not answer in time or has died."""
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


def send(child: Child, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, ValueError):
        child.conn.send(msg)


def reap(children: list[Child], grace_s: float = 3.0) -> None:
    """Terminate what is still running, kill what ignores it, close every pipe."""
    for child in children:
        if child.proc.is_alive():
            child.proc.terminate()
    for child in children:
        child.proc.join(grace_s)
        if child.proc.is_alive():
            child.proc.kill()
            child.proc.join(1.0)
        child.conn.close()
