"""Our server beside the serving systems a user would pick instead: Ray Serve, PyTriton,
LitServe and BentoML, each serving the same zoo model (`heavy-cnn`) with the same
onnxruntime settings (1 intra-op thread, no spinning), one worker, the same batch cap and
batch window, driven by one open-loop Poisson load generator, one server after the other in
one run. For each peer: throughput at equal p99 (ours / peer), p99 at equal load
(peer / ours), peak throughput, server CPU per request outside the model; and, for the same
burst, steady and ramp traces, the batch sizes each formed and the wait it added.

Each peer lives in its own venv under .peers/<peer>/ (git-ignored; the project never
depends on them); its app (scripts/peers/<peer>_app.py) runs in that venv's python, the load
generator and our server in the project's:

    .venv/bin/python scripts/bench_peers.py --setup all      # or --setup ray,pytriton
    flock /tmp/bench.lock .venv/bin/python scripts/bench_peers.py --quick

A peer that cannot be installed or started is reported with the reason. The last line
printed is one JSON object with the named figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_server import host_busy_s, start_server, status, stop_server  # scripts/ is on sys.path
from rich.console import Console
from rich.table import Table

# The project's own imports, all here.
from cascade_testbed.common import protocol as wire
from cascade_testbed.common.modelzoo import open_zoo

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import stats  # scripts/peers/stats.py: the pure part, unit-tested
from stats import Point

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / ".peers"
APPS = ROOT / "scripts" / "peers"
MODEL = "heavy-cnn"
MAX_BATCH = 32
"""Our server's setting in bench_server/bench_ray (`max_batch_size = 32`), given to every peer."""
WINDOW_US = 1000
"""Our server's `max_queue_delay_us`; each peer's batch window gets the same value."""


# ---- the peers ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    """What it takes to install, start and talk to one peer."""

    name: str
    packages: tuple[str, ...]
    """What `--setup` installs; the first one's version is reported."""
    codec: str
    protocol: str
    knobs: str
    unequal: str
    command: tuple[str, ...] = ()
    """After the venv's python; default: run scripts/peers/<name>_app.py."""
    env: dict[str, str] = field(default_factory=dict)


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("ray", ("ray[serve]",), "raw",
         "HTTP, binary body (raw uint8 pixels), send time in a header; JSON reply",
         f"@serve.batch(max_batch_size={MAX_BATCH}, batch_wait_timeout_s={WINDOW_US / 1e6}); "
         "num_replicas=1, max_ongoing_requests=8192, num_cpus=1; "
         "RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
         "Ray's own processes (GCS, raylet, proxy actor, replica, dashboard agent) share the "
         "two cores; a request crosses proxy -> replica by Ray RPC",
         env={"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}),
    Peer("pytriton", ("nvidia-pytriton",), "kserve",
         "HTTP KServe v2 with binary tensor data (x uint8 [64], sent fp64 [1]); JSON output",
         f"ModelConfig(max_batch_size={MAX_BATCH}, DynamicBatcher("
         f"max_queue_delay_microseconds={WINDOW_US})); one model instance",
         "tritonserver (C++) takes HTTP and batches; each batch crosses to the Python model "
         "process through shared memory and a socket (one extra copy each way); the "
         "Python backend stub is pointed at the venv's libpython (LD_LIBRARY_PATH)"),
    Peer("litserve", ("litserve",), "json-b64",
         "HTTP JSON, pixels base64 in it (LitServe's endpoint parses JSON or forms, "
         "not a raw body)",
         f"LitAPI(max_batch_size={MAX_BATCH}, batch_timeout={WINDOW_US / 1e6}); "
         "workers_per_device=1, num_api_servers=1, fast_queue=False (default)",
         "FastAPI/uvicorn API process hands each request to the worker process through a "
         "multiprocessing queue; its window starts when the worker starts collecting, not at "
         "the first request"),
    Peer("bentoml", ("bentoml",), "json-list",
         "HTTP JSON, ndarray as nested lists (its one binary type, pickle, is refused by "
         "the main server)",
         f"@bentoml.api(batchable=True, max_batch_size={MAX_BATCH}, max_latency_ms=<timeout>); "
         "@bentoml.service(workers=1)",
         "no batch window knob: its CorkDispatcher picks the wait from past batches; "
         "max_latency_ms only cancels (503) what it expects to be late, set to the "
         "client's timeout",
         command=("-m", "bentoml", "serve", "bentoml_app:BentoHeavy", "--host", "127.0.0.1",
                  "--port", "{port}")),
)}
OURS_PROTOCOL = "HTTP POST /v1/infer, one msgpack `infer` (binary tensor) in, one `result` out"
OURS_KNOBS = f"max_batch_size={MAX_BATCH}, max_queue_delay_us={WINDOW_US}, " \
             "max_queue_size=8192, padding off, 1 intra-op thread"


