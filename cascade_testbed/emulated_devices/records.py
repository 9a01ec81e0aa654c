"""Where one device's records go: the per-sample CSV rows, the journal of started samples
(.gen) and the device's outcome (devices/<id>.json).

Kept apart from the sample pipeline so that the pipeline decides what each sample's record
says and this says how it reaches the disk: buffered, flushed within `FLUSH_WITHIN_S` of the
first buffered line, and a refused write reported once to the device, which stops.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cascade_testbed.common.files import as_disk_full, run_path
from cascade_testbed.common.records import (
    FlushDeadline,
    GeneratedJournal,
    RecordWriter,
    SampleRecord,
)


class RecordSink:
    """One device process's record files; without `out_dir` it writes nothing.

    `on_refused` hears of the first write the disk refuses (later writes are not tried)."""

    def __init__(self, out_dir: Path | None, stem: str,
                 on_refused: Callable[[OSError], None]) -> None:
        # Rows are buffered and flushed within FLUSH_WITHIN_S of the first (`flush_if_due`):
        # one write per flush instead of one per sample. The journal is written as each sample
        # starts: it is what accounts for a killed process's samples, and a sample the harness
        # never saw start could be neither completed nor aborted.
        self._writer = RecordWriter(run_path(out_dir, "samples", stem, suffix=".csv"),
                                    buffered=True) if out_dir else None
        self._journal = GeneratedJournal(run_path(out_dir, "samples", stem, suffix=".gen")
                                         ) if out_dir else None
        self._flush = FlushDeadline()
        self._outcome_path = run_path(out_dir, "devices", stem, suffix=".json") \
            if out_dir else None
        self._on_refused = on_refused
        self.error: OSError | None = None
        """The first record write the disk refused: the device stops, and its run raises it."""

    @property
    def recorded(self) -> int | None:
        """Rows written so far (None: no record files)."""
        return self._writer.count if self._writer is not None else None

    def started(self, sample_id: int, now: float) -> None:
        """A sample has started (`now`, loop time): its line goes to the journal."""
        if self._journal is not None:
            self._journal.started(sample_id)
            self._flush.buffered(now)

    def write(self, rec: SampleRecord, now: float) -> None:
        """A sample's final record, buffered at `now` (loop time)."""
        if self._writer is not None and self.error is None:
            try:
                self._writer.write(rec)
            except OSError as exc:  # in a callback, where raising would only be logged
                self._refused(exc)
            self._flush.buffered(now)

    def flush_if_due(self, next_wake: float | None) -> None:
        """Flush buffered rows and journal lines now unless the device's next planned wake-up
        (`next_wake`, loop time; None: none planned) comes early enough to do it
        (`FlushDeadline`); called at the end of every wake-up that may have buffered
        something."""
        if self._flush.must_flush(next_wake):
            self.flush()

    def flush(self) -> None:
        self._flush.flushed()
        try:
            if self._journal is not None:
                self._journal.flush()
            if self._writer is not None:
                self._writer.flush()
        except OSError as exc:  # in a callback, where raising would only be logged
            self._refused(exc)

    def close(self) -> None:
        """Close the sample files (what is buffered is written first)."""
        if self._writer is not None:
            self._writer.close()
        if self._journal is not None:
            self._journal.close()

    def write_outcome(self, outcome: dict[str, Any]) -> None:
        """The device's outcome as JSON, written once at its end."""
        if self._outcome_path is not None:
            try:
                self._outcome_path.parent.mkdir(parents=True, exist_ok=True)
                self._outcome_path.write_text(json.dumps(outcome))
            except OSError as exc:  # the records already written still count
                self._refused(as_disk_full(exc, self._outcome_path))

    def _refused(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            self._on_refused(exc)
