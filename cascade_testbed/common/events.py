"""Run events (threshold changes, device joins, faults) as JSON lines, flushed as written."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import IO, Any

from cascade_testbed.common.files import DiskFull


class EventLog:
    """Appends `{"t": epoch_s, "source": ..., "kind": ..., ...}` lines; a None path discards.

    Events are a record, not a control path: a write the disk refuses does not raise (a
    server must go on serving); the log stops, and `failure` says why for whoever checks."""

    def __init__(self, path: Path | None, source: str) -> None:
        self.source = source
        self.path = path
        self._file: IO[str] | None = None
        self.failure: DiskFull | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = path.open("a")
            except OSError as exc:
                self._failed(exc)

    def emit(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = {"t": round(time.time(), 6), "source": self.source, "kind": kind, **fields}
        try:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as exc:
            self._failed(exc)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _failed(self, exc: OSError) -> None:
        self.failure = DiskFull(self.path or "events", exc)
        self.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every complete line of an events file (a torn last line after a crash is skipped)."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