def venv_python(peer: str) -> Path:
    return PEERS_DIR / peer / "bin" / "python"


def setup_record(peer: str) -> dict[str, Any]:
    """What `--setup` left: {"ok", "version"} or {"ok": false, "reason"}."""
    path = PEERS_DIR / peer / "setup.json"
    if not path.exists():
        return {"ok": False, "reason": f"not installed: run bench_peers.py --setup {peer}"}
    out: dict[str, Any] = json.loads(path.read_text())
    return out


def setup(peer: Peer) -> dict[str, Any]:
    """Create .peers/<peer> with the peer's newest release and the project's onnxruntime,
    and record the outcome either way."""
    import onnxruntime

    folder = PEERS_DIR / peer.name
    folder.parent.mkdir(exist_ok=True)
    (PEERS_DIR / ".gitignore").write_text("*\n")
    rec: dict[str, Any]
    try:
        if not venv_python(peer.name).exists():
            subprocess.run([_base_python(), "-m", "venv", str(folder)], check=True,
                           timeout=300)
        pip = [str(folder / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        # The project's onnxruntime, so the model runs the same code; numpy as the peer
        # wants it (pinning ours downgraded PyTriton to a release that accepts numpy 2).
        done = subprocess.run([*pip, "--upgrade", *peer.packages,
                               f"onnxruntime=={onnxruntime.__version__}"],
                              timeout=3600, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError("pip install failed: " + done.stderr.strip()[-600:])
        out = subprocess.run([str(venv_python(peer.name)), "-c",
                              "import importlib.metadata as m, sys; print(m.version(sys.argv[1]),"
                              " m.version('onnxruntime'), m.version('numpy'))",
                              peer.packages[0].split("[")[0]],
                             timeout=120, capture_output=True, text=True, check=True)
        version, ort_v, np_v = out.stdout.split()
        rec = {"ok": True, "version": version, "onnxruntime": ort_v, "numpy": np_v}
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as exc:
        rec = {"ok": False, "reason": f"setup failed: {type(exc).__name__}: {exc}"[:800]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "setup.json").write_text(json.dumps(rec, indent=1))
    return rec


def _base_python() -> str:
    """The interpreter the project's venv was made from, for the peers' venvs."""
    return str(Path(getattr(sys, "_base_executable", sys.executable)))


# ---- what goes on the wire, per peer (the load generator's side) ---------------------------

@dataclass(frozen=True)
class Reply:
    batch_size: int
    wait_us: float
    compute_us: float
    model_cpu_us: float


class Codec:
    """Encodes one request and reads one reply in a server's own protocol."""

    path = "/v1/infer"
    content_type = "application/octet-stream"

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def body(self, sid: int, pixels: bytes, sent: float) -> tuple[bytes, dict[str, str]]:
        raise NotImplementedError

    def parse(self, data: bytes) -> Reply | None:
        row = json.loads(data)
        return Reply(int(row["batch_size"]), row["wait_us"], row["compute_us"],
                     row["model_cpu_us"])


class OursCodec(Codec):
    """Our own protocol; the wait is the server's `queue_us` (its arrival to the batch's
    start), the model's CPU comes from /v1/status instead of the reply."""

    content_type = "application/msgpack"

    def body(self, sid: int, pixels: bytes, sent: float) -> tuple[bytes, dict[str, str]]:
        return wire.encode(wire.Infer(sid, "uint8", (64,), pixels, self.timeout_s * 1e3)), {}

    def parse(self, data: bytes) -> Reply | None:
        res = wire.decode(data)
        if isinstance(res, wire.Result) and res.status == wire.ResultStatus.OK:
            return Reply(res.batch_size, float(res.queue_us), float(res.compute_us), math.nan)
        return None


class RawCodec(Codec):
    def body(self, sid: int, pixels: bytes, sent: float) -> tuple[bytes, dict[str, str]]:
        return pixels, {"x-sent": repr(sent)}


class KServeCodec(Codec):
    """KServe v2 binary tensor extension: a JSON header, then the tensors' raw bytes."""

    path = "/v2/models/heavy/infer"
    HEADER = json.dumps({
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "UINT8",
                    "parameters": {"binary_data_size": 64}},
                   {"name": "sent", "shape": [1, 1], "datatype": "FP64",
                    "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "reply", "parameters": {"binary_data": False}}]}).encode()

    def body(self, sid: int, pixels: bytes, sent: float) -> tuple[bytes, dict[str, str]]:
        return self.HEADER + pixels + struct.pack("<d", sent), \
            {"Inference-Header-Content-Length": str(len(self.HEADER))}

    def parse(self, data: bytes) -> Reply | None:
        r = json.loads(data)["outputs"][0]["data"]
        return Reply(int(r[2]), r[3], r[4], r[5])


class JsonB64Codec(Codec):
    path = "/predict"
    content_type = "application/json"

    def body(self, sid: int, pixels: bytes, sent: float) -> tuple[bytes, dict[str, str]]:
        return json.dumps({"x": base64.b64encode(pixels).decode(), "sent": sent}).encode(), {}


class JsonListCodec(Codec):
    path = "/predict"
    content_type = "application/json"

    def body(self, sid: int, pixels: bytes, sent: float) -> tuple[bytes, dict[str, str]]:
        return json.dumps({"x": [[sent, *pixels]]}).encode(), {}

    def parse(self, data: bytes) -> Reply | None:
        r = json.loads(data)[0]
        return Reply(int(r[2]), r[3], r[4], r[5])


CODECS: dict[str, type[Codec]] = {"ours": OursCodec, "raw": RawCodec, "kserve": KServeCodec,
                                  "json-b64": JsonB64Codec, "json-list": JsonListCodec}


# ---- the load generator (separate processes, the project's python) ---------------------------

@dataclass
class Part:
    """What one load process saw of one step."""

    sent: int
    lat_ms: list[float]
    sizes: list[int]
    waits_us: list[float]
    compute_us: list[float]
    model_cpu_us: list[float]
    first_done: float
    last_done: float
    cpu_s: float
    failures: dict[str, int]


async def _open_loop(http: Any, codec: Codec, url: str, offsets: list[float],
                     pixels: list[bytes]) -> Part:
    """Send at `start + offset` whatever happens to earlier requests (open loop); latency
    counts from the scheduled time, so coordinated omission cannot hide queueing."""
    import aiohttp

    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    part = Part(0, [], [], [], [], [], math.inf, 0.0, 0.0, {})
    fails: Counter[str] = Counter()
    timeout = aiohttp.ClientTimeout(total=codec.timeout_s)

    async def one(sid: int, scheduled: float) -> None:
        # The peers' wait counts from here, the moment this client gets to send: in a burst
        # the client itself takes a while to get through its sends (latency still counts
        # from `scheduled`).
        body, headers = codec.body(sid, pixels[sid % len(pixels)], loop.time())
        try:
            async with http.post(url, data=body, timeout=timeout,
                                 headers={"Content-Type": codec.content_type, **headers}) as r:
                data = await r.read()
            reply = codec.parse(data) if r.status == 200 else None
            if reply is None:
                fails[f"http {r.status}"] += 1
                return
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError,
                IndexError, wire.ProtocolError) as exc:
            fails[type(exc).__name__] += 1
            return
        now = loop.time()
        part.lat_ms.append((now - scheduled) * 1e3)
        part.sizes.append(reply.batch_size)
        part.waits_us.append(reply.wait_us)
        part.compute_us.append(reply.compute_us)
        part.model_cpu_us.append(reply.model_cpu_us)
        part.first_done = min(part.first_done, now)
        part.last_done = max(part.last_done, now)

    t0 = loop.time() + 0.02
    tasks = []
    for i, off in enumerate(offsets):
        at = t0 + off
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    if tasks:
        await asyncio.wait(tasks, timeout=codec.timeout_s + 5)
    for t in tasks:
        t.cancel()
    part.sent = len(tasks)
    part.cpu_s = time.process_time() - cpu0
    part.failures = dict(fails)
    return part


async def _worker_main(commands: Any, results: Any, connections: int) -> None:
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
            codec_name, base, offsets, timeout_s = cmd
            if http is None or base != current:  # a fresh connection pool per server
                if http is not None:
                    await http.close()
                http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))
                current = base
            codec = CODECS[codec_name](timeout_s)
            results.put(await _open_loop(http, codec, base + codec.path, offsets, pixels))
    finally:
        if http is not None:
            await http.close()


def load_worker(commands: Any, results: Any, connections: int) -> None:
    """Entry point of one load-generator process."""
    asyncio.run(_worker_main(commands, results, connections))


class LoadGenerator:
    """The one client every server gets: `procs` persistent processes that split each
    arrival trace between them."""

    def __init__(self, procs: int, connections: int) -> None:
        ctx = mp.get_context("spawn")
        self._results: Any = ctx.Queue()
        self._commands: list[Any] = [ctx.Queue() for _ in range(procs)]
        self._procs = [ctx.Process(target=load_worker, args=(q, self._results, connections),
                                   daemon=True) for q in self._commands]
        for p in self._procs:
            p.start()

    def run(self, codec: str, base: str, offsets: list[float], timeout_s: float) -> list[Part]:
        for q, part in zip(self._commands,
                           stats.split_round_robin(offsets, len(self._commands)), strict=True):
            q.put((codec, base, part, timeout_s))
        wait = (offsets[-1] if offsets else 0) + timeout_s + 60
        return [self._results.get(timeout=wait) for _ in self._commands]

    def close(self) -> None:
        for q in self._commands:
            q.put(None)
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()


# ---- a server under test --------------------------------------------------------------------

def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (Ray, Triton, LitServe and BentoML
    each run several processes)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return math.nan
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Server:
    name: str
    codec: str
    base: str
    pid: int
    model_cpu_s: Callable[[], float] | None = None
    """Ours: the model thread's CPU from /v1/status; peers: read off the replies."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> int:
    """A base port with the next `n - 1` also free (Triton takes three)."""
    for _ in range(50):
        base = _free_port()
        ok = True
        for k in range(1, n):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", base + k)) == 0:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


@contextlib.contextmanager
def our_server() -> Iterator[Server]:
    """The server as scripts/bench_server.py starts it, stopped on exit."""
    proc, url, _ = start_server(MODEL, MAX_BATCH)
    try:
        yield Server("ours", "ours", url, proc.pid,
                     lambda: float(status(url)["totals"]["model_cpu_s"]))
    finally:
        stop_server(proc)


@contextlib.contextmanager
def peer_server(peer: Peer, timeout_s: float, log: Path, start_timeout: float) -> Iterator[Server]:
    """The peer's app in its own venv, in its own process group (killed as a group on
    exit), ready once one real request is answered."""
    port = _free_ports(3)
    py = venv_python(peer.name)
    libdir = subprocess.run([str(py), "-c", "import sysconfig; "
                             "print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, timeout=60).stdout.strip()
    env = {**os.environ, **peer.env, "PEER_MODEL": str(open_zoo().model_path(MODEL)),
           "PEER_PORT": str(port), "PEER_MAX_BATCH": str(MAX_BATCH),
           "PEER_WINDOW_US": str(WINDOW_US), "PEER_THREADS": "1",
           "PEER_MAX_LATENCY_MS": str(int(timeout_s * 1e3)),
           "PYTHONPATH": str(APPS), "LD_LIBRARY_PATH": libdir,
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    args = [a.format(port=port) for a in peer.command] or [str(APPS / f"{peer.name}_app.py")]
    with log.open("w") as out:
        proc = subprocess.Popen([str(py), *args], cwd=APPS, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(peer.codec, base, proc, start_timeout, log)
        yield Server(peer.name, peer.codec, base, proc.pid)
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the app's process group, SIGKILL to whatever is left after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_ready(codec_name: str, base: str, proc: subprocess.Popen[bytes], timeout: float,
               log: Path) -> None:
    """Poll with one real request until it is answered; the app's log tail if it dies."""
    import urllib.error
    import urllib.request

    codec = CODECS[codec_name](5.0)
    pixels = open_zoo().dataset("test").x[0].tobytes()
    end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-6:]
            raise RuntimeError(f"exited with {proc.returncode}: " + " | ".join(tail))
        body, headers = codec.body(0, pixels, time.monotonic())
        req = urllib.request.Request(base + codec.path, data=body, headers={
            "Content-Type": codec.content_type, **headers})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if codec.parse(r.read()) is not None:
                    return
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    raise RuntimeError(f"not answering after {timeout:.0f} s ({last})")


