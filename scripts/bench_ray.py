"""Our server beside a peer: the same ONNX model served by Ray Serve with `@serve.batch`
(scripts/ray_app.py), driven by one open-loop (Poisson) HTTP load generator over the same
`POST /v1/infer` msgpack protocol, one server after the other in one run. Each gets a
throughput-vs-p99 curve by stepping the offered load past saturation; from the two curves:
throughput at equal p99 (ours / Ray) and p99 at equal load (Ray / ours).

Ray is installed only for this benchmark, in its own venv (the project never depends on it):

    .venv/bin/python scripts/bench_ray.py --setup   # creates .venv-ray: ray[serve] + this project
    flock /tmp/bench.lock .venv-ray/bin/python scripts/bench_ray.py [--model heavy-cnn]

Prints tables and, last, one JSON line with the named figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_server import host_busy_s, start_server, stop_server
from rich.console import Console
from rich.table import Table

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.modelzoo import open_zoo

ROOT = Path(__file__).resolve().parent.parent
RAY_VENV = ROOT / ".venv-ray"
SUSTAINED_ERRORS = 0.01
"""A step is sustained when at most this share of its requests failed ..."""
SUSTAINED_ACHIEVED = 0.95
"""... and the achieved throughput is at least this share of the offered load."""
FIXED_BUDGETS_MS = (20.0, 50.0, 100.0, 250.0)


# ---- set-up -------------------------------------------------------------------------------

def setup(venv: Path) -> None:
    """Create the benchmark-only venv, so Ray never enters the project's own environment."""
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "ray[serve]", "-e", str(ROOT)],
                   check=True, timeout=1800)
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import ray; print(ray.__version__)"],
                         check=True, timeout=120, capture_output=True, text=True)
    print(f"ray {out.stdout.strip()} installed in {venv}")


# ---- the load generator (separate processes) ----------------------------------------------

@dataclass
class StepResult:
    """What one load process saw in one step."""

    sent: int
    ok: int
    span_s: float
    """From the first answer to the last: the step's length when the server keeps up, longer
    when a backlog drains after the last send (then ok / span is the service rate)."""
    errors: int
    latencies_ms: list[float]
    cpu_s: float
    batch_sum: int


