"""One device's pipeline without a server: one wake-up per arrival (a sample that finds the
device busy starts when it is free), every generated sample ends in exactly one record, a stop
ends generation, and a reply is answered as of its downlink delivery when it is received."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.config import DeviceSpec, ScenarioConfig, device_specs
from cascade_testbed.common.records import FIELDS, SampleRecord, format_row, read_records
from cascade_testbed.emulated_devices.client import RECONNECT_BACKOFF_S, Backoff
from cascade_testbed.emulated_devices.device import Device, Pending
from cascade_testbed.emulated_devices.loop_probe import precise_loop

T = TypeVar("T")
NO_SERVER = "http://127.0.0.1:9"  # discard port: nothing listens, connecting fails at once


def low_tier_spec(rate_hz: float, duration_s: float) -> DeviceSpec:
    """The low tier (30 ms light model) alone, Poisson arrivals, threshold 1: all forwarded."""
    cfg = ScenarioConfig()
    cfg = dataclasses.replace(cfg, duration_s=duration_s, devices=dataclasses.replace(
        cfg.devices, count=1, rate_hz=rate_hz, arrival="poisson",
        mix=":".join("1" if t == "low" else "0" for t in cfg.tiers)))
    return device_specs(cfg)[0]


def run_loop(make: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=precise_loop) as runner:
        return runner.run(make())  # type: ignore[arg-type]


def records_of(out: Path) -> list[SampleRecord]:
    (path,) = (out / "samples").glob("*.csv")
    records, bad = read_records(path)
    assert bad == 0
    return records


def test_every_arrival_ends_in_one_record_and_waits_for_a_free_device(tmp_path: Path) -> None:
    spec = low_tier_spec(rate_hz=40.0, duration_s=1.5)

    async def go() -> int:
        device = Device(spec, NO_SERVER, out_dir=tmp_path)
        return (await device.run()).generated

    generated = run_loop(go)
    recs = sorted(records_of(tmp_path), key=lambda r: r.sample_id)
    assert generated > 30 and [r.sample_id for r in recs] == list(range(generated))
    assert all(r.source == "fallback" and r.cause == "disconnected" for r in recs)
    queued = 0
    for prev, cur in itertools.pairwise(recs):
        prev_end = prev.t_sched_s + prev.latency_ms / 1e3
        cur_start = cur.t_sched_s + (cur.latency_ms - cur.light_ms) / 1e3
        assert cur_start >= prev_end - 1e-6  # one light model at a time
        queued += prev_end > cur.t_sched_s
    assert queued > 5  # at 40 Hz, 30 ms runs often find the device busy


def test_stop_ends_generation_and_every_sample_is_recorded(tmp_path: Path) -> None:
    spec = low_tier_spec(rate_hz=20.0, duration_s=5.0)

    async def go() -> int:
        device = Device(spec, NO_SERVER, out_dir=tmp_path)
        asyncio.get_running_loop().call_later(0.5, device.stop)
        return (await asyncio.wait_for(device.run(), 3.0)).generated

    generated = run_loop(go)
    recs = records_of(tmp_path)
    assert 0 < generated < 40 and len(recs) == generated
    assert max(r.t_sched_s for r in recs) < 0.6


def test_a_reply_is_answered_as_of_its_delivery_and_a_late_one_leaves_it_to_the_timeout(
        tmp_path: Path) -> None:
    spec = low_tier_spec(rate_hz=10.0, duration_s=1.0)

    async def go() -> Device:
        device = Device(spec, NO_SERVER, out_dir=tmp_path)
        loop = asyncio.get_running_loop()
        now = loop.time()
        for sid, deadline in ((0, now + 1.0), (1, now)):
            rec = SampleRecord(**{name: _example(name) for name in FIELDS})  # type: ignore[arg-type]
            rec.sample_id = sid
            device._pending[sid] = Pending(rec, t_sched=now - 0.05,
                                           timeout=loop.call_at(deadline, lambda: None))
        device._on_result(wire.Result(0, prediction=7, batch_size=3, model="m"), 160)
        device._on_result(wire.Result(1, prediction=7), 160)
        await device._close()
        return device

    device = run_loop(go)
    (rec,) = records_of(tmp_path)
    assert rec.sample_id == 0 and rec.source == "heavy" and rec.final_pred == 7
    assert rec.heavy_model == "m" and rec.batch_size == 3
    assert rec.latency_ms > 50.0 + spec.spec.downlink.delay_ms / 2  # as of the delivery
    assert set(device._pending) == {1} and device.late_replies == 1


def _example(name: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(SampleRecord)}[name]
    return {"str": "x", "int": 0, "float": 0.0, "bool": False, "Source": "light"}[str(kind)]


def test_format_row_text() -> None:
    values = {"queue_ms": math.nan, "light_conf": 0.123456789, "overrun": True,
              "forwarded": False, "sample_id": 2**70, "heavy_model": "a,b",
              "wall_epoch_s": 1.7e9 + 0.1234567, "light_ms": math.inf}
    rec = SampleRecord(**{n: values.get(n, _example(n)) for n in FIELDS})  # type: ignore[arg-type]
    row = dict(zip(FIELDS, format_row(rec), strict=True))
    assert row["queue_ms"] == "" and row["light_conf"] == "0.123457" and row["light_ms"] == "inf"
    assert row["overrun"] == "1" and row["forwarded"] == "0"
    assert row["sample_id"] == str(2**70) and row["heavy_model"] == "a,b"
    assert row["wall_epoch_s"] == "1700000000.123457"


def test_rows_and_journal_lines_reach_the_os_within_100_ms(tmp_path: Path) -> None:
    """Rows are buffered and flushed at wake-ups, but a row is on disk (readable by another
    process; a SIGKILL keeps it) within 100 ms of its sample's end, and a journal line within
    100 ms of its sample's start, whatever the Poisson gaps."""
    spec = low_tier_spec(rate_hz=10.0, duration_s=3.0)
    seen_row: dict[int, float] = {}
    seen_start: dict[int, float] = {}

    async def go() -> Device:
        device = Device(spec, NO_SERVER, out_dir=tmp_path)
        loop = asyncio.get_running_loop()
        csv_path = next((tmp_path / "samples").glob("*.csv"))
        gen_path = next((tmp_path / "samples").glob("*.gen"))

        async def watch() -> None:
            while True:
                now = loop.time()
                for line in csv_path.read_text().splitlines()[1:]:
                    seen_row.setdefault(int(line.split(",")[2]), now)
                for sid in gen_path.read_bytes().split():
                    seen_start.setdefault(int(sid), now)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        await device.run()
        watcher.cancel()
        return device

    device = run_loop(go)
    recs = records_of(tmp_path)
    assert len(recs) == device.generated > 15
    for r in recs:
        end = device._t0 + r.t_sched_s + r.latency_ms / 1e3
        start = end - r.light_ms / 1e3
        if r.sample_id in seen_row:  # the last ones may only be written at close
            assert seen_row[r.sample_id] - end < 0.1 + 0.01, r
        if r.sample_id in seen_start:
            assert seen_start[r.sample_id] - start < 0.1 + 0.01, r
    assert len(seen_row) >= len(recs) - 2