# ---- measuring ------------------------------------------------------------------------------

@dataclass
class Shot:
    """One arrival trace against one server: the curve's point and the replies behind it."""

    point: Point
    sizes: list[int]
    waits_us: list[float]
    compute_us: list[float]
    lat_ms: list[float]
    failures: dict[str, int]


def shoot(gen: LoadGenerator, srv: Server, offsets: list[float], timeout_s: float,
          offered: float) -> Shot:
    time.sleep(0.3)  # the previous step's leftovers (timed-out requests) clear
    m0 = srv.model_cpu_s() if srv.model_cpu_s else 0.0
    c0, h0, t0 = tree_cpu_s(srv.pid), host_busy_s(), time.perf_counter()
    parts = gen.run(srv.codec, srv.base, offsets, timeout_s)
    c1, h1, t1 = tree_cpu_s(srv.pid), host_busy_s(), time.perf_counter()
    m1 = srv.model_cpu_s() if srv.model_cpu_s else 0.0
    lat = [x for p in parts for x in p.lat_ms]
    sizes = [x for p in parts for x in p.sizes]
    ok = len(lat)
    sent = sum(p.sent for p in parts)
    span = max(offsets[-1] - offsets[0] if len(offsets) > 1 else 0.0, 1e-3)
    first = min(p.first_done for p in parts)
    last = max(p.last_done for p in parts)
    served_span = max(last - first, span) if ok else span
    if srv.model_cpu_s:
        model_us = (m1 - m0) * 1e6 / max(ok, 1)
    else:  # each reply carries its batch's model CPU: a request's share is 1/batch of it
        shares = (c / max(b, 1) for p in parts
                  for c, b in zip(p.model_cpu_us, p.sizes, strict=True))
        model_us = sum(shares) / max(ok, 1)
    p50, p99 = stats.percentiles(lat)
    failures: Counter[str] = Counter()
    for p in parts:
        failures.update(p.failures)
    pt = Point(offered, sent / span, ok / served_span, p50, p99, sent - ok, sent,
               float(np.mean(sizes)) if sizes else 0.0, (c1 - c0) * 1e6 / max(ok, 1),
               model_us, sum(p.cpu_s for p in parts) * 1e6 / max(ok, 1),
               (h1 - h0) / (t1 - t0))
    return Shot(pt, sizes, [x for p in parts for x in p.waits_us],
                [x for p in parts for x in p.compute_us], lat, dict(failures))


