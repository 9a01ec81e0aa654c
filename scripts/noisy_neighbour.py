"""One client that holds the run's token floods the server while N legitimate devices run:
their SLO satisfaction, p95 and heavy answers with and without the flood (same seed), how much
of the flood the server admitted, and how fast `/healthz` answered throughout. Everything on
127.0.0.1; the flood runs in its own process, the probe in this one.

    .venv/bin/python scripts/noisy_neighbour.py [--devices 20] [--duration 20] [--seed 7]
        [--policy static] [--invalid-share 0.5] [--out runs/noisy-neighbour]

The flooder connects as a device that declares no rate and sends, over one connection, as
fast as the socket takes them, valid `infer`s mixed with one-byte invalid frames
(`--invalid-share`); it reads every reply. Prints a table and, last, one JSON line with the
figures (docs/security.md, "Fair sharing", quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from cascade_testbed.common import protocol as wire

ROOT = Path(__file__).resolve().parents[1]
FLOODER = "flooder"
PIXELS = np.arange(64, dtype=np.uint8).tobytes()


@dataclass
class Flood:
    """What the flooder sent and what came back."""

    sent: int = 0
    invalid_sent: int = 0
    answered: int = 0
    """`result` replies: samples the server queued and answered."""
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


async def flood(url: str, token: str, seconds: float, invalid_share: float) -> Flood:
    """Send as fast as the socket takes frames for `seconds`, reading every reply."""
    out = Flood()
    rng = np.random.default_rng(0)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s, \
            s.ws_connect(f"{url.replace('http', 'ws', 1)}/v1/devices/{FLOODER}",
                         max_msg_size=0) as ws:
        await ws.send_bytes(wire.encode(wire.Hello(device_id=FLOODER, tier="mid",
                                                   model="light-mid", token=token)))
        welcome = wire.decode((await ws.receive(timeout=30)).data)
        assert isinstance(welcome, wire.Welcome), welcome

        async def read() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                reply = wire.decode(msg.data)
                if isinstance(reply, wire.Result):
                    out.answered += 1
                elif isinstance(reply, wire.Error):
                    name = wire.ErrorCode(reply.code).name.lower()
                    out.errors[name] = out.errors.get(name, 0) + 1

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        stop_at = t0 + seconds
        frames = [wire.encode(wire.Infer(sample_id=0, dtype="uint8", shape=(64,),
                                         data=PIXELS, deadline_ms=1000.0)), b"\xc1"]
        try:
            while time.monotonic() < stop_at and not ws.closed:
                for _ in range(64):
                    if rng.random() < invalid_share:
                        await ws.send_bytes(frames[1])
                        out.invalid_sent += 1
                    else:
                        await ws.send_bytes(wire.encode(wire.Infer(
                            sample_id=out.sent, dtype="uint8", shape=(64,), data=PIXELS,
                            deadline_ms=1000.0)))
                    out.sent += 1
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass  # the server may close a socket it will not read any more
        out.seconds = time.monotonic() - t0
        await asyncio.sleep(1.0)  # the last replies
        reader.cancel()
    return out


def _flood_process(url: str, token: str, seconds: float, invalid_share: float,
                   q: mp.Queue[dict[str, Any]]) -> None:
    q.put(asdict(asyncio.run(flood(url, token, seconds, invalid_share))))


async def probe_healthz(url: str, until: float, running: Callable[[], bool],
                        every_s: float = 0.05) -> list[float]:
    """Milliseconds each `/healthz` took, one every `every_s`, until `until` (monotonic) or
    the run ends. A probe that failed counts as 10 s, unless no probe answered after it (the
    run's end stopping the server, while the harness writes its summary)."""
    took: list[float | None] = []
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < until and running():
            t0 = time.monotonic()
            try:
                async with s.get(f"{url}/healthz",
                                 timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
                took.append((time.monotonic() - t0) * 1e3)
            except (aiohttp.ClientError, TimeoutError):
                took.append(None)
            await asyncio.sleep(every_s)
    while took and took[-1] is None:
        took.pop()
    return [10_000.0 if t is None else t for t in took]


def _wait_listening(run_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120.0
                    ) -> tuple[str, str]:
    """The run's server URL and token, once it listens (from the run folder)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its server listened"
        events = run_dir / "events.harness.jsonl"
        if events.exists() and (run_dir / ".token").exists():
            for line in events.read_text().splitlines():
                ev = json.loads(line)
                if ev.get("kind") == "server_listening":
                    return ev["url"], (run_dir / ".token").read_text().strip()
        time.sleep(0.1)
    raise TimeoutError("the run's server did not listen")


def run(devices: int, duration: float, seed: int, policy: str, out: Path,
        flooded: bool, invalid_share: float = 0.5) -> dict[str, Any]:
    """One `testbed up`, flooded or not: its exit code, summary and the flood's figures."""
    run_dir = out / ("flooded" if flooded else "alone")
    proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed", "up",
                             "--devices", str(devices),
                             "--duration", str(duration), "--seed", str(seed), "--policy",
                             policy, "--out", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    figures: dict[str, Any] = {}
    try:
        url, token = _wait_listening(run_dir, proc)
        flooder = None
        if flooded:
            q: mp.Queue[dict[str, Any]] = mp.Queue()
            # The devices start a little after the server listens: flood their whole run.
            flooder = mp.Process(target=_flood_process,
                                 args=(url, token, duration + 4.0, invalid_share, q))
            flooder.start()
        # /healthz in both runs: what the machine alone gives, and what the flood adds.
        took = asyncio.run(probe_healthz(url, time.monotonic() + duration + 4.0,
                                         lambda: proc.poll() is None))
        if flooder is not None:
            figures["flood"] = q.get(timeout=60)
            flooder.join(10)
        figures["healthz_ms"] = {"probes": len(took), "p50": float(np.median(took)),
                                 "p99": float(np.percentile(took, 99)),
                                 "max": float(max(took))}
        _, err = proc.communicate(timeout=duration + 180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    figures["exit_code"] = proc.returncode
    figures["last_line"] = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
    figures["summary"] = json.loads((run_dir / "summary.json").read_text())
    return figures


def legit(summary: dict[str, Any]) -> dict[str, Any]:
    """The harness's devices (the flooder is not one of them)."""
    s = summary["samples"]
    return {"slo_satisfaction": summary["slo_satisfaction"],
            "p95_ms": summary["latency_ms"]["p95"], "forwarded": s["forwarded"],
            "heavy": s["heavy"], "fallback": s["fallback"], "rejected": s["rejected"],
            "lost": s["lost"]}


def compare(devices: int, duration: float, seed: int, policy: str, out: Path,
            invalid_share: float = 0.5) -> dict[str, Any]:
    alone = run(devices, duration, seed, policy, out, flooded=False)
    flooded = run(devices, duration, seed, policy, out, flooded=True,
                  invalid_share=invalid_share)
    a, f = legit(alone["summary"]), legit(flooded["summary"])
    server = flooded["summary"].get("server") or {}
    return {
        "devices": devices, "duration_s": duration, "seed": seed, "policy": policy,
        "alone": a, "flooded": f, "exit_codes": [alone["exit_code"], flooded["exit_code"]],
        "last_lines": [alone["last_line"], flooded["last_line"]],
        "slo_change_pp": round(100 * (f["slo_satisfaction"] - a["slo_satisfaction"]), 2),
        "heavy_kept": round(f["heavy"] / a["heavy"], 4) if a["heavy"] else None,
        "flood": flooded["flood"], "healthz_ms": flooded["healthz_ms"],
        "healthz_ms_alone": alone["healthz_ms"],
        "server_rate_limited": server.get("rate_limited") or {},
        "server_shed": server.get("shed") or {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policy", default="static")
    parser.add_argument("--invalid-share", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "noisy-neighbour")
    args = parser.parse_args()
    r = compare(args.devices, args.duration, args.seed, args.policy, args.out,
                args.invalid_share)
    fl = r["flood"]
    print(f"{args.devices} devices, {args.duration:g} s, seed {args.seed}, {args.policy}")
    print(f"{'':22}{'alone':>12}{'flooded':>12}")
    for key in ("slo_satisfaction", "p95_ms", "forwarded", "heavy", "fallback", "rejected"):
        print(f"{key:22}{r['alone'][key]:>12}{r['flooded'][key]:>12}")
    print(f"flooder: {fl['sent']} frames in {fl['seconds']:.1f} s "
          f"({fl['sent'] / max(fl['seconds'], 1e-9):.0f}/s, {fl['invalid_sent']} invalid), "
          f"{fl['answered']} answered, errors {fl['errors']}")
    for label, h in (("alone", r["healthz_ms_alone"]), ("flooded", r["healthz_ms"])):
        print(f"/healthz {label}: {h['probes']} probes, p50 {h['p50']:.1f} ms, p99 "
              f"{h['p99']:.1f} ms, max {h['max']:.1f} ms")
    print(f"SLO change {r['slo_change_pp']:+.2f} pp, heavy answers kept {r['heavy_kept']}")
    print(json.dumps(r, default=str))


if __name__ == "__main__":
    main()
