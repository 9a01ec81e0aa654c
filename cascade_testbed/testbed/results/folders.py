"""The runs a folder holds, for `testbed compare`: a run folder is one run; a sweep folder or
a folder of seed runs (`runs/claims/quick/<scenario>/<arm>/seed-k`) is one run per
sub-folder that has a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def runs_in(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, summary) of the run `folder` is, or of the runs directly inside it;
    `ValueError` when there are none (a run cut short needs `testbed report` first)."""
    if (folder / SUMMARY).is_file():
        summary = _read(folder / SUMMARY)
        if summary is None:
            raise ValueError(f"{folder / SUMMARY} cannot be read")
        return [(folder.name, summary)]
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    runs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        summary = _read(sub / SUMMARY) if (sub / SUMMARY).is_file() else None
        if summary is not None:
            runs.append((sub.name, summary))
    if not runs:
        raise ValueError(f"{folder} is not a run folder and holds no run folders with a "
                         f"{SUMMARY}")
    return runs