def idle_cores(pid: int, seconds: float = 2.0) -> float:
    time.sleep(0.5)
    c0, t0 = tree_cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    return (tree_cpu_s(pid) - c0) / (time.perf_counter() - t0)


@dataclass
class Run:
    """Everything measured on one server."""

    name: str
    points: list[Point] = field(default_factory=list)
    equal: dict[str, Point] = field(default_factory=dict)
    """Peer name -> the median repeat at that peer's equal load (80 % of its peak): on the
    peer itself, or on ours at the same offered load."""
    traces: dict[str, stats.BatchSummary] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    equal_p99s: dict[str, list[float]] = field(default_factory=dict)
    """Every repeat's p99 at each equal load: the spread behind the median."""
    idle_cores: float = math.nan
    """The process tree's CPU with no load (Ray's GCS, raylet and agents tick along): the
    share of CPU per request that is not per request."""

    def net_us(self, p: Point) -> float:
        """CPU per request outside the model, less the idle tree's share at that rate."""
        return p.outside_model_us - self.idle_cores * 1e6 / max(p.achieved, 1e-9)


@dataclass(frozen=True)
class Plan:
    seconds: float
    min_requests: int
    start: float
    factor: float
    max_rate: float
    max_p99_ms: float
    refine: int
    equal_share: float
    timeout_s: float
    repeats: int
    """Steps at each equal load; the median p99 counts."""


