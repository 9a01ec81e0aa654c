"""Link traces in Mahimahi's format: the file format, where a scenario's trace file is found,
and turning a throughput log into a trace. Pure functions over text and numbers, plus the one
checked read of a trace file (`read_link_trace`); how a trace shapes messages is
`emulated_devices.link_trace`.

The format (mm-link's): one integer per line, the millisecond at which one 1,500-byte delivery
opportunity occurs; a millisecond repeated on several lines holds several opportunities; the
trace repeats with a period of its last timestamp. A file holding only `1` is a constant
12 Mbit/s link. Uplink and downlink are separate files.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cascade_testbed.common.files import MIB, InputFileError, check_regular, read_text

PACKET_BYTES: Final = 1500
"""Bytes one delivery opportunity carries (mm-link's MTU-sized packet)."""
MAX_LINK_TRACE_BYTES: Final = 64 * MIB
"""The longest public traces (Mahimahi's LTE drives) are a few MB."""
MAX_TRACE_PATH_CHARS: Final = 4096
TRACES_DIR: Final = Path(__file__).resolve().parent / "traces" / "links"
"""The traces shipped with the package; a scenario may name one by its file name."""


class LinkTraceError(ValueError):
    """A trace file or a throughput log that cannot be used; the message says where."""


@dataclass(frozen=True, slots=True)
class LinkTrace:
    """Opportunity times, compressed: `times_ms[i]` (increasing, distinct) holds `counts[i]`
    opportunities. A trace of high rate repeats each millisecond many times, so this is what
    a device keeps in memory, not one entry per line."""

    times_ms: Sequence[int]
    counts: Sequence[int]

    @property
    def period_ms(self) -> int:
        return self.times_ms[-1]

    @property
    def opportunities(self) -> int:
        return sum(self.counts)

    def mean_mbps(self) -> float:
        """Capacity averaged over one period."""
        return self.opportunities * PACKET_BYTES * 8 / (self.period_ms * 1e3)


def parse_link_trace(text: str, where: str = "link trace") -> LinkTrace:
    """Read mm-link's format: integers >= 0, one per line, never decreasing, the last > 0
    (blank lines are skipped; anything else is refused with its line number). Parsed by numpy
    (each device process reads its traces: ~0.2 s a million lines, not ~1 s); a trace
    numpy cannot take is read line by line to say which line is wrong."""
    import numpy as np  # not at module level: the scenario loader imports this module

    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        return _parse_lines(text, where)
    if values.size == 0 or values.min() < 0 or bool(np.any(np.diff(values) < 0)) \
            or values[-1] <= 0:
        return _parse_lines(text, where)
    times, counts = np.unique(values, return_counts=True)
    return LinkTrace(array("q", times.astype(np.int64).tobytes()),
                     array("q", counts.astype(np.int64).tobytes()))


def _parse_lines(text: str, where: str) -> LinkTrace:
    times: list[int] = []
    counts: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not (line.isascii() and line.isdigit()):
            raise LinkTraceError(f"{where}: line {lineno} is not a whole number of "
                                 f"milliseconds (got {line[:20]!r})")
        t = int(line)
        if times and t < times[-1]:
            raise LinkTraceError(f"{where}: line {lineno}: {t} comes after {times[-1]}; "
                                 "timestamps must not decrease")
        if times and t == times[-1]:
            counts[-1] += 1
        else:
            times.append(t)
            counts.append(1)
    if not times:
        raise LinkTraceError(f"{where} holds no timestamps")
    if times[-1] <= 0:
        raise LinkTraceError(f"{where}: the last timestamp (the period) must be > 0 ms")
    return LinkTrace(tuple(times), tuple(counts))


def read_link_trace(path: str | Path) -> LinkTrace:
    """The trace in `path`: a regular file of at most `MAX_LINK_TRACE_BYTES`."""
    try:
        text = read_text(path, MAX_LINK_TRACE_BYTES, "link trace")
    except InputFileError as exc:
        raise LinkTraceError(str(exc)) from None
    return parse_link_trace(text, f"link trace {path}")


def resolve_link_trace(value: object, base: Path | None) -> Path:
    """The file a scenario's `trace = "..."` names: a path relative to the scenario's folder
    (`base`; None: the current folder) or, failing that, to the shipped traces
    (`TRACES_DIR`); absolute paths as they are. The resolved path must be a regular file
    under the size limit, else `LinkTraceError` saying where it looked."""
    if not isinstance(value, str) or not value or len(value) > MAX_TRACE_PATH_CHARS \
            or not value.isprintable():
        raise LinkTraceError(f"a link trace must be a path of 1-{MAX_TRACE_PATH_CHARS} "
                             "printable characters")
    given = Path(value)
    candidates = [given] if given.is_absolute() else [(base or Path.cwd()) / given,
                                                      TRACES_DIR / given]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.exists():
            try:
                return check_regular(resolved, MAX_LINK_TRACE_BYTES, "link trace")
            except InputFileError as exc:
                raise LinkTraceError(str(exc)) from None
    raise LinkTraceError(f"link trace {value!r} not found (looked in "
                         f"{', '.join(str(c.parent) for c in candidates)})")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- throughput logs -> traces -------------------------------------------------------------


def throughput_to_trace(rows: Sequence[tuple[float, float]]) -> list[int]:
    """mm-link timestamps for a `[seconds, Mbit/s]` throughput log: each row's rate holds
    from its time until the next row's (the last row for the mean spacing of the rows), and
    opportunities are placed so that the cumulative bytes follow the rates (fractions carry
    over: 0.5 Mbit/s is one opportunity every 24 ms). The trace starts at the first row's
    time. Needs at least one row with a positive rate. A log that ends in a silence gets one
    opportunity at its end: mm-link's period is its last timestamp, and this keeps the
    silence in the trace at the cost of 1,500 bytes a period."""
    _check_rows(rows)
    times = [t for t, _ in rows]
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
    ends = [*times[1:], times[-1] + step]
    out: list[int] = []
    carried = 0.0  # opportunities owed but not yet placed
    for (t, mbps), end in zip(rows, ends, strict=True):
        start_ms = round((t - times[0]) * 1e3)
        end_ms = round((end - times[0]) * 1e3)
        per_ms = mbps * 1e6 / 8 / PACKET_BYTES / 1e3  # opportunities per millisecond
        for ms in range(start_ms + 1, end_ms + 1):
            carried += per_ms
            whole = int(carried)
            if whole:
                out.extend([ms] * whole)
                carried -= whole
    if not out:
        raise LinkTraceError("the throughput log carries less than one packet in total")
    last = round((ends[-1] - times[0]) * 1e3)
    if out[-1] != last:
        out.append(last)  # the period is the log's length, not the last opportunity's time
    return out


def _check_rows(rows: Sequence[tuple[float, float]]) -> None:
    if not rows:
        raise LinkTraceError("the throughput log has no rows")
    for i, (t, r) in enumerate(rows):
        if not (math.isfinite(t) and math.isfinite(r) and r >= 0 and t >= 0):
            raise LinkTraceError(f"row {i + 1}: seconds and Mbit/s must be finite and >= 0")
        if i and t <= rows[i - 1][0]:
            raise LinkTraceError(f"row {i + 1}: seconds must increase")
    if not any(r > 0 for _, r in rows):
        raise LinkTraceError("every rate in the throughput log is 0")


def parse_throughput_csv(text: str, where: str = "throughput log") -> list[tuple[float, float]]:
    """Rows of `seconds, Mbit/s` (comma or whitespace separated; a header line and `#`
    comments are skipped; further columns are ignored)."""
    rows: list[tuple[float, float]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError):
            if not rows and lineno == 1:
                continue  # a header
            raise LinkTraceError(f"{where}: line {lineno} is not 'seconds, Mbit/s'") from None
    return rows


def format_trace(times_ms: Iterable[int]) -> str:
    return "".join(f"{t}\n" for t in times_ms)
