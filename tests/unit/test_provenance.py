"""Provenance: which files count as code, the scenario hash, and when a finished run may stand
for a new one (a sweep resumes only with runs of today's code and scenario)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.testbed import provenance
from cascade_testbed.testbed.sweep import Reuse, expand, parse_axes, partition


def tree(root: Path) -> Path:
    pkg = "cascade_testbed"
    for rel, text in {f"{pkg}/common/a.py": "A = 1\n", f"{pkg}/server/b.py": "B = 2\n",
                      f"{pkg}/testbed/c.py": "C = 3\n", f"{pkg}/testbed/claims/judge.py": "J = 4\n",
                      f"{pkg}/testbed/dashboard/static/page.js": "x\n", "docs/d.md": "doc\n",
                      "tests/t.py": "T = 5\n", "cascade_testbed/emulated_devices/e.py": "E = 6\n",
                      "cascade_testbed/common/__pycache__/a.cpython-311.pyc": "junk",
                      "pyproject.toml": "[project]\n"}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_code_is_the_packages_and_pyproject_not_docs_tests_or_the_judging(
        tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert [p.as_posix() for p in provenance.code_files(root)] == [
        "cascade_testbed/common/a.py", "cascade_testbed/emulated_devices/e.py",
        "cascade_testbed/server/b.py", "cascade_testbed/testbed/c.py", "pyproject.toml"]
    before = provenance.code_hash(provenance.code_manifest(root))
    for rel in ("docs/d.md", "tests/t.py", "cascade_testbed/testbed/claims/judge.py"):
        (root / rel).write_text("changed\n")
    assert provenance.code_hash(provenance.code_manifest(root)) == before
    (root / "cascade_testbed/server/b.py").write_text("B = 3\n")
    after = provenance.code_manifest(root)
    assert provenance.code_hash(after) != before
    b = "cascade_testbed/server/b.py"
    assert after[b] != provenance.code_manifest(tree(tmp_path / "x"))[b]


def test_the_scenario_hash_follows_every_resolved_field_but_not_the_checkout(
        tmp_path: Path) -> None:
    cfg = ScenarioConfig(name="s", seed=1)
    assert provenance.scenario_hash(cfg) == provenance.scenario_hash(ScenarioConfig(name="s",
                                                                                    seed=1))
    assert provenance.scenario_hash(cfg) != provenance.scenario_hash(
        dataclasses.replace(cfg, seed=2))
    zoo = tree(tmp_path / "a") / "cascade_testbed" / "common"
    other = tree(tmp_path / "b") / "cascade_testbed" / "common"
    here = dataclasses.replace(cfg, zoo=str(zoo))
    there = dataclasses.replace(cfg, zoo=str(other))
    assert provenance.scenario_hash(here, tmp_path / "a") == \
        provenance.scenario_hash(there, tmp_path / "b")  # the same zoo in two checkouts
    (other / "a.py").write_text("A = 2\n")
    assert provenance.scenario_hash(here, tmp_path / "a") != \
        provenance.scenario_hash(there, tmp_path / "b")  # a zoo whose content changed


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_the_commit_and_which_code_is_dirty(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert provenance.git_state(root).commit is None
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    state = provenance.git_state(root)
    assert state.commit and len(state.commit) == 40 and not state.dirty
    (root / "docs/d.md").write_text("edited\n")
    assert provenance.git_state(root).dirty and provenance.git_state(root).dirty_code == ()
    (root / "cascade_testbed/server/b.py").write_text("B = 9\n")
    assert provenance.git_state(root).dirty_code == ("cascade_testbed/server/b.py",)


def test_a_finished_run_stands_only_for_the_same_scenario_and_code(tmp_path: Path) -> None:
    root = tree(tmp_path / "src")
    cfg = ScenarioConfig(name="s", seed=1)
    run = tmp_path / "run"
    run.mkdir()
    assert provenance.stale(run, cfg, root=root) == "it records no provenance"
    record = {"scenario_hash": provenance.scenario_hash(cfg, root),
              "code_hash": provenance.code_hash(provenance.code_manifest(root)),
              "code_files": provenance.code_manifest(root), "commit": "abcdef1234567"}
    (run / provenance.PROVENANCE_FILE).write_text(json.dumps(record))
    assert provenance.stale(run, cfg, root=root) is None
    assert provenance.stale(run, dataclasses.replace(cfg, seed=2), root=root) == \
        "its scenario differs"
    (root / "cascade_testbed/server/b.py").write_text("B = 3\n")
    (root / "cascade_testbed/server/new.py").write_text("N = 1\n")
    why = provenance.stale(run, cfg, root=root)
    assert why == ("code changed since it ran (commit abcdef1234): cascade_testbed/server/b.py, "
                   "cascade_testbed/server/new.py")


def test_a_sweep_runs_again_only_what_other_code_or_scenario_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = scenario_from_dict({"name": "s", "duration_s": 2, "sweep": {"devices": [2, 3]}})
    points = expand(base, parse_axes(base.sweep))
    sweep_dir = tmp_path / "sweep"
    for point in points:
        run = sweep_dir / point.name
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"run": {"harness_ended": True}}))
        provenance.write(run, point.cfg)
    todo, outcome = partition(points, sweep_dir, Reuse())
    assert todo == [] and outcome.skipped == [p.name for p in points]
    changed: dict[str, Any] = {**provenance.code_manifest(), "cascade_testbed/server/extra.py": "0"}
    todo, outcome = partition(points, sweep_dir, Reuse(manifest=changed))
    assert todo == points and all("cascade_testbed/server/extra.py" in why
                                  for why in outcome.stale.values())
    todo, outcome = partition(points, sweep_dir, Reuse(any=True, manifest=changed))
    assert todo == [] and set(outcome.reused_other) == {p.name for p in points}
    (sweep_dir / points[0].name / "summary.json").unlink()  # cut short
    todo, _ = partition(points, sweep_dir, Reuse(any=True, manifest=changed))
    assert todo == points[:1]