def sweep(gen: LoadGenerator, srv: Server, plan: Plan, seed: int,
          say: Callable[[str, Point], None]) -> Run:
    """Warm up, step the offered load up the ladder until one step past saturation, then
    bisect towards the saturation point."""
    run = Run(srv.name)

    def at(rate: float) -> Point:
        secs = stats.step_seconds(rate, plan.seconds, plan.min_requests)
        shot = shoot(gen, srv, stats.poisson_offsets(rate, secs, seed + int(rate)),
                     plan.timeout_s, rate)
        run.failures.update(shot.failures)
        say(srv.name, shot.point)
        return shot.point

    shoot(gen, srv, stats.poisson_offsets(plan.start, 1.5, seed), plan.timeout_s, plan.start)
    run.idle_cores = idle_cores(srv.pid)
    for rate in stats.ladder_rates(plan.start, plan.factor, plan.max_rate):
        pt = at(rate)
        run.points.append(pt)
        if not pt.sustained or pt.p99_ms > plan.max_p99_ms:
            break
    for _ in range(plan.refine):
        nxt = stats.refine_rate([p.offered for p in run.points if p.sustained],
                                [p.offered for p in run.points])
        if nxt is None:
            break
        run.points.append(at(nxt))
    run.points.sort(key=lambda p: p.offered)
    return run


def refine_at_budgets(gen: LoadGenerator, srv: Server, ours: Run, plan: Plan,
                      peers: dict[str, Run], say: Callable[[str, Point], None]) -> None:
    """Our curve is read at each peer's p99 at its peak: bisect there too (`plan.refine`
    steps per peer), between our highest step within that p99 and the next step above."""
    for run in peers.values():
        top = stats.max_sustained(run.points)
        if top is None:
            continue
        for _ in range(plan.refine):
            rate = stats.refine_rate(
                [p.offered for p in ours.points if p.sustained and p.p99_ms <= top.p99_ms],
                [p.offered for p in ours.points])
            if rate is None:
                break
            secs = stats.step_seconds(rate, plan.seconds, plan.min_requests)
            shot = shoot(gen, srv, stats.poisson_offsets(rate, secs, 60 + int(rate)),
                         plan.timeout_s, rate)
            ours.failures.update(shot.failures)
            say(f"ours (at {run.name}'s p99)", shot.point)
            ours.points.append(shot.point)
    ours.points.sort(key=lambda p: p.offered)