def test_reports_begin_at_a_random_phase_and_say_the_window_they_cover(tmp_path: Path) -> None:
    """Devices started together do not all report at the same instants (hundreds of processes
    waking at once); each report's `window_s` is the time since the previous one."""

    async def reports(index: int) -> list[tuple[float, wire.Report]]:
        spec = dataclasses.replace(low_tier_spec(rate_hz=10.0, duration_s=1.3), index=index)
        device = Device(spec, NO_SERVER, out_dir=tmp_path / str(index))
        loop = asyncio.get_running_loop()
        sent: list[tuple[float, wire.Report]] = []

        def capture(data: bytes, sid: int | None) -> None:
            msg = wire.decode(data)
            if isinstance(msg, wire.Report):
                sent.append((loop.time() - device._t0, msg))

        device._send_now = capture  # type: ignore[method-assign]
        await device.run()
        return sent

    runs = [run_loop(functools.partial(reports, i)) for i in range(4)]
    firsts = [sent[0][0] for sent in runs]
    assert all(0 <= t < 0.5 + 0.05 for t in firsts) and len({round(t, 3) for t in firsts}) == 4
    for sent in runs:
        assert len(sent) >= 2
        assert math.isclose(sent[0][1].window_s, sent[0][0], abs_tol=0.02)
        for (t0, _), (t1, report) in itertools.pairwise(sent):
            assert math.isclose(report.window_s, t1 - t0, abs_tol=0.02)


def test_reconnecting_leaves_the_compute_draws_as_they_were() -> None:
    """The back-off between connection attempts has a random stream of its own: a device that
    failed to connect, and retried, several times during its run has drawn exactly one compute
    time per sample, the same ones as a device that never tried."""
    spec = low_tier_spec(rate_hz=20.0, duration_s=1.0)

    async def go() -> tuple[Device, Device]:
        ran = Device(spec, NO_SERVER)
        await ran.run()
        return ran, Device(spec, NO_SERVER)

    ran, fresh = run_loop(go)
    backoff = ran._session._backoff
    assert ran._session.last_connect_error and backoff.base_s >= 4 * RECONNECT_BACKOFF_S[0]
    assert backoff.rng.bit_generator.state != fresh._session._backoff.rng.bit_generator.state
    assert ran.generated > 5
    for _ in range(ran.generated):
        ran._compute.sample_s(fresh._compute_rng)
    assert ran._compute_rng.bit_generator.state == fresh._compute_rng.bit_generator.state


def test_backoff_doubles_to_its_cap_with_up_to_half_more_and_starts_over() -> None:
    first, cap = RECONNECT_BACKOFF_S
    backoff = Backoff(np.random.default_rng(0))
    waits = [backoff.next_s() for _ in range(10)]
    bases = [min(first * 2**k, cap) for k in range(10)]
    assert all(b <= w <= 1.5 * b for w, b in zip(waits, bases, strict=True))
    backoff.reset()
    assert first <= backoff.next_s() <= 1.5 * first
