"""The same cases on both node interfaces of the one supervisor: on this host (`LocalNodes`, an
agent in the harness) and over a Ray cluster (`--ray local:N`, agent actors on three real Ray
nodes of this host, whose records are shipped). Planned faults with restarts (and, on the
cluster, a node killed with its devices), then Ctrl-C: exit 130, summary.json, every sample
accounted for, the token required, no process left; and a disk that fills mid-run: exit 1
with the cause in the last line. The Ray cases skip, saying why, where the extra is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                         reason="the 'ray' extra is not installed (pip install -e '.[ray]')")
PATHS = [pytest.param([], id="local"), pytest.param(["--ray", "local:3"], id="ray", marks=RAY)]
KILL_NODE = """
[[faults]]
kind = "kill_node"
at_s = 1.5
node = "node2"
"""

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


@pytest.mark.slow
@pytest.mark.parametrize("where", PATHS)
def test_faults_then_ctrl_c_every_sample_accounted(tmp_path: Path, where: list[str]) -> None:
    cluster = bool(where)
    scenario = tmp_path / "paths.toml"
    scenario.write_text(FAULTS + (KILL_NODE if cluster else ""))
    out = tmp_path / "run"
    log = tmp_path / "harness.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed", "run", str(scenario),
                                 "--out", str(out), *where], cwd=ROOT,
                                start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    family: list[psutil.Process] = []
    awaited = ['"server_restart"', '"device_restart"', *(['"node_lost"'] if cluster else [])]
    try:
        deadline = time.monotonic() + 120
        while not all(k in _events(out) for k in awaited):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the faults did not happen"
            time.sleep(0.3)
        # The token holds on the address the run uses: no token, no answer.
        url = [json.loads(line)["url"] for line in _events(out).splitlines()
               if '"server_listening"' in line][-1]
        for path, data in (("/v1/infer", b"\x80"), ("/v1/status", None)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url + path, data=data),
                                       timeout=5)
            assert refused.value.code == 401
            refused.value.close()  # its socket, else a ResourceWarning fails a later test
        time.sleep(1.0)  # the restarted ones serve a little
        # Every process of the run (on a cluster also Ray's: GCS, raylets, workers, the
        # agents): none may outlive it.
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
    assert (f["device_kill"], f["device_restart"], f["server_kill"], f["server_restart"],
            f.get("node_kill", 0)) == (1, 1, 1, 1, int(cluster)), f
    assert f.get("device_crashes", 0) == 0 and f.get("server_crashes", 0) == 0
    assert len(list((out / "samples").glob("*.csv"))) >= 6
    assert s["resources"]["device_uss_mb"]["sampled"] > 0
    if cluster:
        _node_lost_alone(out, s)
    else:
        assert "nodes" not in s
    _, alive = psutil.wait_procs(family, timeout=20)
    assert [p for p in alive if _alive(p)] == []


def _node_lost_alone(out: Path, s: dict[str, object]) -> None:
    """node2 was killed with its devices: they, and only they, ended without an outcome, and
    the other nodes' devices answered everything they had started."""
    nodes = s["nodes"]
    assert isinstance(nodes, dict) and set(nodes) == {"head", "node1", "node2"}
    assert [nodes[n]["devices"] for n in sorted(nodes)] == [2, 2, 2]
    assert nodes["head"]["server"] and nodes["node2"]["lost_node"]
    assert sum(n["generated"] for n in nodes.values()) == s["samples"]["generated"]  # type: ignore
    for name in ("head", "node1"):
        assert not nodes[name]["lost_node"] and nodes[name]["lost"] == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    exits = {(e["device"], e["planned"]) for e in events if e["kind"] == "device_exit"
             and e.get("node") == "node2"}
    assert len(exits) == 2 and all(planned for _, planned in exits)
    outcomes = {p.stem.partition("~")[0] for p in (out / "devices").glob("*.json")}
    assert not outcomes & {d for d, _ in exits}  # a lost node's devices said nothing more
    assert {p.name for p in (out / "logs").glob("devices.*.log")} >= \
        {"devices.head.log", "devices.node1.log"}


@pytest.mark.slow
@pytest.mark.parametrize("where", PATHS)
def test_a_disk_that_fills_mid_run_stops_it_with_the_cause(tmp_path: Path,
                                                          where: list[str]) -> None:
    disk = tmp_path / "tiny"
    disk.mkdir()
    # Room for the run's first files and a few seconds of records (a Ray run starts with more).
    size = "128k" if where else "96k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); tests/unit/test_supervisor.py "
                    "covers the rule with stand-in agents")
    try:
        done = subprocess.run([sys.executable, "-m", "cascade_testbed", "up", "--devices", "6",
                               "--duration", "60", "--policy", "static",
                               "--out", str(disk / "run"),
                               *(["--ray", "local:1"] if where else [])], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        output = done.stdout + done.stderr
        assert "Traceback" not in output, output[-3000:]
        assert done.returncode == 1, output[-3000:]
        assert "disk full while writing" in output.strip().splitlines()[-1], output[-2000:]
        assert list((disk / "run" / "samples").glob("*.csv"))  # what was written is kept
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
