"""Runs spread over a Ray cluster: `--ray local:3` (three real Ray nodes on this host), one
agent per node forking real device processes, the server on the head, and a node agent killed
mid-run. Skipped, with the reason printed, where Ray is not installed; the `--ray` refusal
without Ray is tested everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

DEVICES = 30
DURATION_S = 12.0
RATE_HZ = 2.0
KILL_AT_S = 5.0

SCENARIO = f"""
name = "cluster"
duration_s = {DURATION_S}
[devices]
count = {DEVICES}
rate_hz = {RATE_HZ}
[[faults]]
kind = "kill_node"
at_s = {KILL_AT_S}
node = "node2"
"""


def _testbed(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def test_three_nodes_one_killed_mid_run_every_sample_accounted(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the 'ray' extra is not installed "
                                      "(pip install -e '.[ray]')")
    scenario = tmp_path / "cluster.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    log = tmp_path / "harness.txt"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(scenario),
                                 "--ray", "local:3", "--out", str(out)],
                                start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    family: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 150
        events = out / "events.harness.jsonl"
        while not (events.is_file() and "all_registered" in events.read_text()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.5)
        # Token auth holds on the address the cluster uses: no token, no answer.
        url = next(json.loads(line)["url"] for line in events.read_text().splitlines()
                   if '"server_listening"' in line)
        for path, data in (("/v1/infer", b"\x80"), ("/v1/status", None)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url + path, data=data),
                                       timeout=5)
            assert refused.value.code == 401
            refused.value.close()  # its socket, else a ResourceWarning fails a later test
        # Every process of the run: Ray's (GCS, raylets, workers), agents, forkservers,
        # the server and the 30 devices; none may outlive the run.
        family = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
        proc.wait(150)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text
    s = json.loads((out / "summary.json").read_text())
    samples = s["samples"]
    assert s["devices"] == DEVICES
    assert samples["lost"] == 0
    assert samples["generated"] == samples["completed"] + samples["aborted"]
    nodes = s["nodes"]
    assert set(nodes) == {"head", "node1", "node2"}
    assert [nodes[n]["devices"] for n in sorted(nodes)] == [10, 10, 10]
    assert sum(n["generated"] for n in nodes.values()) == samples["generated"]
    assert nodes["head"]["server"] and nodes["node2"]["lost_node"]

    # The surviving nodes were not touched: all their devices ran to the end and said so.
    expected = 10 * RATE_HZ * DURATION_S
    for name in ("head", "node1"):
        assert not nodes[name]["lost_node"]
        assert nodes[name]["aborted"] == 0 and nodes[name]["lost"] == 0
        assert 0.75 * expected < nodes[name]["generated"] < 1.25 * expected
    per_device = {d["device_id"]: d for d in s["per_device"]}
    events_all = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    exits = {e["device"] for e in events_all if e["kind"] == "device_exit"}
    on_node2 = {e["device"] for e in events_all if e["kind"] == "device_exit"
                and e.get("node") == "node2"}
    assert exits == on_node2 and len(on_node2) == 10
    outcomes = {p.stem for p in (out / "devices").glob("*.json")}
    assert outcomes == set(per_device) - on_node2  # every surviving device's own report

    # The lost node's devices stopped when it did: about KILL_AT_S of arrivals each.
    assert nodes["node2"]["generated"] < 0.6 * expected
    assert nodes["node2"]["generated"] > 0.5 * 10 * RATE_HZ * KILL_AT_S
    kill = [e for e in events_all if e["kind"] == "node_kill"]
    assert len(kill) == 1 and kill[0]["node"] == "node2"
    assert s["faults"]["injected"] == 1 and s["faults"]["node_kill"] == 1
    assert s["faults"]["device_crashes"] == 0

    # Records came from the nodes into the one run folder, logs kept per node.
    assert len(list((out / "samples").glob("*.csv"))) == DEVICES
    assert {p.name for p in (out / "logs").glob("devices.*.log")} >= \
        {"devices.head.log", "devices.node1.log"}
    assert "server_listening" in (out / "events.jsonl").read_text()
    assert s["resources"]["device_uss_mb"]["sampled"] > 0

    assert len(family) > DEVICES
    _, alive = psutil.wait_procs(list(family.values()), timeout=20)
    assert [p for p in alive if _running(p)] == []
