"""The server against the physical limit: the heavy model's raw onnxruntime throughput in a
tight loop versus the real server's under saturation from many WebSocket clients, padding
disabled; the server's CPU time per request outside the model; p50/p99 at fractions of its
capacity. Everything on 127.0.0.1; the server and the load run in separate processes.

The floor for the server's cost per request is measured in the same run: a bare aiohttp
WebSocket server that decodes each msgpack `infer` and answers it with an encoded `result` at
once (no queue, no batcher, no model), saturated by the same load generators;
`server_vs_echo_cpu` is the server's CPU outside the model per request over the echo's CPU per
request (`server_vs_echo_cpu_<batch>` for each max batch size).

    .venv/bin/python scripts/bench_server.py [--model heavy-cnn] [--seconds 6] [--repeats 3]
        [--batches 32,64,128]

Prints a table and, last, one JSON line with the named figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.modelzoo import open_session, open_zoo, to_model_input

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 2, 4, 8, 16, 32, 64)


class RawModel:
    """The bare session (1 intra-op thread, as the server runs it) in a tight loop."""

    def __init__(self, model: str) -> None:
        zoo = open_zoo()
        self.session = open_session(zoo.model_path(model), 1, 1)
        self.input = self.session.get_inputs()[0].name
        self.x = to_model_input(zoo.dataset("test").x[:max(BATCHES)])

    def sps(self, batch: int, seconds: float) -> float:
        feed = {self.input: self.x[:batch]}
        for _ in range(20):
            self.session.run(None, feed)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.session.run(None, feed)
            n += batch
        return n / (time.perf_counter() - t0)


def start_server(model: str, max_batch: int) -> tuple[subprocess.Popen[str], str, Path]:
    """`python -m cascade_testbed.server` with padding off; its URL once it listens (60 s at
    most)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-server-"))
    scenario = folder / "server.toml"
    scenario.write_text(
        f'[server]\nheavy_model = "{model}"\npad_compute = false\nmax_batch_size = {max_batch}\n'
        'max_queue_size = 8192\nmax_queue_delay_us = 1000\n[policy]\nname = "static"\n')
    proc = subprocess.Popen([sys.executable, "-m", "cascade_testbed.server",
                             "--scenario", str(scenario),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    return proc, _listening_url(proc, "server"), folder


def echo_server() -> None:
    """The floor: an aiohttp WebSocket + msgpack echo (`--serve-echo`). It speaks just enough
    of the protocol for the load generators: `welcome` to a hello, a `result` per `infer`."""
    from aiohttp import web

    async def device(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=wire.MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        async for msg in ws:
            m = wire.decode(msg.data)
            if isinstance(m, wire.Infer):
                await ws.send_bytes(wire.encode(wire.Result(m.sample_id, prediction=1,
                                                            confidence=0.5, batch_size=1)))
            elif isinstance(m, wire.Hello):
                await ws.send_bytes(wire.encode(wire.Welcome(threshold=1.0, epoch=0)))
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/devices/{device}", device)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"echo listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_echo() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-echo"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    return proc, _listening_url(proc, "echo server")


def _listening_url(proc: subprocess.Popen[str], what: str) -> str:
    """The URL a server process prints first ("... listening on URL"), within 60 s."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if "listening on" not in line:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"{what} did not start: {line!r}")
    return line.split("listening on", 1)[1].strip()


@dataclass(frozen=True)
class Echo:
    """The echo server saturated: its CPU per round trip and its rate."""

    cpu_us: float
    rps: float
    cores: float


def measure_echo(args: argparse.Namespace) -> list[Echo]:
    """Saturated intervals of the echo server (as many as the server's), lowest CPU first."""
    proc, url = start_echo()
    try:
        echo = psutil.Process(proc.pid)
        if args.sched_batch:
            _sched_batch(proc.pid)
        drive(url, args.clients, 1.5, args.window, None, args.procs, 0)  # warm up
        runs = []
        for k in range(max(args.repeats, 1)):
            c0, t0 = _cpu_s(echo), time.perf_counter()
            _, served, _ = drive(url, args.clients, args.seconds, args.window, None, args.procs,
                                 1000 * (k + 1))
            elapsed, cpu = time.perf_counter() - t0, _cpu_s(echo) - c0
            runs.append(Echo(cpu / max(served, 1) * 1e6, served / elapsed, cpu / elapsed))
        return sorted(runs, key=lambda r: r.cpu_us)
    finally:
        stop_server(proc)


def _sched_batch(pid: int) -> None:
    """The process's event-loop thread (its main thread) under SCHED_BATCH: it no longer
    preempts the load generators at every frame that arrives (CFS wake-up preemption), so it
    sleeps and wakes far less often per request. A diagnostic of this layout (generators on
    the server's cores), not how the testbed runs: a server that waits for its slice reads
    device messages later than they arrive."""
    os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def host_busy_s() -> float:
    """CPU seconds the whole host has run: shows when something else shares the cores."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/v1/status", timeout=5) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


async def _client(url: str, idx: int, stop_at: float, window: int, rate: float | None,
                  rtts: list[float], counts: list[int]) -> None:
    import aiohttp

    pixels = open_zoo().dataset("test").x[idx % 100].tobytes()
    dev = f"bench-{idx:04d}"
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"{url.replace('http', 'ws')}/v1/devices/{dev}") as ws:
        # A load generator declares the most it may send: the server's per-device budget
        # (docs/security.md, "Fair sharing") is then the per-connection frame pace.
        await ws.send_bytes(wire.encode(wire.Hello(device_id=dev, tier="mid",
                                                   model="light-mid", rate_sps=1e5)))
        await ws.receive()  # welcome
        sent: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(window)
        rng = np.random.default_rng(idx)

        async def reader() -> None:
            async for msg in ws:
                res = wire.decode(msg.data)
                if isinstance(res, wire.Result) and res.sample_id in sent:
                    rtts.append(loop.time() - sent.pop(res.sample_id))
                    counts[0] += 1
                    free.release()

        task = asyncio.create_task(reader())
        sid = 0
        next_at = loop.time()
        while loop.time() < stop_at:
            if rate is not None:  # open loop: Poisson at `rate` per client
                next_at += rng.exponential(1.0 / rate)
                await asyncio.sleep(max(next_at - loop.time(), 0.0))
            else:
                await free.acquire()
            sent[sid] = loop.time()
            await ws.send_bytes(wire.encode(wire.Infer(sid, "uint8", (64,), pixels, 5000.0)))
            sid += 1
        await asyncio.sleep(0.5)
        task.cancel()


def load_process(url: str, first: int, clients: int, seconds: float, window: int,
                 rate: float | None, out: Any) -> None:
    async def main() -> tuple[list[float], int]:
        rtts: list[float] = []
        counts = [0]
        stop_at = asyncio.get_running_loop().time() + seconds
        await asyncio.gather(*(_client(url, first + i, stop_at, window, rate, rtts, counts)
                               for i in range(clients)))
        return rtts, counts[0]

    # The clients stand in for other machines: under contention for the two cores the server
    # goes first, as it would if they were remote.
    os.nice(10)
    cpu = time.process_time()
    rtts, n = asyncio.run(main())
    out.put((rtts, n, time.process_time() - cpu))


def drive(url: str, clients: int, seconds: float, window: int, rate: float | None,
          procs: int, base: int) -> tuple[list[float], int, float]:
    """Run the load; (round-trip times, results, CPU seconds the load generators used)."""
    q: Any = mp.Queue()
    per = clients // procs
    ps = [mp.Process(target=load_process, args=(url, base + k * per, per, seconds, window,
                                                None if rate is None else rate / clients, q))
          for k in range(procs)]
    for p in ps:
        p.start()
    results = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return ([r for rt, _, _ in results for r in rt], sum(n for _, n, _ in results),
            sum(c for _, _, c in results))


@dataclass(frozen=True)
class Saturation:
    """One saturated interval: rates per second of wall time, CPU per served request."""

    sps: float
    outside_us: float
    server_cores: float
    model_cores: float
    model_running: float
    mean_batch: float
    load_us: float
    load_cores: float
    other_cores: float
    raw_sps: float
    """The bare model at its best batch size, measured just before this interval: the host's
    speed drifts by 10-20 % over minutes, so each interval is compared with its own limit."""

    @property
    def ratio(self) -> float:
        return self.sps / self.raw_sps


def saturate(url: str, server: psutil.Process, args: argparse.Namespace, base: int,
             raw_sps: float) -> Saturation:
    s0, c0, h0 = status(url)["totals"], _cpu_s(server), host_busy_s()
    spy = None if args.profile is None else subprocess.Popen(
        ["py-spy", "record", "--pid", str(server.pid), "--threads", "--idle", "--nonblocking",
         "--duration", str(int(args.seconds)), "--output", str(args.profile),
         "--format", "raw" if args.profile.suffix == ".txt" else "flamegraph"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    _, _, load_cpu = drive(url, args.clients, args.seconds, args.window, None, args.procs, base)
    elapsed = time.perf_counter() - t0
    s1, c1, h1 = status(url)["totals"], _cpu_s(server), host_busy_s()
    if spy is not None:
        spy.wait(30)
    served = max(s1["completed"] - s0["completed"], 1)
    cpu = c1 - c0
    model_cpu = s1["model_cpu_s"] - s0["model_cpu_s"]
    return Saturation(
        sps=served / elapsed, outside_us=max(cpu - model_cpu, 0.0) / served * 1e6,
        server_cores=cpu / elapsed, model_cores=model_cpu / elapsed,
        model_running=(s1["model_s"] - s0["model_s"]) / elapsed,
        mean_batch=(s1["batch_sum"] - s0["batch_sum"]) / max(s1["batches"] - s0["batches"], 1),
        load_us=load_cpu / served * 1e6, load_cores=load_cpu / elapsed,
        other_cores=max(h1 - h0 - cpu - load_cpu, 0.0) / elapsed, raw_sps=raw_sps)


def measure(args: argparse.Namespace, batch: int, raw: RawModel, raw_batch: int
            ) -> list[Saturation]:
    """Saturated intervals of a server started with this maximum batch size, each after a
    measure of the bare model (the server idle); lowest server/raw first."""
    proc, url, _ = start_server(args.model, batch)
    try:
        server = psutil.Process(proc.pid)
        if args.sched_batch:
            _sched_batch(proc.pid)
        drive(url, args.clients, 1.5, args.window, None, args.procs, 0)  # warm up
        runs = []
        for k in range(max(args.repeats, 1)):
            limit = raw.sps(raw_batch, 2.0)
            runs.append(saturate(url, server, args, 1000 * (k + 1), limit))
        return sorted(runs, key=lambda r: r.ratio)
    finally:
        stop_server(proc)


def latencies(args: argparse.Namespace, batch: int, capacity: float
              ) -> dict[float, tuple[float, float]]:
    """p50/p99 round trip (ms) under open-loop Poisson load at fractions of `capacity`."""
    proc, url, _ = start_server(args.model, batch)
    try:
        drive(url, args.clients, 1.5, args.window, None, args.procs, 0)  # warm up
        lat = {}
        for frac in (0.5, 0.8, 1.0):
            rtts, _, _ = drive(url, args.clients, args.seconds / 2, 10**6, frac * capacity,
                               args.procs, 10_000 + int(frac * 1000))
            ms = np.asarray(rtts) * 1e3
            lat[frac] = (float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))
        return lat
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="heavy-cnn")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--window", type=int, default=16, help="requests in flight per client")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="saturated intervals; the median one is reported (the host is noisy)")
    parser.add_argument("--batches", default="32,64,128",
                        help="the server's max batch sizes to try; the best one is reported, "
                             "as the raw side reports its best batch size")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record the server under saturation with py-spy into this SVG "
                             "(collapsed stacks if it ends in .txt; needs `pip install py-spy`)")
    parser.add_argument("--sched-batch", action="store_true",
                        help="diagnostic: the server's and the echo's event loops under "
                             "SCHED_BATCH (no wake-up preemption of the load generators)")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        echo_server()
        return
    console = Console()
    raw_model = RawModel(args.model)
    raw = {b: raw_model.sps(b, 1.0) for b in BATCHES}
    best_b = max(raw, key=lambda b: raw[b])
    sweep = {b: measure(args, b, raw_model, best_b)
             for b in (int(v) for v in args.batches.split(","))}
    echoes = measure_echo(args)
    echo = echoes[len(echoes) // 2]
    vs_echo = {b: rs[len(rs) // 2].outside_us / echo.cpu_us for b, rs in sweep.items()}
    server_b = max(sweep, key=lambda b: sweep[b][len(sweep[b]) // 2].ratio)
    runs = sweep[server_b]
    sat = runs[len(runs) // 2]
    lat = latencies(args, server_b, sat.sps)
    table = Table(title=f"{args.model}: raw onnxruntime vs the server (padding off; median of "
                        f"{len(runs)} saturated intervals)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("range over the intervals", justify="right")
    for b, v in raw.items():
        table.add_row(f"raw samples/s, batch {b}", f"{v:,.0f}", "")
    for b, rs in sweep.items():
        mid = rs[len(rs) // 2]
        by_sps = sorted(r.sps for r in rs)
        table.add_row(f"server samples/s, max batch {b}", f"{mid.sps:,.0f}",
                      f"{by_sps[0]:,.0f} - {by_sps[-1]:,.0f}")
        table.add_row(f"  / raw at batch {best_b} just before", f"{mid.ratio:.3f}",
                      f"{rs[0].ratio:.3f} - {rs[-1].ratio:.3f}")
        out = sorted(r.outside_us for r in rs)
        table.add_row("  CPU outside the model per request", f"{mid.outside_us:.1f} us",
                      f"{out[0]:.1f} - {out[-1]:.1f} us")
        table.add_row("  / the echo's CPU per request", f"{vs_echo[b]:.2f}", "")
    table.add_row("echo (aiohttp + msgpack) CPU per request", f"{echo.cpu_us:.1f} us",
                  f"{echoes[0].cpu_us:.1f} - {echoes[-1].cpu_us:.1f} us")
    table.add_row("echo round trips/s; cores", f"{echo.rps:,.0f}; {echo.cores:.2f}", "")
    table.add_row(f"server / raw, each at its best batch ({server_b} / {best_b})",
                  f"{sat.ratio:.3f}", f"{runs[0].ratio:.3f} - {runs[-1].ratio:.3f}")
    table.add_row("server mean batch size, saturated", f"{sat.mean_batch:.1f}", "")
    table.add_row("server process CPU (cores busy)", f"{sat.server_cores:.2f}", "")
    table.add_row("of which the model's thread", f"{sat.model_cores:.2f}", "")
    table.add_row("time the model is running", f"{sat.model_running:.0%}", "")
    table.add_row("load generators' CPU per request", f"{sat.load_us:.1f} us", "")
    table.add_row("load generators' CPU (cores busy)", f"{sat.load_cores:.2f}", "")
    table.add_row("every other process (cores busy)", f"{sat.other_cores:.2f}", "")
    for frac, (p50, p99) in lat.items():
        table.add_row(f"p50 / p99 at {frac:.0%} of capacity", f"{p50:.1f} / {p99:.1f} ms", "")
    console.print(table)
    print(json.dumps({  # plain print: rich would wrap the line
        "model": args.model, "sched_batch": args.sched_batch,
        "raw_best_sps": round(sat.raw_sps), "raw_best_batch": best_b,
        "server_sps": round(sat.sps), "server_best_batch": server_b,
        "server_vs_raw_ratio": round(sat.ratio, 3),
        "server_cpu_outside_model_us": round(sat.outside_us, 1),
        "server_cores_busy": round(sat.server_cores, 2),
        "model_thread_cores_busy": round(sat.model_cores, 2),
        "model_running_fraction": round(sat.model_running, 3),
        "server_mean_batch": round(sat.mean_batch, 1),
        "load_cpu_per_request_us": round(sat.load_us, 1),
        "load_cores_busy": round(sat.load_cores, 2),
        "other_processes_cores_busy": round(sat.other_cores, 2),
        "by_batch": {str(b): [{"sps": round(r.sps), "raw_sps": round(r.raw_sps),
                               "ratio": round(r.ratio, 3), "outside_us": round(r.outside_us, 1)}
                              for r in rs] for b, rs in sweep.items()},
        "latency_ms": {f"{int(f * 100)}pct": {"p50": round(a, 2), "p99": round(b, 2)}
                       for f, (a, b) in lat.items()},
        "clients": args.clients, "load_processes": args.procs,
        "echo_cpu_us_per_req": round(echo.cpu_us, 1), "echo_rps": round(echo.rps),
        "server_vs_echo_cpu": round(vs_echo[server_b], 3),
        **{f"server_vs_echo_cpu_{b}": round(v, 3) for b, v in vs_echo.items()}}))


if __name__ == "__main__":
    main()
