"""The same cases on both node interfaces of the one supervisor: on this host (`LocalNodes`, an
agent in the harness) and over a Ray cluster (`--ray local:2`, agent actors whose records are
shipped). Planned faults with restarts, then Ctrl-C: exit 130, summary.json, every sample
accounted for, no process left; and a disk that fills mid-run: exit 1 with the cause in the
last line. The Ray cases skip, saying why, where the extra is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                         reason="the 'ray' extra is not installed (pip install -e '.[ray]')")
PATHS = [pytest.param([], id="local"), pytest.param(["--ray", "local:2"], id="ray", marks=RAY)]

FAULTS = """
name = "paths"
duration_s = 120
[devices]
count = 6
rate_hz = 5.0
[server]
restart_on_exit = true
[[faults]]
kind = "kill_device"
at_s = 1.0
devices = ["low-000"]
restart_after_s = 1.0
[[faults]]
kind = "kill_server"
at_s = 2.0
restart_after_s = 1.0
"""


def _events(out: Path) -> str:
    path = out / "events.harness.jsonl"
    return path.read_text() if path.is_file() else ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("where", PATHS)
def test_faults_then_ctrl_c_every_sample_accounted(tmp_path: Path, where: list[str]) -> None:
    scenario = tmp_path / "paths.toml"
    scenario.write_text(FAULTS)
    out = tmp_path / "run"
    log = tmp_path / "harness.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(scenario),
                                 "--out", str(out), *where], cwd=ROOT,
                                start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not all(k in _events(out) for k in ('"server_restart"', '"device_restart"')):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the faults did not happen"
            time.sleep(0.3)
        time.sleep(1.0)  # the restarted ones serve a little
        family = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        proc.wait(90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert text.strip().splitlines()[-1] == \
        "run stopped by Ctrl-C: the numbers cover the run until then"
    s = json.loads((out / "summary.json").read_text())
    assert s["run"]["interrupted"] and s["run"]["stopped_by"] == "SIGINT"
    assert s["samples"]["lost"] == 0 and s["samples"]["generated"] > 0
    assert s["samples"]["generated"] == s["samples"]["completed"] + s["samples"]["aborted"]
    f = s["faults"]
    assert (f["device_kill"], f["device_restart"], f["server_kill"], f["server_restart"]) == \
        (1, 1, 1, 1), f
    assert f.get("device_crashes", 0) == 0 and f.get("server_crashes", 0) == 0
    assert ("nodes" in s) == bool(where)
    _, alive = psutil.wait_procs(family, timeout=15)
    assert [p for p in alive if _alive(p)] == []


@pytest.mark.parametrize("where", PATHS)
def test_a_disk_that_fills_mid_run_stops_it_with_the_cause(tmp_path: Path,
                                                          where: list[str]) -> None:
    disk = tmp_path / "tiny"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/unit/test_supervisor.py "
                    "covers the rule with stand-in agents")
    try:
        done = subprocess.run([sys.executable, "-m", "testbed", "up", "--devices", "6",
                               "--duration", "60", "--policy", "static",
                               "--out", str(disk / "run"), *where], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        output = done.stdout + done.stderr
        assert "Traceback" not in output, output[-3000:]
        assert done.returncode == 1, output[-3000:]
        assert "disk full while writing" in output.strip().splitlines()[-1], output[-2000:]
        assert list((disk / "run" / "samples").glob("*.csv"))  # what was written is kept
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
