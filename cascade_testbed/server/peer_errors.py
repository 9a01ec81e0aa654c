"""Errors a peer causes (a malformed HTTP request, a connection reset mid-reply) are counted
and logged once per cause at WARNING, never as tracebacks at ERROR: a server's error log is for
the server's own faults, and a peer that can fill it with tracebacks can hide them.

Two doors: aiohttp's `aiohttp.server` logger (it logs a bad request with its traceback) gets a
filter, and the event loop's exception handler takes the "exception was never retrieved" of a
future that a reset connection failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

PEER_RESETS = (ConnectionResetError, BrokenPipeError)
"""aiohttp's `ClientConnectionResetError` is a `ConnectionResetError`."""


def cause_of(exc: BaseException | None) -> str | None:
    """The counter a peer-caused exception goes to, None for anything else."""
    if isinstance(exc, HttpProcessingError):
        return "bad_http"
    if isinstance(exc, PEER_RESETS):
        return "client_reset"
    return None


class PeerErrors(logging.Filter):
    """Counts by cause (`count` is called with it, e.g. the server's protocol-error counter);
    the first of each cause is logged at WARNING with its one-line reason."""

    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__()
        self._count = count
        self.seen: dict[str, int] = {}

    def note(self, cause: str, reason: str) -> None:
        self._count(cause)
        self.seen[cause] = self.seen.get(cause, 0) + 1
        if self.seen[cause] == 1:
            log.warning("%s from a peer: %s (counted as %s; later ones are counted only)",
                        cause.replace("_", " "), reason[:200], cause)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        cause = cause_of(exc)
        if cause is None:
            return True
        self.note(cause, _one_line(exc))
        return False

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        cause = cause_of(context.get("exception"))
        if cause is None:
            loop.default_exception_handler(context)
        else:
            self.note(cause, _one_line(context.get("exception")))

    def install(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Filter aiohttp's server log and take the loop's exceptions; the undo."""
        server_log = logging.getLogger("aiohttp.server")
        server_log.addFilter(self)
        previous = loop.get_exception_handler()
        loop.set_exception_handler(self.loop_handler)

        def undo() -> None:
            server_log.removeFilter(self)
            loop.set_exception_handler(previous)
        return undo


def _one_line(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split()) if exc is not None else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
