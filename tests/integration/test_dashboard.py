"""The live view during real runs: `testbed up --dashboard` opened in headless Chromium (read
through the DevTools protocol), and `testbed watch URL` beside a run that is already going."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from cascade_testbed.common.files import run_path
from cascade_testbed.testbed.palette import tier_color

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)
URL = re.compile(r"(dashboard|server): (http://127\.0\.0\.1:\d+)")


class Harness:
    """`python -m cascade_testbed ...` in its own session, its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cascade_testbed", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "COLUMNS": "250"})
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self, kind: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in URL.finditer(self.output):
                if m.group(1) == kind:
                    return m.group(2)
            assert self.proc.poll() is None, self.output
            time.sleep(0.1)  # polling the child's output for a line
        raise AssertionError(f"no {kind} URL printed:\n{self.output}")

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(10)  # reads to the end of the output
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


PROBE = """JSON.stringify(window.dashboard ? {
  rows: dashboard.rows(), points: dashboard.points('device.threshold'),
  devices: dashboard.labels('device.threshold'), tiers: dashboard.labels('tier.slo'),
  forward: dashboard.values('device.forward_rate'), slo: dashboard.values('tier.slo'),
  p95: dashboard.values('device.p95_ms'), rate: dashboard.values('server.rate'),
  queue: dashboard.points('server.queue'), widths: dashboard.widths(),
  colors: dashboard.tierColors()} : null)"""
END_PROBE = """JSON.stringify({banner: dashboard.banner(), tiers: dashboard.tiersShown(),
  rows: dashboard.rows()})"""
Call = Callable[..., Awaitable[dict[str, Any]]]


@contextlib.asynccontextmanager
async def devtools(port: int, page_url: str, until: float) -> AsyncIterator[Call]:
    """`call(method, **params)` on the page at `page_url` through the DevTools protocol."""
    async with aiohttp.ClientSession() as http:
        ws_url = None
        while ws_url is None:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = await resp.json(content_type=None)
            ws_url = next((p["webSocketDebuggerUrl"] for p in pages
                           if p.get("type") == "page" and p["url"].startswith(page_url)), None)
            assert time.monotonic() < until, f"no page for {page_url}: {pages}"
            await asyncio.sleep(0.2)
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 10_000))

            async def call(method: str, **params: Any) -> dict[str, Any]:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json(timeout=30)
                    if msg.get("id") == n:
                        assert "error" not in msg, msg
                        return msg["result"]  # type: ignore[no-any-return]

            yield call


async def probe_page(port: int, page_url: str, until: float, screenshot: Path) -> dict[str, Any]:
    """Read the charts through the DevTools protocol until they hold a few seconds of the run
    (every device, latencies, ratios), then save a screenshot."""
    async with devtools(port, page_url, until) as call:
        seen: dict[str, Any] = {}
        while time.monotonic() < until:
            result = await call("Runtime.evaluate", expression=PROBE, returnByValue=True)
            seen = json.loads(result["result"].get("value") or "null") or {}
            if seen and seen["points"] >= 8 and len(seen["devices"]) == 3 \
                    and seen["p95"] > 0 and seen["forward"] > 0 and seen["slo"] > 0:
                break
            await asyncio.sleep(0.5)
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return seen


async def probe_end(port: int, page_url: str, until: float) -> dict[str, Any]:
    """What the page shows once the run (and its view) stopped: read until it says so."""
    async with devtools(port, page_url, until) as call:
        seen: dict[str, Any] = {}
        while time.monotonic() < until:
            result = await call("Runtime.evaluate", expression=END_PROBE, returnByValue=True)
            seen = json.loads(result["result"]["value"])
            if seen["banner"]["ended"]:
                break
            await asyncio.sleep(0.3)
        return seen


