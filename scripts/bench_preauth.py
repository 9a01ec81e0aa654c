"""What unauthenticated peers cost the server: N sockets each upgrade to a device WebSocket
without the token and start a frame that declares (almost) 4 MiB, then send it.

    python scripts/bench_preauth.py [--connections 300]

Starts `python -m cascade_testbed.server` on 127.0.0.1 with a token (from the environment, as
a user should),
prints its RSS before and after, and whether /healthz still answers; all traffic stays on
loopback and the script stops by itself. docs/security.md quotes its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FRAME = (4 << 20) - 64


async def attack(host: str, port: int) -> str:
    """One peer: upgrade, declare a 4 MiB binary frame, send it; how the server answered."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"refused ({exc.__class__.__name__})"
    try:
        writer.write(f"GET /v1/devices/x HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.write(bytes([0x82, 0xFF]) + struct.pack("!Q", FRAME) + b"\0" * 4
                     + b"\0" * (FRAME - 1))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(64), 5)
        return "closed with 1009" if data[:1] == b"\x88" else "closed"
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return f"cut off ({exc.__class__.__name__})"
    finally:
        writer.close()


async def main(connections: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "server.toml"
        scenario.write_text('name = "preauth"\n[server]\nport = 0\n')
        proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed.server", "--scenario",
                                 str(scenario)],
                                cwd=ROOT, env={**os.environ, "TESTBED_TOKEN": "bench"},
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            url = ""
            while not url:
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit("the server did not start")
                if line.startswith("listening on"):
                    url = line.split()[-1]
            host, port = url.removeprefix("http://").split(":")
            server = psutil.Process(proc.pid)
            rss0 = server.memory_info().rss
            t0 = time.monotonic()
            outcomes = await asyncio.gather(*(attack(host, int(port))
                                              for _ in range(connections)))
            took = time.monotonic() - t0
            rss = server.memory_info().rss
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            healthy = (await asyncio.wait_for(reader.read(64), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
            counts: dict[str, int] = {}
            for o in outcomes:
                counts[o] = counts.get(o, 0) + 1
            print(f"{connections} unauthenticated peers, each a {FRAME >> 20} MiB frame, in "
                  f"{took:.1f} s: server RSS {rss0 / 2**20:.0f} -> {rss / 2**20:.0f} MB; "
                  f"/healthz {'answers' if healthy else 'DOES NOT answer'}")
            print(json.dumps({"connections": connections, "rss_before_mb": round(rss0 / 2**20),
                              "rss_after_mb": round(rss / 2**20), "healthz": healthy,
                              "outcomes": counts}))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    asyncio.run(main(parser.parse_args().connections))
