"""Ctrl-C, SIGTERM and SIGHUP during a run: each stops it the way the first Ctrl-C does."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run cleanly: Ctrl-C, and what `timeout`, systemd, `docker stop`, CI
cancellation and a closed terminal send."""


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP during a run. Each raises `KeyboardInterrupt`, so they all
    stop the run the way the first Ctrl-C does; the first one's number is kept for the exit
    code. One raised while the interpreter runs a finalizer (a `__del__`, a weakref callback)
    or inside a library that swallows it is printed and dropped, and the run would go on; so
    they are also counted, and the run's loop calls `check` after every poll to raise the
    ones that were dropped."""

    def __init__(self) -> None:
        self.count = 0
        self.handled = 0
        self.first: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferred = False

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
        if not self._deferred:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Count a signal but raise it only at the next `check`: around a call whose answer
        must not be dropped halfway (a poll's answer carries records the agent will not send
        again)."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    @property
    def name(self) -> str:
        return signal.Signals(self.first).name if self.first is not None else "SIGINT"

    def handled_all(self) -> None:
        self.handled = self.count

    def check(self) -> None:
        if self.count > self.handled:
            self.handled = self.count
            raise KeyboardInterrupt