def at_equal_load(gen: LoadGenerator, srv: Server, run: Run, key: str, load: float,
                  plan: Plan, say: Callable[[str, Point], None]) -> None:
    """`plan.repeats` steps at `load`; the one with the median p99 is the figure (one step's
    p99 on this shared host can be several times another's at the same load)."""
    secs = max(stats.step_seconds(load, plan.seconds, plan.min_requests), 1.5 * plan.seconds)
    shots = []
    for k in range(plan.repeats):
        shot = shoot(gen, srv, stats.poisson_offsets(load, secs, 7 + k), plan.timeout_s, load)
        run.failures.update(shot.failures)
        say(f"{srv.name} @ {key}'s equal load", shot.point)
        shots.append(shot.point)
    run.equal[key] = stats.median_point(shots)
    run.equal_p99s[key] = [p.p99_ms for p in shots]


TRACES: dict[str, Callable[[int], list[float]]] = {
    "burst 96": lambda seed: stats.burst_offsets(3 * MAX_BATCH),
    "steady 100/s": lambda seed: stats.poisson_offsets(100.0, 3.0, seed),
    "ramp 10->150/s": lambda seed: stats.ramp_offsets(10.0, 150.0, 4.0, seed),
}
"""The same arrivals for every server: how each forms batches from a full queue, under a
light steady load and as load rises."""


def batching(gen: LoadGenerator, srv: Server, run: Run, timeout_s: float) -> None:
    for i, (name, make) in enumerate(TRACES.items()):
        offsets = make(1000 + i)
        shot = shoot(gen, srv, offsets, timeout_s, len(offsets) / max(offsets[-1], 1.0))
        run.traces[name] = stats.batch_summary(shot.sizes, shot.waits_us, shot.lat_ms,
                                               shot.compute_us)
        run.failures.update(shot.failures)


# ---- reporting ------------------------------------------------------------------------------

def curve_table(run: Run) -> Table:
    table = Table(title=f"{run.name}: offered load, throughput, latency, CPU per request "
                        f"(idle process tree: {run.idle_cores:.3f} cores)")
    for col in ("offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "sustained",
                "mean batch", "server CPU/req", "outside model", "client CPU/req",
                "host cores"):
        table.add_column(col, justify="right")
    rows = [(p, "") for p in run.points] + [(p, " (=load)") for p in run.equal.values()]
    for p, tag in rows:
        table.add_row(f"{p.offered:,.0f}{tag}", f"{p.achieved:,.0f}", f"{p.p50_ms:.1f}",
                      f"{p.p99_ms:.1f}", f"{p.errors} ({p.error_share:.1%})",
                      "yes" if p.sustained else "no", f"{p.mean_batch:.1f}",
                      f"{p.server_cpu_us:,.0f} us", f"{p.outside_model_us:,.0f} us",
                      f"{p.client_cpu_us:,.0f} us", f"{p.host_cores:.2f}")
    return table


def batching_table(runs: list[Run]) -> Table:
    table = Table(title="Batching semantics: the same arrival traces on every server. wait: "
                        "to the batch's start from the request's send (peers) or its arrival "
                        "(ours, the server's queue_us); not computing: latency - the batch's "
                        "compute, for all")
    for col in ("trace", "server", "requests", "batches", "mean batch", "max",
                "batches by size", "wait p50 ms", "wait p99 ms", "not computing p50 ms",
                "not computing p99 ms", "latency p50 ms", "latency p99 ms"):
        table.add_column(col, justify="right")
    for trace in TRACES:
        for run in runs:
            s = run.traces.get(trace)
            if s is None:
                continue
            table.add_row(trace, run.name, str(s.requests), str(s.batches),
                          f"{s.mean_batch:.1f}", str(s.max_batch),
                          stats.size_histogram(s.size_counts), f"{s.wait_p50_ms:.2f}",
                          f"{s.wait_p99_ms:.2f}", f"{s.idle_p50_ms:.2f}",
                          f"{s.idle_p99_ms:.2f}", f"{s.latency_p50_ms:.1f}",
                          f"{s.latency_p99_ms:.1f}")
    return table


def summary_table(figures: dict[str, dict[str, Any]], skipped: dict[str, str],
                  versions: dict[str, str]) -> Table:
    table = Table(title=f"{MODEL}: ours against each peer (same client, one after the other)")
    for col in ("peer", "version", "peak/s", "p99 at peak ms", "ours/s at that p99",
                "throughput ours/peer", "equal load/s", "p99 peer / ours ms", "p99 peer/ours",
                "CPU outside model peer / ours", "same, less idle"):
        table.add_column(col, justify="right")
    for peer, f in figures.items():
        table.add_row(peer, versions.get(peer, "?"), str(f.get("peak_rps")),
                      str(f.get("p99_at_peak_ms")), str(f.get("ours_rps_at_that_p99")),
                      str(f.get("throughput_ratio_at_equal_p99")), str(f.get("equal_load_rps")),
                      f"{f.get('peer_p99_at_equal_load_ms')} / "
                      f"{f.get('ours_p99_at_equal_load_ms')}",
                      str(f.get("p99_ratio_at_equal_load")),
                      f"{f.get('peer_outside_model_us')} / {f.get('ours_outside_model_us')} us",
                      f"{f.get('peer_outside_model_net_us')} / "
                      f"{f.get('ours_outside_model_net_us')} us")
    for peer, reason in skipped.items():
        table.add_row(peer, "-", "not run: " + reason[:90], *[""] * 8)
    return table


