"""Logging is configured here and only from entry points; library modules just get loggers."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def configure_logging(level: str = "INFO", tag: str = "", logfile: Path | None = None) -> None:
    """Plain-text lines tagged with the process role (e.g. `device low-003`).

    With `logfile`, the process's stderr is redirected there too, so tracebacks and native
    library warnings of 40 device processes do not scribble over the harness's progress view.
    """
    fmt = f"%(asctime)s %(levelname).1s {tag + ' ' if tag else ''}%(name)s: %(message)s"
    handlers: list[logging.Handler]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives with the process
    handlers = [logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=level.upper(), format=fmt, handlers=handlers, force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
