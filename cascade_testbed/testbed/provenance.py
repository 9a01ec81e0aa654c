"""Where a run's numbers come from: the code, the scenario and the packages that made it.

Every run folder gets `provenance.json`: the git commit and whether the tree was dirty, a
fingerprint of every file that can change what a run measures (the packages, the embedded
zoo, `pyproject.toml`), a hash of the resolved scenario, and the package versions. A finished
run is worth reusing (a resumed sweep or claims run) only when both hashes match the code and
scenario about to run: a commit that touched only docs or tests keeps every run, one that
touched the server runs them all again. Scenario files count through the scenario hash (the
resolved scenario holds its trace points, tuned values and seed), so editing a comment in an
unrelated scenario file, or writing tuned values, does not throw runs away.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.files import write_whole
from cascade_testbed.common.link_trace import file_sha256
from cascade_testbed.common.scenario_file import scenario_to_dict
from cascade_testbed.testbed.versions import collect_versions

ROOT = Path(__file__).resolve().parents[2]
PROVENANCE_FILE = "provenance.json"
CODE_DIRS = ("cascade_testbed",)
"""Folders (under the source root) whose files decide what a run measures: the package (its
example policy too, which a run may name)."""
CODE_FILES = ("pyproject.toml",)
NOT_CODE = tuple(f"cascade_testbed/testbed/{part}" for part in (
    "claims/", "dashboard/static/", "cli.py", "commands/", "console.py"))
"""Parts of the packages that judge or show runs but do not change them: the claims'
catalog and statistics (a verdict is recomputed from the summaries on every call), the live
view's page, and the command line and its console (what they make of the options is the
resolved scenario, which the scenario hash covers)."""
SKIPPED_PARTS = ("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


def code_files(root: Path = ROOT) -> list[Path]:
    """Every file that can change a run, sorted, relative to `root`."""
    out = [Path(name) for name in CODE_FILES if (root / name).is_file()]
    for top in CODE_DIRS:
        for path in (root / top).rglob("*"):
            rel = path.relative_to(root)
            text = rel.as_posix()
            if not path.is_file() or any(p in SKIPPED_PARTS for p in rel.parts) \
                    or text.endswith(SKIPPED_SUFFIXES) or text.startswith(NOT_CODE):
                continue
            out.append(rel)
    return sorted(out)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=4)
def _manifest_cached(root: Path, stamp: tuple[tuple[str, int, int], ...]) -> dict[str, str]:
    return {rel: _digest((root / rel).read_bytes())[:16] for rel, _, _ in stamp}


def code_manifest(root: Path = ROOT) -> dict[str, str]:
    """{file: short content hash} of every file in `code_files` (cached while no file's size
    or modification time changes: a claims run asks once per run)."""
    files = code_files(root)
    stamp = tuple((f.as_posix(), (st := (root / f).stat()).st_size, st.st_mtime_ns)
                  for f in files)
    return dict(_manifest_cached(root, stamp))


def code_hash(manifest: Mapping[str, str]) -> str:
    return _digest(json.dumps(sorted(manifest.items())).encode())[:16]


def scenario_hash(cfg: ScenarioConfig, root: Path = ROOT) -> str:
    """A hash of the resolved scenario (every field, after overrides, tuned values and the
    seed), with paths inside the source tree made relative (the same scenario hashes alike in
    another clone) and the content of the files it names by path (a zoo folder, a gear plan)."""
    data = _relative(scenario_to_dict(cfg), str(root))
    named = [p for p in (cfg.zoo, cfg.policy.params.get("plan"), *link_traces(cfg))
             if isinstance(p, str) and p]
    contents = {_relative(p, str(root)): _path_digest(Path(p)) for p in named}
    return _digest(json.dumps([data, contents], sort_keys=True).encode())[:16]


def _relative(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and value.startswith(root + "/"):
        return value[len(root) + 1:]
    return value


def _path_digest(path: Path) -> str:
    if path.is_file():
        return _digest(path.read_bytes())[:16]
    if path.is_dir():
        parts = [(p.relative_to(path).as_posix(), _digest(p.read_bytes()))
                 for p in sorted(path.rglob("*")) if p.is_file()]
        return _digest(json.dumps(parts).encode())[:16]
    return "missing"


@dataclass(frozen=True)
class GitState:
    commit: str | None
    """The checked-out commit, None outside a git checkout."""
    dirty: bool
    """Uncommitted changes anywhere in the tree (tracked files)."""
    dirty_code: tuple[str, ...]
    """Uncommitted changes among the files that can change a run."""


def git_state(root: Path = ROOT) -> GitState:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return GitState(None, False, ())
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    changed = [line[3:].split(" -> ")[-1] for line in status.splitlines() if len(line) > 3]
    code = tuple(sorted(c for c in changed if c in CODE_FILES or (
        c.startswith(tuple(d + "/" for d in CODE_DIRS)) and not c.startswith(NOT_CODE))))
    return GitState(commit.strip(), bool(changed), code)


def current(cfg: ScenarioConfig | None = None, root: Path = ROOT) -> dict[str, Any]:
    """The provenance of a run about to start (or, without `cfg`, of a table of results)."""
    manifest = code_manifest(root)
    git = git_state(root)
    out: dict[str, Any] = {
        "commit": git.commit, "dirty": git.dirty, "dirty_code": list(git.dirty_code),
        "code_hash": code_hash(manifest),
    }
    if cfg is not None:
        out["scenario_hash"] = scenario_hash(cfg, root)
        out["versions"] = collect_versions()
        out["code_files"] = manifest
        out["link_traces"] = {_relative(p, str(root)): file_sha256(p) for p in link_traces(cfg)}
    return out


def link_traces(cfg: ScenarioConfig) -> list[str]:
    """The link trace files the scenario's tiers name, each once, sorted."""
    return sorted({link.trace for tier in cfg.tiers.values()
                   for link in (tier.uplink, tier.downlink) if link.trace})


def write(run_dir: Path, cfg: ScenarioConfig) -> dict[str, Any]:
    """`provenance.json` in a run folder that is about to run `cfg`."""
    record = current(cfg)
    write_whole(run_dir / PROVENANCE_FILE, json.dumps(record, indent=1) + "\n")
    return record


def read(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / PROVENANCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def short(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a table of results says of one run: commit, dirty, code and scenario hashes."""
    if not record:
        return {"commit": None}
    return {k: record.get(k) for k in ("commit", "dirty", "code_hash", "scenario_hash")}


def stale(run_dir: Path, cfg: ScenarioConfig, now: Mapping[str, str] | None = None,
          root: Path = ROOT) -> str | None:
    """Why the finished run in `run_dir` may not stand for a run of `cfg` with today's code,
    or None when it may: its scenario hash and its code fingerprint must both match."""
    record = read(run_dir)
    if record is None:
        return "it records no provenance"
    if record.get("scenario_hash") != scenario_hash(cfg, root):
        return "its scenario differs"
    manifest = dict(now if now is not None else code_manifest(root))
    theirs = record.get("code_files")
    if record.get("code_hash") == code_hash(manifest):
        return None
    if not isinstance(theirs, dict):
        return "it was made by other code"
    changed = sorted(changed_files(theirs, manifest))
    commit = str(record.get("commit") or "?")[:10]
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return f"code changed since it ran (commit {commit}): {', '.join(changed[:3])}{more}"


def changed_files(old: Mapping[str, str], new: Mapping[str, str]) -> Iterable[str]:
    return {f for f in set(old) | set(new) if old.get(f) != new.get(f)}