def server_tree() -> str:
    """The commit the servers and apps ran from, `+dirty` if their code had local edits
    (docs do not count)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, timeout=10,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "server", "common", "testbed", "scripts"],
                               cwd=ROOT, timeout=10, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# ---- the run --------------------------------------------------------------------------------

def run_all(args: argparse.Namespace, plan: Plan, console: Console) -> dict[str, Any]:
    peers = [p for p in args.peers if p != "ours"]
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    runs: dict[str, Run] = {}
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)

    def say(name: str, p: Point) -> None:
        console.print(f"  {name}: offered {p.offered:,.0f}/s -> {p.achieved:,.0f}/s, p50 "
                      f"{p.p50_ms:.1f} ms, p99 {p.p99_ms:.1f} ms, errors {p.errors}, batch "
                      f"{p.mean_batch:.1f}, CPU/req {p.server_cpu_us:,.0f} us "
                      f"(model {p.model_cpu_us:,.0f}), host cores {p.host_cores:.2f}")

    gen = LoadGenerator(args.procs, args.connections)
    t_start = time.monotonic()
    try:
        for i, name in enumerate(peers):
            peer = PEERS[name]
            rec = setup_record(name)
            if not rec.get("ok"):
                skipped[name] = str(rec.get("reason"))
                console.print(f"{name}: not run: {skipped[name]}")
                continue
            versions[name] = rec["version"]
            console.print(f"{name} {rec['version']}: starting (log: {logs / name}.log)")
            try:
                with peer_server(peer, plan.timeout_s, logs / f"{name}.log",
                                 args.start_timeout) as srv:
                    run = sweep(gen, srv, plan, 100 * (i + 1), say)
                    top = stats.max_sustained(run.points)
                    if top is not None:
                        at_equal_load(gen, srv, run, name, plan.equal_share * top.achieved,
                                      plan, say)
                    batching(gen, srv, run, plan.timeout_s)
                    runs[name] = run
            except Exception as exc:
                skipped[name] = f"failed on this host: {type(exc).__name__}: {exc}"[:600]
                console.print(f"{name}: not run: {skipped[name]}")
        console.print("ours: starting")  # the reference every figure is read against: last
        with our_server() as srv:
            ours = sweep(gen, srv, plan, 50, say)
            refine_at_budgets(gen, srv, ours, plan, runs, say)
            for name, run in runs.items():
                if name in run.equal:
                    at_equal_load(gen, srv, ours, name, run.equal[name].offered, plan, say)
            batching(gen, srv, ours, plan.timeout_s)
        runs = {"ours": ours, **runs}
    finally:
        gen.close()
    return {"runs": runs, "skipped": skipped, "versions": versions,
            "elapsed_s": time.monotonic() - t_start}


def report(result: dict[str, Any], args: argparse.Namespace, plan: Plan,
           console: Console) -> dict[str, Any]:
    runs: dict[str, Run] = result["runs"]
    skipped: dict[str, str] = result["skipped"]
    versions: dict[str, str] = result["versions"]
    for run in runs.values():
        console.print(curve_table(run))
    console.print(batching_table(list(runs.values())))
    figures: dict[str, dict[str, Any]] = {}
    ours = runs.get("ours")
    for name, run in runs.items():
        if name == "ours" or ours is None:
            continue
        f = stats.peer_figures(ours.points, run.points, run.equal.get(name),
                               ours.equal.get(name))
        pe, oe = run.equal.get(name), ours.equal.get(name)
        f["peer_outside_model_us"] = None if pe is None else round(pe.outside_model_us, 1)
        f["ours_outside_model_us"] = None if oe is None else round(oe.outside_model_us, 1)
        f["peer_outside_model_net_us"] = None if pe is None else round(run.net_us(pe), 1)
        f["ours_outside_model_net_us"] = None if oe is None else round(ours.net_us(oe), 1)
        f["peer_idle_cores"] = round(run.idle_cores, 3)
        f["ours_idle_cores"] = round(ours.idle_cores, 3)
        f["peer_server_cpu_us"] = None if pe is None else round(pe.server_cpu_us, 1)
        f["peer_p99s_at_equal_load_ms"] = [round(x, 1) for x in run.equal_p99s.get(name, [])]
        f["ours_p99s_at_equal_load_ms"] = [round(x, 1) for x in ours.equal_p99s.get(name, [])]
        f["ours_server_cpu_us"] = None if oe is None else round(oe.server_cpu_us, 1)
        figures[name] = f
    console.print(summary_table(figures, skipped, versions))
    top = stats.max_sustained(ours.points) if ours else None
    detail = {
        "model": MODEL, "max_batch": MAX_BATCH, "window_us": WINDOW_US,
        "server_tree": server_tree(), "quick": args.quick, "plan": asdict(plan),
        "elapsed_s": round(result["elapsed_s"], 1), "versions": versions,
        "systems": {"ours": {"protocol": OURS_PROTOCOL, "knobs": OURS_KNOBS},
                    **{n: {"version": versions.get(n), "protocol": PEERS[n].protocol,
                           "knobs": PEERS[n].knobs, "unequal": PEERS[n].unequal}
                       for n in runs if n in PEERS}},
        "ours_peak_rps": round(top.achieved, 1) if top else None,
        "peers": figures, "not_run": skipped,
        "failures": {n: dict(r.failures) for n, r in runs.items() if r.failures},
        "batching": {n: {t: stats.rounded(asdict(s)) for t, s in r.traces.items()}
                     for n, r in runs.items()},
        "idle_cores": {n: round(r.idle_cores, 3) for n, r in runs.items()},
        "curves": {n: [stats.rounded({**asdict(p), "sustained": p.sustained})
                       for p in r.points] for n, r in runs.items()},
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(detail, indent=1))
        console.print(f"details: {args.json_out}")
    extra = {"ours_peak_rps": detail["ours_peak_rps"], "server_tree": detail["server_tree"],
             "elapsed_s": detail["elapsed_s"]}
    for name, f in figures.items():
        extra[f"{name}_peak_rps"] = f.get("peak_rps")
        extra[f"{name}_outside_model_us"] = f.get("peer_outside_model_us")
        extra[f"ours_outside_model_us_at_{name}_load"] = f.get("ours_outside_model_us")
    line: dict[str, Any] = stats.rounded(stats.headline(figures, skipped, extra))
    return line


def _raise_timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("benchmark exceeded --deadline")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", metavar="PEER[,PEER]|all",
                        help="create .peers/<peer> venvs with the peers, then exit")
    parser.add_argument("--peers", default="ray,pytriton,litserve,bentoml",
                        help="comma-separated; ours always runs last")
    parser.add_argument("--quick", action="store_true",
                        help="shorter steps, coarser ladder: the whole run in < 15 minutes")
    parser.add_argument("--seconds", type=float, default=None, help="per step of load")
    parser.add_argument("--min-requests", type=int, default=None)
    parser.add_argument("--start", type=float, default=40.0, help="first offered rate, /s")
    parser.add_argument("--factor", type=float, default=None, help="ladder step, geometric")
    parser.add_argument("--max-rate", type=float, default=20_000.0)
    parser.add_argument("--max-p99-ms", type=float, default=2000.0)
    parser.add_argument("--refine", type=int, default=None, help="bisection steps per curve")
    parser.add_argument("--equal-load", type=float, default=0.8,
                        help="equal load as a share of each peer's peak")
    parser.add_argument("--repeats", type=int, default=3,
                        help="steps at each equal load (the median p99 is the figure)")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=256, help="per load process")
    parser.add_argument("--timeout", type=float, default=None, help="per request, s")
    parser.add_argument("--start-timeout", type=float, default=240.0, help="per peer, s")
    parser.add_argument("--logs", default=str(PEERS_DIR / "logs"))
    parser.add_argument("--json-out", default=str(PEERS_DIR / "last_run.json"))
    parser.add_argument("--deadline", type=int, default=3600, help="whole run, s")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in PEERS and p != "ours"]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {sorted(PEERS)}")
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    q = args.quick
    return Plan(seconds=args.seconds or (2.0 if q else 4.0),
                min_requests=args.min_requests or (300 if q else 1000),
                start=args.start, factor=args.factor or (1.6 if q else 1.35),
                max_rate=args.max_rate, max_p99_ms=args.max_p99_ms,
                refine=args.refine if args.refine is not None else (1 if q else 2),
                equal_share=args.equal_load, timeout_s=args.timeout or (5.0 if q else 10.0),
                repeats=args.repeats)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    console = Console(width=None if sys.stdout.isatty() else 200, markup=False, highlight=False)
    if args.setup:
        names = list(PEERS) if args.setup == "all" else args.setup.split(",")
        for name in names:
            console.print(f"{name}: installing {' '.join(PEERS[name].packages)} ...")
            console.print(f"{name}: {setup(PEERS[name])}")
        return
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(args.deadline)
    plan = plan_of(args)
    code = 0
    try:
        line = report(run_all(args, plan, console), args, plan, console)
    except Exception as exc:
        console.print(f"bench_peers failed: {type(exc).__name__}: {exc}")
        line, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    finally:
        signal.alarm(0)
    print(json.dumps(line), flush=True)  # unwrapped, unstyled: the last line
    sys.exit(code)


if __name__ == "__main__":
    main()