async def _one(http: Any, url: str, body: bytes, scheduled: float, timeout_s: float,
               lat: list[float], done: list[float], errors: list[int],
               batches: list[int]) -> None:
    """One request; latency counts from its scheduled send time (no coordinated omission)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    ok = False
    try:
        async with http.post(url, data=body, headers={"Content-Type": "application/msgpack"},
                             timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            data = await r.read()
        if r.status == 200:
            res = wire.decode(data)
            if isinstance(res, wire.Result) and res.status == wire.ResultStatus.OK:
                ok = True
                batches[0] += res.batch_size
    except (aiohttp.ClientError, TimeoutError, wire.ProtocolError, OSError):
        ok = False
    now = loop.time()
    if ok:
        lat.append((now - scheduled) * 1e3)
        done.append(now)
    else:
        errors[0] += 1


async def _open_loop(http: Any, url: str, rate: float, seconds: float, timeout_s: float,
                     seed: int, pixels: list[bytes]) -> StepResult:
    """Poisson arrivals at `rate`/s for `seconds`, then wait for every answer (or timeout)."""
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    cpu0 = time.process_time()
    t0 = loop.time()
    end = t0 + seconds
    lat: list[float] = []
    done: list[float] = []
    errors = [0]
    batches = [0]
    tasks = []
    at = t0
    sid = seed * 10_000_000
    while True:
        at += rng.exponential(1.0 / rate)
        if at >= end:
            break
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = wire.encode(wire.Infer(sid, "uint8", (64,), pixels[sid % len(pixels)],
                                      timeout_s * 1e3))
        tasks.append(asyncio.create_task(_one(http, url, body, at, timeout_s, lat, done,
                                              errors, batches)))
        sid += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 5)
    for t in tasks:
        t.cancel()
    span = max(max(done, default=end) - min(done, default=t0), 1e-3)
    return StepResult(len(tasks), len(lat), span, len(tasks) - len(lat), lat,
                      time.process_time() - cpu0, batches[0])


async def _worker_main(commands: Any, results: Any, connections: int) -> None:
    """Serve step commands until None; one keep-alive connection pool per server URL."""
    import aiohttp

    pixels = [row.tobytes() for row in open_zoo().dataset("test").x[:100]]
    loop = asyncio.get_running_loop()
    http: aiohttp.ClientSession | None = None
    current = ""
    try:
        while True:
            cmd = await loop.run_in_executor(None, commands.get)
            if cmd is None:
                return
            url, rate, seconds, timeout_s, seed = cmd
            if http is None or url != current:
                if http is not None:
                    await http.close()
                http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))
                current = url
            res = await _open_loop(http, url, rate, seconds, timeout_s, seed, pixels)
            results.put(res)
    finally:
        if http is not None:
            await http.close()


def load_worker(commands: Any, results: Any, connections: int) -> None:
    """Entry point of one load-generator process."""
    asyncio.run(_worker_main(commands, results, connections))


class LoadGenerator:
    """The one client both servers get: `procs` persistent processes (spawned before Ray
    starts) that split the offered rate between them."""

    def __init__(self, procs: int, connections: int) -> None:
        ctx = mp.get_context("spawn")
        self._results: Any = ctx.Queue()
        self._commands: list[Any] = [ctx.Queue() for _ in range(procs)]
        self._procs = [ctx.Process(target=load_worker, args=(q, self._results, connections),
                                   daemon=True) for q in self._commands]
        for p in self._procs:
            p.start()
        self._seed = 0

    def run(self, url: str, rate: float, seconds: float, timeout_s: float) -> list[StepResult]:
        for q in self._commands:
            self._seed += 1
            q.put((url, rate / len(self._commands), seconds, timeout_s, self._seed))
        return [self._results.get(timeout=seconds + timeout_s + 60) for _ in self._commands]

    def close(self) -> None:
        for q in self._commands:
            q.put(None)
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()


# ---- one point of a curve -----------------------------------------------------------------

@dataclass
class Point:
    """One step of offered load against one server."""

    offered: float
    sent_rate: float
    """The Poisson draw's actual rate, which sustaining is judged against."""
    achieved: float
    p50_ms: float
    p99_ms: float
    errors: int
    sent: int
    host_cores: float
    load_cpu_us: float
    mean_batch: float

    @property
    def error_share(self) -> float:
        return self.errors / max(self.sent, 1)

    @property
    def sustained(self) -> bool:
        return self.error_share <= SUSTAINED_ERRORS and \
            self.achieved >= SUSTAINED_ACHIEVED * self.sent_rate


def measure(gen: LoadGenerator, url: str, rate: float, seconds: float,
            timeout_s: float) -> Point:
    """Offer `rate` for `seconds`; the host's busy cores say how loaded the 2 cores were."""
    time.sleep(0.5)  # let the previous step's leftovers (timed-out requests) clear
    cpu0 = host_busy_s()
    t0 = time.perf_counter()
    parts = gen.run(url, rate, seconds, timeout_s)
    elapsed = time.perf_counter() - t0
    busy = host_busy_s() - cpu0
    lat = np.asarray([x for p in parts for x in p.latencies_ms])
    ok = sum(p.ok for p in parts)
    p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if len(lat) \
        else (math.inf, math.inf)
    sent = sum(p.sent for p in parts)
    return Point(rate, sent / seconds, ok / max(p.span_s for p in parts), p50, p99,
                 sum(p.errors for p in parts), sent, busy / elapsed,
                 sum(p.cpu_s for p in parts) / max(ok, 1) * 1e6,
                 sum(p.batch_sum for p in parts) / max(ok, 1))


def ladder(run: Callable[[float], Point], start: float, factor: float, max_rate: float,
           max_p99_ms: float, say: Callable[[Point], None]) -> list[Point]:
    """Step the offered load up geometrically until one step past saturation."""
    points: list[Point] = []
    rate = start
    while rate <= max_rate:
        pt = run(rate)
        say(pt)
        points.append(pt)
        if not pt.sustained or pt.p99_ms > max_p99_ms:
            break
        rate *= factor
    return points


