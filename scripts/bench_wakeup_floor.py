"""The host's floor for device density: how late N bare processes wake up at 10 Hz each.

Every process sleeps exponential gaps (Poisson, 10 Hz) and records how late each wake-up is,
optionally running the light model once per wake-up (`--work`). Nothing else runs: no
asyncio, no sockets, no server. Whatever lateness this shows, an emulated device process,
which does more per wake-up, cannot beat; bench_density.py's loop-lag bar is measured
against it (docs/density.md).

`--loop` gives the second floor bench_density.py measures: the same processes on the
devices' own event loop (`precise_loop`, timer callbacks), running the model at each arrival
and waking `--extra-wakeups` more times per arrival for nothing (Poisson timers: what a
device's reports, link deliveries, replies and threshold messages cost in wake-ups, with none
of their work). It is what one asyncio process per device costs with the wake-ups the
protocol asks for, before any of the device's own Python.

    flock /tmp/bench.lock .venv/bin/python scripts/bench_wakeup_floor.py [--counts 40 100 200]

Prints a table and, as its last line, one JSON object with the named figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from cascade_testbed.common.modelzoo import open_session, open_zoo, to_model_input

SETTLE_S = 3.0
"""All processes are started before anyone measures."""


def _light_models() -> tuple[list[Any], np.ndarray]:
    """One session per light tier and an input, made before forking (as the forkserver
    preloads them for the devices), so the children start in milliseconds."""
    zoo = open_zoo()
    sessions = [open_session(zoo.model_path(name), 1, 1) for name in zoo.tiers.values()]
    x = to_model_input(zoo.dataset("test").x[:1])
    for s in sessions:
        s.run(None, {s.get_inputs()[0].name: x})
    return sessions, x


def _model_run(index: int, models: tuple[list[Any], np.ndarray] | None
               ) -> Callable[[], object] | None:
    """This process's tier's model on one sample, or None (no `--work`)."""
    if models is None:
        return None
    sessions, x = models
    session = sessions[index % len(sessions)]
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def _sleeper(index: int, t0: float, seconds: float, rate_hz: float,
             models: tuple[list[Any], np.ndarray] | None, out: Any) -> None:
    run = _model_run(index, models)
    rng = random.Random(index)
    time.sleep(max(t0 - time.monotonic(), 0.0))
    lags, cpu = [], time.process_time()
    due = time.monotonic()
    while due < t0 + seconds:
        due += rng.expovariate(rate_hz)
        time.sleep(max(due - time.monotonic(), 0.0))
        lags.append(time.monotonic() - due)
        if run is not None:
            run()
    out.put((lags, (time.process_time() - cpu) / max(len(lags), 1)))


def _looper(index: int, t0: float, seconds: float, rate_hz: float,
            models: tuple[list[Any], np.ndarray] | None, out: Any, extra: float) -> None:
    """The floor on an event loop: arrivals (model run, lateness recorded) and empty wake-ups
    at `extra` times the arrival rate, all Poisson timer callbacks on the devices' loop."""
    from cascade_testbed.emulated_devices.loop_probe import precise_loop

    # The parent holds a pipe per child started before this one; inherited, they would push
    # this loop's own descriptors past select()'s 1,024 at a thousand processes. The result
    # goes to a file (`out`), and the process ends with os._exit, which touches none of them.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    loop = precise_loop()
    run = _model_run(index, models)
    rng = random.Random(index)
    end = t0 + seconds
    lags: list[float] = []
    done = loop.create_future()

    def arrival(due: float) -> None:
        lags.append(time.monotonic() - due)
        if run is not None:
            run()
        nxt = due + rng.expovariate(rate_hz)
        if nxt < end:
            loop.call_at(loop.time() + nxt - time.monotonic(), arrival, nxt)
        elif not done.done():
            done.set_result(None)

    def empty(due: float) -> None:
        nxt = due + rng.expovariate(rate_hz * extra)
        if nxt < end:
            loop.call_at(loop.time() + nxt - time.monotonic(), empty, nxt)

    time.sleep(max(t0 - time.monotonic(), 0.0))
    cpu = time.process_time()
    now = time.monotonic()
    loop.call_soon(arrival, now)
    if extra > 0:
        loop.call_soon(empty, now)
    loop.run_until_complete(done)
    np.save(out / f"{index}.npy", np.append(lags, (time.process_time() - cpu)
                                             / max(len(lags), 1)))
    os._exit(0)


def measure(count: int, seconds: float, rate_hz: float, work: bool,
            extra_wakeups: float | None = None) -> dict[str, float]:
    """`extra_wakeups` None: bare sleeping processes; a number: the event-loop floor with that
    many empty wake-ups per arrival (CPU is then per arrival, lateness that of arrivals)."""
    ctx = mp.get_context("fork")  # cheap starts; the children import nothing new
    with tempfile.TemporaryDirectory() as tmp:
        q: Any = ctx.Queue() if extra_wakeups is None else Path(tmp)
        models = _light_models() if work else None
        t0 = time.monotonic() + SETTLE_S + count * 0.005
        procs = [ctx.Process(target=_sleeper, args=(i, t0, seconds, rate_hz, models, q))
                 if extra_wakeups is None else
                 ctx.Process(target=_looper,
                             args=(i, t0, seconds, rate_hz, models, q, extra_wakeups))
                 for i in range(count)]
        for p in procs:
            p.start()
        if extra_wakeups is None:
            results = [q.get(timeout=SETTLE_S + count * 0.01 + seconds + 60) for _ in procs]
        for p in procs:
            p.join()
        if extra_wakeups is not None:
            failed = [p.exitcode for p in procs if p.exitcode]
            if failed:
                raise RuntimeError(f"{len(failed)} floor processes failed (exit {failed[0]})")
            saved = [np.load(Path(tmp) / f"{i}.npy") for i in range(count)]
            results = [(a[:-1], float(a[-1])) for a in saved]
    ms = np.concatenate([np.asarray(lags) for lags, _ in results]) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "p999_ms": float(np.percentile(ms, 99.9)), "wakeups": int(ms.size),
            "cpu_per_wakeup_us": float(np.mean([c for _, c in results]) * 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[40, 100, 200])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--work", action="store_true",
                        help="run the light model (1 sample) at every wake-up")
    parser.add_argument("--loop", action="store_true",
                        help="on the devices' event loop, with --extra-wakeups")
    parser.add_argument("--extra-wakeups", type=float, default=0.0,
                        help="with --loop: empty wake-ups per arrival (a device at 10 Hz: ~0.8)")
    args = parser.parse_args()
    extra = args.extra_wakeups if args.loop else None
    figures = {n: measure(n, args.seconds, args.rate_hz, args.work, extra) for n in args.counts}
    on_loop = f" on an event loop, {extra:g} empty wake-ups per arrival" if extra is not None \
        else ""
    table = Table(title=f"bare processes waking at {args.rate_hz:g} Hz each"
                        f"{' and running the light model' if args.work else ''}{on_loop}")
    for col in ("processes", "wake-ups", "lateness p50 / p99 / p99.9 (ms)", "CPU per wake-up"):
        table.add_column(col, justify="right")
    for n, f in figures.items():
        table.add_row(str(n), f"{f['wakeups']:,}",
                      f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} / {f['p999_ms']:.2f}",
                      f"{f['cpu_per_wakeup_us']:.0f} us")
    Console().print(table)
    print(json.dumps({"work": args.work, "rate_hz": args.rate_hz, "extra_wakeups": extra, **{
        f"{k}_{n}": round(v, 3) for n, f in figures.items() for k, v in f.items()}}))


if __name__ == "__main__":
    main()