@pytest.mark.slow
def test_up_dashboard_in_headless_chromium_shows_the_runs_devices(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    out = tmp_path / "run"
    run = Harness("up", "--devices", "3", "--duration", "12", "--policy", "multitasc",
                  "--seed", "3", "--dashboard", "--dashboard-port", "0", "--out", str(out))
    chrome: subprocess.Popen[bytes] | None = None
    try:
        page = run.url("dashboard")
        server = run.url("server")
        profile = tmp_path / "chrome"
        chrome = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--window-size=1500,1900", page],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and chrome.poll() is None, "chromium did not start"
            time.sleep(0.1)  # polling for the file chromium writes when it listens
        port = int(port_file.read_text().split()[0])
        shot = run_path(out, "dashboard", suffix=".png")
        seen = asyncio.run(probe_page(port, page, time.monotonic() + 60, shot))
        code = run.proc.wait(90)  # the run ends, the page stays open on what it showed
        end = asyncio.run(probe_end(port, page, time.monotonic() + 30))
    finally:
        if chrome is not None and chrome.poll() is None:
            os.killpg(chrome.pid, signal.SIGKILL)
            chrome.wait(10)
        code = run.wait(90)
    assert code == 0, run.output
    summary = json.loads((out / "summary.json").read_text())
    device_ids = {d["device_id"] for d in summary["per_device"]}
    assert len(device_ids) == 3
    assert set(seen["devices"]) == device_ids, seen
    assert set(seen["tiers"]) == {d["tier"] for d in summary["per_device"]}
    assert seen["points"] >= 8 and seen["queue"] == seen["points"] and seen["rate"] > 0
    # the charts share the window's width (the window is 1500 px wide)
    assert seen["widths"]["right"] >= 0.9 * seen["widths"]["window"], seen["widths"]
    # the tiers' colours are the report figures' (testbed.palette)
    assert seen["colors"] == {t: tier_color(t) for t in seen["colors"]} and seen["colors"]
    # the end of the run: said so, not an error, and every tier still in the line of values
    assert end["banner"]["ended"] and end["banner"]["kind"] == "ended", end
    assert end["banner"]["text"].startswith("run ended"), end
    assert set(end["tiers"]) == {d["tier"] for d in summary["per_device"]}, end
    assert end["rows"] >= seen["rows"]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert f"metrics: {server}/metrics" in run.output
    token = (out / ".token").read_text().strip()
    assert token not in run.output and str(out / ".token") in run.output


@pytest.mark.slow
def test_watch_follows_a_run_already_going_and_ends_with_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = Harness("up", "--devices", "2", "--duration", "6", "--policy", "static",
                  "--out", str(out))
    watcher: Harness | None = None
    try:
        server = run.url("server")
        refused = subprocess.run(
            [sys.executable, "-m", "cascade_testbed", "watch", server, "--port", "0"],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "TESTBED_TOKEN"})
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refused the token" in refused.stdout and "Traceback" not in refused.stderr
        watcher = Harness("watch", server, "--run-dir", str(out), "--port", "0")
        page = watcher.url("dashboard")
        token = (out / ".token").read_text().strip()
        series: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            series = get_json(f"{page}/series")
            if len(series["t"]) >= 4 and len(series["charts"]["device.threshold"]["labels"]) == 2:
                break
            time.sleep(0.5)  # polling the view until it holds a few polls
        with urllib.request.urlopen(page, timeout=5) as resp:
            html = resp.read().decode()
        with urllib.request.urlopen(f"{page}/static/dashboard.js", timeout=5) as resp:
            script = resp.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{page}/static/..%2F..%2Fapp.py", timeout=5)
        refused.value.close()  # its socket, else a ResourceWarning fails a later test
        assert run.wait(60) == 0, run.output
        assert watcher.wait(40) == 0, watcher.output  # the run's events said it ended
    finally:
        run.kill()
        if watcher is not None:
            watcher.kill()
    assert "the run ended (its events say so)" in watcher.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(series["charts"]["device.threshold"]["labels"]) == \
        {d["device_id"] for d in summary["per_device"]}
    assert series["layout"] and "uPlot.iife.min.js" in html and "EventSource" in script
    assert token not in json.dumps(series) + html + script + watcher.output