def refine(run: Callable[[float], Point], points: list[Point], good: Callable[[Point], bool],
           steps: int, say: Callable[[Point], None]) -> None:
    """Bisect between the highest good step and the next offered rate, so the figure read
    off the curve is not just the ladder's resolution."""
    for _ in range(steps):
        lo = max((p.offered for p in points if good(p)), default=None)
        hi = min((p.offered for p in points if lo is not None and p.offered > lo), default=None)
        if lo is None or hi is None or hi / lo < 1.03:
            return
        pt = run(math.sqrt(lo * hi))
        say(pt)
        points.append(pt)
    points.sort(key=lambda p: p.offered)


def best_within(points: list[Point], budget_ms: float) -> Point | None:
    """The highest sustained throughput whose p99 stays within the budget."""
    fit = [p for p in points if p.sustained and p.p99_ms <= budget_ms]
    return max(fit, key=lambda p: p.achieved, default=None)


def max_sustained(points: list[Point]) -> Point | None:
    return max((p for p in points if p.sustained), key=lambda p: p.achieved, default=None)


# ---- the two servers ----------------------------------------------------------------------

@contextlib.contextmanager
def our_server(model: str, max_batch: int) -> Iterator[str]:
    """The server exactly as scripts/bench_server.py starts it, stopped on exit."""
    proc, url, _ = start_server(model, max_batch)
    try:
        yield url
    finally:
        stop_server(proc)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextlib.contextmanager
def ray_server(model: str, port: int, throughput_optimized: bool) -> Iterator[str]:
    """Ray on this host's 2 CPUs, Serve's proxy on 127.0.0.1:`port`, one replica; Serve and
    Ray are always shut down on exit."""
    if not _port_free(port):
        raise RuntimeError(f"port {port} is taken; pass --ray-port")
    if throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    import ray
    import ray_app  # scripts/ is on sys.path as this script's folder
    from ray import cloudpickle, serve

    # The replica's process cannot import scripts/; ship the deployment's code by value.
    cloudpickle.register_pickle_by_value(ray_app)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_app.app(model), name="bench", route_prefix="/",
                  logging_config={"enable_access_log": False, "log_level": "WARNING"})
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def smoke(url: str) -> None:
    """One request through the shared protocol, so a broken server fails before the curve."""
    pixels = open_zoo().dataset("test").x[0].tobytes()
    req = urllib.request.Request(f"{url}/v1/infer", data=wire.encode(
        wire.Infer(1, "uint8", (64,), pixels, 5000.0)),
        headers={"Content-Type": "application/msgpack"})
    with urllib.request.urlopen(req, timeout=30) as r:
        res = wire.decode(r.read())
    if not isinstance(res, wire.Result) or res.status != wire.ResultStatus.OK:
        raise RuntimeError(f"bad reply from {url}: {res}")


# ---- the run ------------------------------------------------------------------------------

@dataclass
class Curve:
    name: str
    points: list[Point]
    equal_load: Point | None = None


def curve_table(curve: Curve) -> Table:
    table = Table(title=f"{curve.name}: offered load vs achieved throughput and latency")
    for col in ("offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "sustained",
                "mean batch", "host cores busy", "client CPU/req"):
        table.add_column(col, justify="right")
    rows = [*curve.points, *([curve.equal_load] if curve.equal_load else [])]
    for p in rows:
        table.add_row(f"{p.offered:,.0f}" + (" (=load)" if p is curve.equal_load else ""),
                      f"{p.achieved:,.0f}", f"{p.p50_ms:.1f}", f"{p.p99_ms:.1f}",
                      f"{p.errors} ({p.error_share:.1%})", "yes" if p.sustained else "no",
                      f"{p.mean_batch:.1f}",
                      f"{p.host_cores:.2f}", f"{p.load_cpu_us:.0f} us")
    return table


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def compare(ours: Curve, ray: Curve, budget_ms: float) -> dict[str, Any]:
    """The named figures: throughput at equal p99 and p99 at equal load, as ratios."""
    budgets = {}
    for b in (budget_ms, *FIXED_BUDGETS_MS):
        o, r = best_within(ours.points, b), best_within(ray.points, b)
        budgets[f"{b:.1f}"] = {"ours_rps": round(o.achieved) if o else None,
                               "ray_rps": round(r.achieved) if r else None,
                               "ratio": _ratio(o.achieved if o else None,
                                               r.achieved if r else None)}
    head = budgets[f"{budget_ms:.1f}"]
    oe, re_ = ours.equal_load, ray.equal_load
    return {"throughput_ratio_at_equal_p99": head["ratio"], "p99_budget_ms": round(budget_ms, 1),
            "p99_ratio_at_equal_load": _ratio(re_.p99_ms if re_ else None,
                                              oe.p99_ms if oe else None),
            "equal_load_rps": round(oe.offered) if oe else None, "budgets": budgets}


