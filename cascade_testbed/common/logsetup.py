"""Logging is configured here and only from entry points; library modules just get loggers.

Output is bounded: the same message (logger and format string) is written at most
`LINES_PER_WINDOW` times per `WINDOW_S`, then counted and summarised, so a flood of bad
clients or a failing loop cannot fill the disk with one line repeated.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path

LINES_PER_WINDOW = 20
WINDOW_S = 10.0


class RateLimit:
    """At most `per_key` events per key in each `window_s` (time passed in); remembers at most
    `max_keys` keys, forgetting the least recently seen, so unbounded keys (peers) cost
    bounded memory."""

    def __init__(self, per_key: int, window_s: float, max_keys: int = 1024) -> None:
        self.per_key = per_key
        self.window_s = window_s
        self.max_keys = max_keys
        self._windows: OrderedDict[Hashable, tuple[float, int, int]] = OrderedDict()
        """key -> (window start, events allowed in it, events suppressed in it)."""

    def allow(self, key: Hashable, now: float) -> bool:
        return self.check(key, now)[0]

    def check(self, key: Hashable, now: float) -> tuple[bool, int]:
        """(allowed?, how many were suppressed in the window that just ended, if a new one
        starts with this event; else 0)."""
        start, allowed, dropped = self._windows.pop(key, (now, 0, 0))
        ended = 0
        if now - start >= self.window_s:
            ended, start, allowed, dropped = dropped, now, 0, 0
        ok = allowed < self.per_key
        self._windows[key] = (start, allowed + ok, dropped + (not ok))
        while len(self._windows) > self.max_keys:
            self._windows.popitem(last=False)
        return ok, ended


class _Bounded(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._limit = RateLimit(LINES_PER_WINDOW, WINDOW_S)

    def filter(self, record: logging.LogRecord) -> bool:
        # `server.control`, not `server.control`: every module's logger is
        # under the package's one name, which says nothing on a line.
        record.where = record.name.removeprefix("cascade_testbed.")
        ok, dropped = self._limit.check((record.name, str(record.msg)), record.created)
        if ok and dropped:
            record.msg = f"{record.msg} [{dropped} more like this were not logged]"
        return ok


def configure_logging(level: str = "INFO", tag: str = "", logfile: Path | None = None) -> None:
    """Plain-text lines tagged with the process role (e.g. `device low-003`).

    With `logfile`, the process's stderr is redirected there too, so tracebacks and native
    library warnings of 40 device processes do not scribble over the harness's progress view.
    """
    fmt = f"%(asctime)s %(levelname).1s {tag + ' ' if tag else ''}%(where)s: %(message)s"
    handlers: list[logging.Handler]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    handlers = [logging.StreamHandler(sys.stderr)]
    handlers[0].addFilter(_Bounded())
    logging.basicConfig(level=level.upper(), format=fmt, handlers=handlers, force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
