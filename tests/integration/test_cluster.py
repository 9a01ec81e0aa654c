"""`--ray` as bad input: without Ray installed, and with an address that is not one. Runs over a
cluster (three real Ray nodes on this host, a node killed mid-run, Ctrl-C, a full disk) are in
test_both_paths.py, beside the same cases on this host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _testbed(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cascade_testbed", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_ray_without_ray_installed_says_so_in_one_line(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(shadow.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "run"
    res = _testbed("up", "--devices", "3", "--duration", "2", "--ray", "local:2",
                   "--out", str(out), env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("run failed: --ray needs Ray") and "'.[ray]'" in lines[-1]
    assert "Traceback" not in res.stdout + res.stderr
    assert not out.exists()


def test_a_bad_ray_address_is_bad_input(tmp_path: Path) -> None:
    res = _testbed("up", "--devices", "3", "--ray", "lokal:3", "--out", str(tmp_path / "r"))
    assert res.returncode == 2
    assert "ray address must be" in res.stdout and "Traceback" not in res.stderr
