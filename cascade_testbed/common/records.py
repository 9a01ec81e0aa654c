"""Per-sample records: the schema, an incremental CSV writer and a reader that tolerates a crash.

A leaf module. Each device process writes one CSV row per sample as it finishes, and one line to
a journal of generated sample ids as each sample starts. Written straight to the OS (the
default), a device killed mid-run (SIGKILL included) leaves every finished row and the ids of
the samples it was still working on, so the harness can account for all of them. Devices
write `buffered`: rows and journal lines wait in memory and go to the OS in one write per
file when the device flushes, which it does within `FLUSH_WITHIN_S` of the first one
buffered (`FlushDeadline`): a SIGKILL then loses only rows younger than that.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

from cascade_testbed.common.files import as_disk_full

Source = Literal["light", "heavy", "fallback", "rejected"]
SOURCES: Final = ("light", "heavy", "fallback", "rejected")
CAUSES: Final = ("timeout", "disconnected", "expired", "failed", "error", "queue_full",
                 "admission", "shutdown")
"""Why a forwarded sample ended with its light answer (`cause` of fallback/rejected rows)."""


@dataclass(slots=True)
class SampleRecord:
    """One generated sample and its one final answer. Times are on the device's own clock."""

    device_id: str
    tier: str
    sample_id: int
    """Unique within one incarnation (process) of the device."""
    incarnation: int
    """0 for the device's first process, k after its k-th restart."""
    label: int
    t_sched_s: float
    """Scheduled arrival, seconds since the device's run start (open loop)."""
    start_lag_ms: float
    """How late the light model started after the device was free to run it: emulator lag."""
    light_ms: float
    """Light-model latency as emulated (real run padded to the tier's profile)."""
    light_real_ms: float
    overrun: bool
    """The real run took longer than the emulated target: fidelity was lost for this sample."""
    light_pred: int
    light_conf: float
    threshold: float
    forwarded: bool
    queue_ms: float
    compute_ms: float
    batch_size: int
    heavy_model: str
    """The server's model that answered (empty unless the source is heavy)."""
    final_pred: int
    source: Source
    cause: str
    """For fallback/rejected answers, one of `CAUSES`; empty otherwise."""
    correct: bool
    latency_ms: float
    """Scheduled time -> final answer on the device."""
    slo_met: bool
    wall_epoch_s: float
    """Wall-clock time of the scheduled arrival, only for joining records across processes."""
    reply_late_ms: float = math.nan
    """Forwarded samples with a reply: how much later the device read the reply than the
    emulated uplink's delivery time plus the server's queue and compute time said it could
    (the server acting late, real socket transit, the device's loop reading late;
    docs/emulation.md). NaN otherwise. Columns with a default may be missing from older
    files (read as the default)."""
    energy_compute_j: float = math.nan
    """The device's energy for the light model's (emulated) computation (`common.energy`)."""
    energy_radio_j: float = math.nan
    """The device's radio energy for this sample: bytes up and down and the tail they add."""


FIELDS: Final = tuple(f.name for f in dataclasses.fields(SampleRecord))
REQUIRED_FIELDS: Final = tuple(f.name for f in dataclasses.fields(SampleRecord)
                               if f.default is dataclasses.MISSING)
"""The columns every records file has; files written before a column with a default was
added lack it (the last ones) and are still read."""
_TYPES: Final = {f.name: f.type for f in dataclasses.fields(SampleRecord)}


def _format(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        # Epoch timestamps need microseconds; everything else 6 significant digits.
        return f"{value:.6f}" if name.endswith("epoch_s") else f"{value:.6g}"
    return str(value)


def _bool_text(v: object) -> str:
    return "1" if v else "0"


def _float_text(v: float) -> str:
    return "" if v != v else f"{v:.6g}"  # NaN as empty


def _epoch_text(v: float) -> str:
    return "" if v != v else f"{v:.6f}"


def _formatter(name: str) -> Callable[[object], str]:
    """`_format`'s text for this field's declared type, chosen once rather than per value
    (a device formats ~10 rows a second; type checks per value were a third of the row)."""
    kind = _TYPES[name]
    if kind == "bool":
        return _bool_text
    if kind == "float":
        return _epoch_text if name.endswith("epoch_s") else _float_text  # type: ignore[return-value]
    return str


_FORMATTERS: Final = tuple(_formatter(name) for name in FIELDS)
_VALUES: Final = operator.attrgetter(*FIELDS)


def format_row(rec: SampleRecord) -> list[str]:
    """A record as CSV fields (NaN as empty, bools as 0/1, floats to 6 significant digits)."""
    return [f(v) for f, v in zip(_FORMATTERS, _VALUES(rec), strict=True)]


FLUSH_WITHIN_S: Final = 0.05
"""A buffered row or journal line reaches the OS at most this long after it was buffered, if
the device's loop runs on time; the bar is 100 ms, the rest is for a late wake-up."""


@dataclass(slots=True)
class FlushDeadline:
    """When buffered records must reach the OS: pure bookkeeping, times passed in.

    A device wakes ~10 times a second anyway; instead of a write per row (and a timer of its
    own), it flushes at a wake-up only when its next planned wake-up would come too late."""

    due: float | None = None

    def buffered(self, now: float) -> None:
        """Something was buffered at `now` (the first one since the last flush sets `due`)."""
        if self.due is None:
            self.due = now + FLUSH_WITHIN_S

    def must_flush(self, next_wake: float | None) -> bool:
        """Whether to flush now, given when the device next plans to wake (None: no plan)."""
        return self.due is not None and (next_wake is None or next_wake > self.due)

    def flushed(self) -> None:
        self.due = None


def _parse(name: str, text: str) -> object:
    kind = _TYPES[name]
    if kind == "bool":
        if text not in ("0", "1"):
            raise ValueError(f"{name}={text!r}")
        return text == "1"
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text) if text else math.nan
    if kind == "Source" and text not in SOURCES:
        raise ValueError(f"{name}={text!r}")
    return text


