"""Records move from the nodes to the driver as they are written. Pure file work, no Ray.

An agent's devices write into a scratch folder on its node with the layout of a run folder
(samples/*.csv and *.gen, devices/*.json, logs/*.log, events.server.jsonl). `Tail` reads what
was appended since the last look and returns it as `Chunk`s, only whole lines of line files,
so the driver's copy never ends in half a row while the device lives; `Sink` writes the chunks
into the driver's run folder under the names the local harness uses, so the existing summary
code reads a cluster run unchanged. A node lost mid-run loses only what was written after the
last chunk left it (at most one poll interval), never a row the driver already has.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cascade_testbed.common.files import run_path, write_whole
from cascade_testbed.common.names import is_name

FOLDERS = ("samples", "devices", "logs")
"""Sub-folders of a run folder that agents ship (top-level files: `events.*.jsonl`)."""
LINE_SUFFIXES = (".csv", ".gen", ".log", ".jsonl")
MAX_CHUNK_BYTES = 1 << 20
"""At most this much of one file per look (the rest comes with the next one)."""
MAX_POLL_BYTES = 8 << 20
"""At most this much in one answer to the driver."""
SHARED_LOGS = ("devices.log",)
"""Log files every node writes: the driver keeps one per node (`logs/devices.<node>.log`)."""


class BadChunk(ValueError):
    """A chunk whose path is not one an agent ships (it could point outside the run)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    """Relative to the run folder, '/'-separated: `samples/low-000.csv`."""
    offset: int
    data: bytes
    whole: bool = False
    """The file's whole content (a JSON outcome): replace, do not append."""


class Tail:
    """What an agent has not shipped yet of the files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sent: dict[str, int] = {}
        """Bytes shipped per line file; for whole files, the size last shipped."""

    def files(self) -> list[str]:
        out = [p.name for p in sorted(self.root.glob("events.*.jsonl"))]
        for folder in FOLDERS:
            d = self.root / folder
            if d.is_dir():
                out += [f"{folder}/{p.name}" for p in sorted(d.iterdir())
                        if p.is_file() and not p.name.startswith(".")]
        return out

    def chunks(self, final: bool = False) -> list[Chunk]:
        """New bytes of every file; `final` also ships a last line without its newline (a row
        torn by a kill: the reader counts it as torn, as for a local run)."""
        out: list[Chunk] = []
        budget = MAX_POLL_BYTES
        for rel in self.files():
            if budget <= 0:
                break
            chunk = self._next(rel, final, min(budget, MAX_CHUNK_BYTES))
            if chunk is not None:
                out.append(chunk)
                budget -= len(chunk.data)
        return out

    def _next(self, rel: str, final: bool, limit: int) -> Chunk | None:
        path = self.root / rel
        done = self.sent.get(rel, 0)
        try:
            size = path.stat().st_size
            if not rel.endswith(LINE_SUFFIXES):
                if size == done and not final:
                    return None
                data = path.read_bytes()
                if not final:
                    json.loads(data)  # half-written: next time
                if len(data) == done and rel in self.sent:
                    return None
                self.sent[rel] = len(data)
                return Chunk(rel, 0, data, whole=True)
            if size == 0 and final and rel not in self.sent:
                self.sent[rel] = 0
                return Chunk(rel, 0, b"")  # an empty log still exists in the run folder
            if size <= done:
                return None
            with path.open("rb") as f:
                f.seek(done)
                data = f.read(limit)
        except (OSError, ValueError):
            return None
        if not final or len(data) == limit:
            cut = data.rfind(b"\n") + 1
            data = data[:cut]
        if not data:
            return None
        self.sent[rel] = done + len(data)
        return Chunk(rel, done, data)


def driver_path(node: str, rel: str) -> tuple[tuple[str, ...], str]:
    """Where a node's file goes in the driver's run folder: name parts and a suffix for
    `run_path` (`samples/low-000~1.csv` -> (("samples", "low-000~1"), ".csv"))."""
    parts = rel.split("/")
    ok = (len(parts) == 1 and parts[0].startswith("events.") and parts[0].endswith(".jsonl")) \
        or (len(parts) == 2 and parts[0] in FOLDERS)
    stem, suffix = os.path.splitext(parts[-1])
    if not ok or suffix not in (*LINE_SUFFIXES, ".json") \
            or not all(is_name(p) for p in parts[:-1]) or not is_name(stem.partition("~")[0]):
        raise BadChunk(f"an agent may not ship {rel[:80]!r}")
    if parts[0] == "logs" and parts[1] in SHARED_LOGS:
        stem = f"{stem}.{node}"
    return (*parts[:-1], stem), suffix


class Sink:
    """Writes the chunks of every node into the driver's run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.bytes = 0

    def write(self, node: str, chunk: Chunk) -> None:
        parts, suffix = driver_path(node, chunk.path)
        path = run_path(self.run_dir, *parts, suffix=suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        if chunk.whole:
            write_whole(path, chunk.data.decode(errors="replace"))
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
            try:
                if os.fstat(fd).st_size < chunk.offset:
                    raise BadChunk(f"{chunk.path}: a gap before byte {chunk.offset}")
                os.pwrite(fd, chunk.data, chunk.offset)
            finally:
                os.close(fd)
        self.bytes += len(chunk.data)