def summary(curve: Curve) -> dict[str, Any]:
    top = max_sustained(curve.points)
    eq = curve.equal_load
    return {"max_sustained_rps": round(top.achieved) if top else None,
            "p99_at_max_ms": round(top.p99_ms, 1) if top else None,
            "equal_load_p50_ms": round(eq.p50_ms, 2) if eq else None,
            "equal_load_p99_ms": round(eq.p99_ms, 2) if eq else None,
            "curve": [{k: (round(v, 2) if isinstance(v, float) else v)
                       for k, v in asdict(p).items()} for p in curve.points]}


def server_tree() -> str:
    """The commit our server ran from, `+dirty` if server/ or testbed/ had local edits: the
    subprocess runs the working tree, which other work may be changing."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, timeout=10,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "server", "testbed"],
                               cwd=ROOT, timeout=10, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _raise_timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("benchmark exceeded --deadline")


def run(args: argparse.Namespace, console: Console) -> int:
    import ray

    tree = server_tree()
    gen = LoadGenerator(args.procs, args.connections)

    def say(name: str) -> Callable[[Point], None]:
        return lambda p: console.print(
            f"  {name}: offered {p.offered:,.0f}/s -> {p.achieved:,.0f}/s, p50 {p.p50_ms:.1f} "
            f"ms, p99 {p.p99_ms:.1f} ms, errors {p.errors}, batch {p.mean_batch:.1f}, "
            f"host cores {p.host_cores:.2f}")

    try:
        with ray_server(args.model, args.ray_port, args.ray_throughput_optimized) as url:
            smoke(url)
            ray_c = sweep(gen, url, "ray", args, say("ray"), None)
            top = max_sustained(ray_c.points)
            if top is None:
                raise RuntimeError("Ray sustained no step; lower --start")
            equal_rate = args.equal_load * top.achieved
            budget = args.budget_ms or top.p99_ms
            eq_seconds = max(step_seconds(equal_rate, args), 2 * args.seconds)
            ray_c.equal_load = measure(gen, url + "/v1/infer", equal_rate, eq_seconds,
                                       args.timeout)
            say("ray @ equal load")(ray_c.equal_load)
        with our_server(args.model, 32) as url:
            smoke(url)
            ours = sweep(gen, url, "ours", args, say("ours"), budget)
            ours.equal_load = measure(gen, url + "/v1/infer", equal_rate, eq_seconds,
                                      args.timeout)
            say("ours @ equal load")(ours.equal_load)
    finally:
        gen.close()
    figures = compare(ours, ray_c, budget)
    console.print(curve_table(ray_c))
    console.print(curve_table(ours))
    table = Table(title=f"{args.model}: ours vs Ray Serve {ray.__version__} (same client, "
                        "same protocol, one after the other)")
    for col in ("p99 budget", "ours samples/s", "Ray samples/s", "ours / Ray"):
        table.add_column(col, justify="right")
    for b, v in figures["budgets"].items():
        table.add_row(f"{float(b):.1f} ms", str(v["ours_rps"]), str(v["ray_rps"]),
                      str(v["ratio"]))
    console.print(table)
    eq = Table(title=f"p99 at equal load ({figures['equal_load_rps']}/s = "
                     f"{args.equal_load:.0%} of Ray's max sustained)")
    for col in ("server", "p50 ms", "p99 ms"):
        eq.add_column(col, justify="right")
    for c in (ours, ray_c):
        assert c.equal_load is not None
        eq.add_row(c.name, f"{c.equal_load.p50_ms:.1f}", f"{c.equal_load.p99_ms:.1f}")
    eq.add_row("Ray / ours", "", str(figures["p99_ratio_at_equal_load"]))
    console.print(eq)
    ratio = figures["throughput_ratio_at_equal_p99"]
    print(json.dumps({
        "model": args.model, "ray_version": ray.__version__, "server_tree": tree, **figures,
        "target_2x_met": ratio is not None and ratio >= 2.0,
        "ray_throughput_optimized": args.ray_throughput_optimized,
        "seconds_per_step": args.seconds, "load_processes": args.procs,
        "connections_per_process": args.connections,
        "ours": summary(ours), "ray": summary(ray_c)}), flush=True)  # unwrapped, unstyled
    return 0


def sweep(gen: LoadGenerator, url: str, name: str, args: argparse.Namespace,
          say: Callable[[Point], None], budget_ms: float | None) -> Curve:
    """Warm up, step the load, then refine near the figure that will be read off the curve:
    Ray's saturation, or for ours the highest rate within Ray's p99 budget."""
    endpoint = url + "/v1/infer"

    def at(rate: float) -> Point:
        return measure(gen, endpoint, rate, step_seconds(rate, args), args.timeout)

    measure(gen, endpoint, args.start, 2.0, args.timeout)  # warm-up: connections, first runs
    points = ladder(at, args.start, args.factor, args.max_rate, args.max_p99_ms, say)
    if budget_ms is None:
        refine(at, points, lambda p: p.sustained, args.refine, say)
    else:
        refine(at, points, lambda p: p.sustained and p.p99_ms <= budget_ms, args.refine, say)
    return Curve(name, sorted(points, key=lambda p: p.offered))


def step_seconds(rate: float, args: argparse.Namespace) -> float:
    """Long enough for `--min-requests` answers, so a low rate's p99 is not read off a
    handful of samples; at most 4x `--seconds`."""
    return float(min(max(args.seconds, args.min_requests / rate), 4 * args.seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true",
                        help=f"create {RAY_VENV.name} with ray[serve] and this project, exit")
    parser.add_argument("--model", default="heavy-cnn")
    parser.add_argument("--seconds", type=float, default=4.0, help="per step of load")
    parser.add_argument("--min-requests", type=int, default=1000,
                        help="per step, within 4x --seconds")
    parser.add_argument("--start", type=float, default=50.0, help="first offered rate, /s")
    parser.add_argument("--factor", type=float, default=1.35, help="rate step, geometric")
    parser.add_argument("--max-rate", type=float, default=30_000.0)
    parser.add_argument("--max-p99-ms", type=float, default=2000.0,
                        help="stop the ladder past this p99")
    parser.add_argument("--refine", type=int, default=2, help="bisection steps per curve")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="p99 budget for the headline ratio (default: Ray's p99 at its "
                             "max sustained throughput)")
    parser.add_argument("--equal-load", type=float, default=0.8,
                        help="the equal load as a share of Ray's max sustained throughput")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=256, help="per load process")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, s")
    parser.add_argument("--ray-port", type=int, default=8479)
    parser.add_argument("--ray-throughput-optimized", action="store_true",
                        help="set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray's own fast path)")
    parser.add_argument("--deadline", type=int, default=1800, help="whole run, s")
    args = parser.parse_args()
    if args.setup:
        setup(RAY_VENV)
        return
    console = Console(width=None if sys.stdout.isatty() else 140)
    try:
        import ray  # noqa: F401
    except ImportError:
        console.print("Ray is not installed here; run `.venv/bin/python scripts/bench_ray.py "
                      f"--setup` and then `{RAY_VENV.name}/bin/python scripts/bench_ray.py`")
        sys.exit(2)
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(args.deadline)
    try:
        code = run(args, console)
    except Exception as exc:
        console.print(f"bench_ray failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        signal.alarm(0)
    sys.exit(code)


if __name__ == "__main__":
    main()