def file_stem(device_id: str, incarnation: int) -> str:
    """`<device>` for a device's first process, `<device>~k` after its k-th restart."""
    return device_id if incarnation == 0 else f"{device_id}~{incarnation}"


class RecordWriter:
    """Writes each record to the OS as it is written (line buffering), so a process killed
    without warning loses no finished row. `buffered`: rows wait in memory until `flush`
    (one write for all of them; see the module's docstring). A write the disk refuses raises
    `DiskFull` naming the file."""

    def __init__(self, path: Path, buffered: bool = False) -> None:
        self.path = path
        self.count = 0
        self._buffer = io.StringIO() if buffered else None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[str] = path.open("w", newline="", buffering=-1 if buffered else 1)
        except OSError as exc:
            raise as_disk_full(exc, path) from exc
        self._csv = csv.writer(self._buffer or self._file, lineterminator="\n")
        try:
            self._csv.writerow(FIELDS)
            self.flush()
        except OSError as exc:
            self.close()
            raise as_disk_full(exc, path) from exc

    def write(self, rec: SampleRecord) -> None:
        try:
            self._csv.writerow(format_row(rec))
        except OSError as exc:
            raise as_disk_full(exc, self.path) from exc
        self.count += 1

    def flush(self) -> None:
        """Hand the buffered rows to the OS (nothing to do unbuffered)."""
        buf = self._buffer
        if buf is None or not buf.tell():
            return
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:
            raise as_disk_full(exc, self.path) from exc

    def close(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):  # a full disk: what was written stays
                self.flush()
            with contextlib.suppress(OSError):
                self._file.close()


class GeneratedJournal:
    """The ids of the samples a device has started, one per line, written at once (or, when
    `buffered`, at `flush`): after a crash, those without a record were in flight and are
    counted as aborted, not lost."""

    def __init__(self, path: Path, buffered: bool = False) -> None:
        self.path = path
        self._pending: list[bytes] | None = [] if buffered else None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: IO[bytes] = path.open("wb", buffering=0)
        except OSError as exc:
            raise as_disk_full(exc, path) from exc

    def started(self, sample_id: int) -> None:
        line = b"%d\n" % sample_id
        if self._pending is not None:
            self._pending.append(line)
            return
        self._write(line)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:  # a raw file may take less than all of it
                n = self._file.write(view)
                view = view[n or 0:]
        except OSError as exc:
            raise as_disk_full(exc, self.path) from exc

    def close(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):
                self.flush()
            self._file.close()


def read_journal(path: Path) -> set[int]:
    """Sample ids in a journal; a torn last line (the process died mid-write) is skipped."""
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_bytes().split(b"\n"):
        if line.isdigit():
            ids.add(int(line))
    return ids


def read_records(path: Path) -> tuple[list[SampleRecord], int]:
    """All complete rows of one CSV and the number of rows that could not be read (a torn
    last line after a crash)."""
    records: list[SampleRecord] = []
    bad = 0
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return [], 0
        names = tuple(header)
        if names != FIELDS[:len(names)] or len(names) < len(REQUIRED_FIELDS):
            raise ValueError(f"{path}: unexpected header {header[:3]}...")
        for row in reader:
            if len(row) != len(names):
                bad += 1
                continue
            try:
                values = {name: _parse(name, text) for name, text in zip(names, row, strict=True)}
            except ValueError:
                bad += 1
                continue
            records.append(SampleRecord(**values))  # type: ignore[arg-type]
    return records, bad


def iter_record_files(run_dir: Path) -> Iterator[Path]:
    yield from sorted((run_dir / "samples").glob("*.csv"))


def records_to_csv(records: list[SampleRecord]) -> str:
    """Render records as CSV text (tests and small exports)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FIELDS)
    for rec in records:
        w.writerow(format_row(rec))
    return buf.getvalue()
