"""One emulated device: the only asyncio orchestration of the package.

Pipeline per sample: scheduled arrival (open loop) -> wait for the device to be free -> light
model, padded to the tier's latency -> forwarding rule -> either the light answer is final, or
the sample goes over the emulated uplink to the server, and the reply comes back over the
emulated downlink; without a reply before `reply_timeout_ms` the light answer is final
(`fallback`). Every generated sample ends in exactly one record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.config import DeviceSpec, LinkSpec
from cascade_testbed.common.energy import RadioMeter, compute_j, idle_j
from cascade_testbed.common.link_trace import LinkTrace, read_link_trace
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.common.records import SampleRecord, Source, file_stem
from cascade_testbed.emulated_devices.arrivals import arrival_times, peak_rate
from cascade_testbed.emulated_devices.client import ServerSession
from cascade_testbed.emulated_devices.emulation import (
    ComputeProfile,
    Impairment,
    Link,
    Padding,
    pad,
    trace_phase,
)
from cascade_testbed.emulated_devices.forwarding import get_rule
from cascade_testbed.emulated_devices.light_model import light_stage
from cascade_testbed.emulated_devices.loop_probe import TimerLag
from cascade_testbed.emulated_devices.records import RecordSink
from cascade_testbed.emulated_devices.window import Window

log = logging.getLogger(__name__)

# Independent random streams per device, so changing one knob does not reshuffle the others.
# A new stream goes at the end: the existing ones keep their values.
STREAM_ARRIVALS, STREAM_COMPUTE, STREAM_UPLINK, STREAM_DOWNLINK, STREAM_DATA, STREAM_REPORTS = \
    range(6)
STREAM_RECONNECT = 6
"""The reconnect back-off's jitter: drawn from the compute stream, a reconnect reshuffled
every later sample's compute time."""
STREAMS = 7
"""How many streams a device draws."""
CONNECT_LEAD_S = 0.2
"""A device joining mid-run connects this long before its first sample is due."""
RESULT_BYTES = 160
"""About the size of a `result` frame, for the downlink time a reply needs."""


@dataclass(slots=True)
class Pending:
    """A forwarded sample waiting for its reply."""

    rec: SampleRecord
    t_sched: float
    timeout: asyncio.TimerHandle | None = None
    """Fires when the device stops waiting: a reply delivered later comes too late."""
    slo_counted: bool = False
    due: float = math.nan
    """When the emulated uplink delivers it (loop time): the intended arrival, against which
    the reply's return measures the link's timing error."""


@dataclass(slots=True)
class DeviceOutcome:
    """What the device says about itself at the end (also written as devices/<id>.json)."""

    device_id: str
    tier: str
    incarnation: int
    generated: int
    recorded: int
    final_threshold: float
    late_replies: int
    overruns: int
    reconnects: int
    sources: dict[str, int] = field(default_factory=dict)
    requests_sent: int = 0
    """Samples handed to the socket (device -> server requests)."""
    bytes_sent: int = 0
    """WebSocket payload bytes of those requests (msgpack frames)."""
    bytes_received: int = 0
    """Payload bytes of the replies."""
    loop_lag: dict[str, Any] = field(default_factory=dict)
    """How late this process's event loop ran the device's timers (`common.looplag`)."""
    refused: dict[str, int] = field(default_factory=dict)
    """Forwarded samples the server refused with an `error` reply, by error code (bad_tensor,
    malformed, ...): not load, something is wrong with what this device sends."""
    refusal: str = ""
    """The first such refusal's reason, as the server gave it."""
    energy: dict[str, float] = field(default_factory=dict)
    """Energy outside the samples' records (common.energy): `idle_j` (not computing while it
    ran), `control_radio_j` (reports, thresholds, late replies), `busy_s` (computing)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Device:
    """The sample pipeline of one emulated device, over its server session (`ServerSession`)
    and its record files (`RecordSink`)."""

    def __init__(self, spec: DeviceSpec, server_url: str, *, token: str = "",
                 out_dir: Path | None = None, rule: str | None = None) -> None:
        self.spec = spec
        self._zoo = open_zoo(spec.zoo)
        self._model = light_stage(self._zoo, spec.spec.members)
        data = self._zoo.dataset("test")
        # A restarted device draws new streams; the first process keeps the original ones.
        key = [spec.seed, spec.index] + ([spec.incarnation] if spec.incarnation else [])
        rngs = [np.random.default_rng([*key, s]) for s in range(STREAMS)]
        self._report_rng = rngs[STREAM_REPORTS]
        self._order = rngs[STREAM_DATA].permutation(len(data.y))
        self._task_mod = self._zoo.label_mod(spec.spec.task)
        """A task's labels, and the light model's answers to it, are taken mod this."""
        self._x = data.x
        self._y = data.y if self._task_mod is None else data.y % self._task_mod
        self._arrival_rng = rngs[STREAM_ARRIVALS]
        self._arrivals = np.empty(0)
        self._compute = ComputeProfile(spec.spec.compute_ms, spec.spec.compute_jitter)
        self._compute_rng = rngs[STREAM_COMPUTE]
        self._uplink = Link(spec.spec.uplink, rngs[STREAM_UPLINK],
                            trace=_link_trace(spec.spec.uplink))
        self._downlink = Link(spec.spec.downlink, rngs[STREAM_DOWNLINK],
                              trace=_link_trace(spec.spec.downlink))
        self._rule = get_rule(rule or spec.spec.rule)
        self._power = spec.spec.power
        self._radio = RadioMeter(self._power)
        self._busy_s = 0.0
        """Emulated light-model time, for the idle energy."""
        self._control_j = 0.0
        """Radio energy of what is not a sample's: reports, thresholds, late replies."""
        declared = peak_rate(spec.arrival, spec.rate_hz, burst_on_s=spec.burst_on_s,
                             burst_off_s=spec.burst_off_s, trace=spec.trace_points,
                             workload=spec.workload)
        self._session = ServerSession(server_url, wire.Hello(
            device_id=spec.device_id, tier=spec.tier, model=spec.spec.model, token=token,
            rate_sps=min(declared, wire.MAX_RATE_SPS)), rngs[STREAM_RECONNECT],
            on_welcome=self._on_welcome, on_message=self._on_message, on_lost=self._on_lost)
        self._records = RecordSink(out_dir, file_stem(spec.device_id, spec.incarnation),
                                   self._refused)
        self.threshold = spec.spec.threshold if spec.spec.threshold is not None else 1.0
        self.epoch = -1
        self._pending: dict[int, Pending] = {}
        self._report_timer: asyncio.TimerHandle | None = None
        self._window = Window()
        self._window_start = 0.0
        """When the current report window began (loop time)."""
        self._stop_rel: float = spec.duration_s
        self._sleep_future: asyncio.Future[None] | None = None
        self._free_at = 0.0
        """When the light model's current (emulated) computation ends."""
        self._next_arrival: tuple[int, asyncio.TimerHandle] | None = None
        self._arrivals_done: asyncio.Future[None] | None = None
        self._t0 = 0.0
        self._wall0 = 0.0
        self.generated = 0
        self.late_replies = 0
        self.overruns = 0
        self._sources = {"light": 0, "heavy": 0, "fallback": 0, "rejected": 0}
        self._refusals: dict[str, int] = {}
        self._refusal = ""
        self._loop = asyncio.get_running_loop()
        self._timers = TimerLag(self._loop)
        self._infer_overhead = len(wire.encode(wire.Infer(
            0, self._x.dtype.name, tuple(self._x.shape[1:]), b"", 0.0))) + 8

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self) -> None:
        """Start connecting (and reconnecting, with backoff) in the background."""
        self._session.connect()

    async def wait_registered(self, timeout_s: float, fail_fast: bool = False) -> None:
        """Start connecting and return once the server has welcomed this device; raise
        `RegistrationFailed` at once on a refusal that retrying cannot fix, TimeoutError if
        the server stays unreachable. `fail_fast` (a device started by hand): the first
        failed connection attempt raises ConnectionError with its reason. A device that
        fails to register is closed (its outcome written) before the error is raised."""
        await self._session.wait_registered(timeout_s, fail_fast, self._close)

    async def run(self, start_wall: float | None = None, run_start_wall: float | None = None,
                  end_wall: float | None = None) -> DeviceOutcome:
        """Generate and answer samples until the run ends, then drain and flush.

        `start_wall` aligns many devices on one wall-clock start; latencies use only this
        device's monotonic clock. A device restarted mid-run gets the run's start (its link
        faults are in run time) and end (it stops with the others).
        """
        now_wall = time.time()
        start_wall = start_wall if start_wall is not None else now_wall
        self._t0 = self._loop.time() + max(0.0, start_wall - now_wall)
        self._wall0 = start_wall
        if end_wall is not None:
            self._stop_rel = min(self._stop_rel, end_wall - start_wall)
        offset = start_wall - (run_start_wall if run_start_wall is not None else start_wall)
        spec = self.spec
        self._arrivals = arrival_times(
            spec.arrival, spec.rate_hz, min(spec.duration_s, self._stop_rel), self._arrival_rng,
            offset_s=offset, burst_on_s=spec.burst_on_s, burst_off_s=spec.burst_off_s,
            trace=spec.trace_points, workload=spec.workload)
        self._impair_links(offset)
        # A device that joins mid-run connects only shortly before it is due.
        self._loop.call_at(max(self._loop.time(), self._t0 - CONNECT_LEAD_S), self.connect)
        # Reports are timer callbacks: one turn of the loop per wake-up instead of a timer, a
        # future and a task step. The first comes at a random phase of the interval: devices
        # that start together would otherwise all report at the same instants, hundreds of
        # processes waking at once on the host (the loop-lag p99 of 1,000 devices).
        self._window_start = self._t0
        self._report_timer = self._loop.call_at(
            self._t0 + float(self._report_rng.uniform(0.0, spec.report_interval_s)),
            self._on_report)
        try:
            await self._generate()
            while self._pending:
                self._flush_if_due()
                await self._sleep_until(self._loop.time() + 0.01, interruptible=False)
        finally:
            if self._report_timer is not None:
                self._report_timer.cancel()
            self._report_timer = None
            await self._send_report()
            await self._close()
        if self._records.error is not None:
            raise self._records.error
        return self.outcome()

    def stop(self) -> None:
        """Stop generating now; samples already scheduled are still answered."""
        if self._t0:
            self._stop_rel = min(self._stop_rel, self._loop.time() - self._t0)
        else:
            self._stop_rel = 0.0
        if self._next_arrival is not None:
            i, handle = self._next_arrival
            if self._arrivals[i] >= self._stop_rel:  # not yet arrived: it never will
                handle.cancel()
                self._end_arrivals()
        if self._sleep_future is not None and not self._sleep_future.done():
            self._sleep_future.set_result(None)

    def outcome(self) -> DeviceOutcome:
        session = self._session
        recorded = self._records.recorded
        return DeviceOutcome(
            device_id=self.spec.device_id, tier=self.spec.tier,
            incarnation=self.spec.incarnation, generated=self.generated,
            recorded=recorded if recorded is not None else sum(self._sources.values()),
            final_threshold=self.threshold, late_replies=self.late_replies,
            overruns=self.overruns, reconnects=max(session.reconnects, 0),
            sources=self._sources, requests_sent=session.requests_sent,
            bytes_sent=session.bytes_sent, bytes_received=session.bytes_received,
            loop_lag=self._timers.hist.to_dict(), refused=dict(self._refusals),
            refusal=self._refusal, energy=self._energy())

    def _energy(self) -> dict[str, float]:
        span = max(min(self._stop_rel, self.spec.duration_s), 0.0) if self._t0 else 0.0
        return {"idle_j": round(idle_j(self._power, span, self._busy_s), 6),
                "control_radio_j": round(self._control_j, 6),
                "busy_s": round(self._busy_s, 6)}

    async def _close(self) -> None:
        self._records.flush()
        await self._session.close()
        self._records.close()
        self._records.write_outcome(self.outcome().to_dict())

    def _impair_links(self, offset_s: float) -> None:
        """Scenario link faults, given in run time, on this device's clock (this process
        started `offset_s` into the run)."""
        base = self._t0 - offset_s
        for link, direction in ((self._uplink, "up"), (self._downlink, "down")):
            link.set_origin(base, trace_phase(self.spec.index, link.trace_phase))
            link.impair([Impairment(base + f.start_s, base + f.end_s, f.loss)
                         for f in self.spec.link_faults if f.direction in ("both", direction)])

    async def _sleep_until(self, deadline: float, interruptible: bool = True) -> None:
        if deadline <= self._loop.time():
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        # Not a `TimerLag` timer: these waits (draining, the run's end) time no sample.
        handle = self._loop.call_at(deadline, _resolve, fut)
        if interruptible:
            self._sleep_future = fut
        try:
            await fut
        finally:
            handle.cancel()
            if self._sleep_future is fut:
                self._sleep_future = None

    # --- the sample pipeline ----------------------------------------------------------------

    async def _generate(self) -> None:
        """Answer every scheduled arrival until the schedule ends or the device stops.

        Arrivals are timer callbacks, not a coroutine awaiting a future per sample: a sample is
        one wake-up that runs the model at once, instead of a timer, a future and a task step
        (two turns of the loop), plus a second wake-up when the sample had to wait for the
        device to be free. Wake-ups are most of what a device costs the host.
        """
        self._free_at = self._t0
        self._arrivals_done = self._loop.create_future()
        self._schedule_arrival(0)
        await self._arrivals_done
        self._flush_if_due()
        await self._sleep_until(self._free_at, interruptible=False)  # the last computation
        self._flush_if_due()
        # A device in a silence (bursty or trace arrivals) is still there until its end.
        await self._sleep_until(self._t0 + self._stop_rel)

    def _schedule_arrival(self, i: int) -> None:
        """Wake up for arrival `i` when it is due and the device is free to run it."""
        if i >= len(self._arrivals) or self._arrivals[i] >= self._stop_rel:
            self._end_arrivals()
            return
        t_sched = self._t0 + float(self._arrivals[i])
        handle = self._timers.call_at(max(t_sched, self._free_at), self._on_arrival, i, t_sched)
        self._next_arrival = (i, handle)

    def _on_arrival(self, i: int, t_sched: float) -> None:
        """Arrival `i` (scheduled at `t_sched`), now that the device is free: run the model and
        decide the sample's outcome, then wait for the next arrival."""
        self._next_arrival = None
        try:
            if self._arrivals[i] >= self._stop_rel:
                self._end_arrivals()
                return
            self.generated += 1
            self._records.started(i, self._loop.time())
            ready = max(t_sched, self._free_at)
            self._free_at, rec, pixels = self._process(i, t_sched, ready)
            # When the emulated computation ends is known now, and so is all that follows
            # from it (the light answer's latency, the message's delivery time on the uplink),
            # so it is decided now instead of waking up at its end.
            self._decide(rec, t_sched, pixels, self._free_at)
            self._schedule_arrival(i + 1)
            self._flush_if_due()
        except Exception as exc:  # a timer callback's error would only be logged: end the run
            if self._arrivals_done is not None and not self._arrivals_done.done():
                self._arrivals_done.set_exception(exc)

    def _flush_if_due(self) -> None:
        """Flush buffered records unless the next arrival's wake-up comes early enough to do
        it (`RecordSink.flush_if_due`)."""
        nxt = self._next_arrival
        self._records.flush_if_due(None if nxt is None else nxt[1].when())

    def _end_arrivals(self) -> None:
        if self._arrivals_done is not None and not self._arrivals_done.done():
            self._arrivals_done.set_result(None)

    def _process(self, i: int, t_sched: float, ready: float
                 ) -> tuple[float, SampleRecord, np.ndarray]:
        """Run the light model; return when the emulated computation ends and its record."""
        idx = int(self._order[i % len(self._order)])
        pixels = self._x[idx]
        start = self._loop.time()
        t = time.perf_counter()
        probs = self._model.predict(pixels)
        real = time.perf_counter() - t
        # Under a cgroup's CPU quota the kernel slowed the real run: it is the emulated time.
        padding = pad(start, real, self._compute.sample_s(self._compute_rng)) \
            if self.spec.cpu_limit == "pad" else Padding(end=start + real, overrun=False)
        self.overruns += padding.overrun
        busy = padding.end - start
        self._busy_s += busy
        pred = int(probs.argmax())
        if self._task_mod is not None:
            pred %= self._task_mod
        rec = SampleRecord(
            device_id=self.spec.device_id, tier=self.spec.tier, sample_id=i,
            incarnation=self.spec.incarnation, label=int(self._y[idx]),
            t_sched_s=t_sched - self._t0,
            start_lag_ms=(start - ready) * 1e3, light_ms=(padding.end - start) * 1e3,
            light_real_ms=real * 1e3, overrun=padding.overrun, light_pred=pred,
            light_conf=float(probs.max()), threshold=self.threshold,
            forwarded=self._rule(probs, self.threshold), queue_ms=math.nan,
            compute_ms=math.nan, batch_size=0, heavy_model="", final_pred=pred,
            source="light", cause="",
            correct=False, latency_ms=math.nan, slo_met=False,
            wall_epoch_s=self._wall0 + (t_sched - self._t0),
            energy_compute_j=compute_j(self._power, busy), energy_radio_j=0.0)
        return padding.end, rec, pixels

    def _decide(self, rec: SampleRecord, t_sched: float, pixels: np.ndarray, end: float
                ) -> None:
        """What happens when the light model's emulated run ends at `end`: the light answer is
        final then, or the sample enters the uplink then."""
        self._window.on_generated(rec.light_conf, rec.light_ms)
        pending = Pending(rec, t_sched)
        if not rec.forwarded:
            self._finish(pending, "light", rec.light_pred, at=end)
            return
        self._window.on_forwarded()
        if not self._session.connected:
            self._finish(pending, "fallback", rec.light_pred, "disconnected", at=end)
            return
        sid = rec.sample_id
        timeout_at = end + self.spec.reply_timeout_ms / 1e3
        pending.timeout = self._timers.call_at(timeout_at, self._on_timeout, sid)
        self._pending[sid] = pending
        # The message's size does not depend on the deadline's or the hold's value (a float64
        # is always 9 bytes in msgpack), so the delivery time can be known before they are set.
        # The server must answer early enough for the reply to cross the downlink in time.
        payload = pixels.tobytes()
        nbytes = len(payload) + self._infer_overhead
        deliver_at = self._uplink.transmit(end, nbytes)
        rec.energy_radio_j += self._radio.transfer(deliver_at, up_bytes=nbytes)
        if deliver_at >= timeout_at:
            return  # the timeout answers it before the link could deliver it
        pending.due = deliver_at
        reply_by = timeout_at - self._downlink.allowance_s(RESULT_BYTES)
        msg = wire.Infer(sample_id=sid, dtype=pixels.dtype.name, shape=tuple(pixels.shape),
                         data=payload, deadline_ms=max((reply_by - deliver_at) * 1e3, 0.0),
                         hold_ms=self._hold_ms(deliver_at))
        self._send_now(wire.encode(msg), sid)

    def _hold_ms(self, deliver_at: float) -> float:
        return max(deliver_at - self._loop.time(), 0.0) * 1e3

    def _send_now(self, data: bytes, sid: int | None) -> None:
        """Hand a message to the socket now; it carries the rest of its emulated uplink time
        (`hold_ms`) and the server acts on it when the link delivers it. Sending at once
        instead of at the delivery time saves the device a wake-up per message (time slices
        per sample 1.8 -> 1.6 at 10 Hz, 6.9 -> 5.0 at 1 Hz); the socket's own time on loopback
        is tens of microseconds."""
        if not self._session.send_nowait(data, request=sid is not None) and sid is not None:
            self._fail(sid, "disconnected")

    def _on_result(self, res: wire.Result, nbytes: int) -> None:
        """A reply has reached the device's end of the socket. When the emulated downlink
        delivers it is known now, so the sample is answered now, as of that time, instead of
        waking up again to deliver it; a reply that would arrive after the reply timeout is
        late, and the timeout answers the sample as it would have."""
        pending = self._pending.get(res.sample_id)
        if pending is None:
            self.late_replies += 1
            self._control_j += self._radio.transfer(self._loop.time(), down_bytes=nbytes)
            return
        deliver_at = self._downlink.transmit(self._loop.time(), nbytes)
        if pending.timeout is not None and deliver_at >= pending.timeout.when():
            self.late_replies += 1
            self._control_j += self._radio.transfer(deliver_at, down_bytes=nbytes)
            return
        del self._pending[res.sample_id]
        if pending.timeout is not None:
            pending.timeout.cancel()
        rec = pending.rec
        rec.energy_radio_j += self._radio.transfer(deliver_at, down_bytes=nbytes)
        rec.queue_ms = res.queue_us / 1e3
        rec.compute_ms = res.compute_us / 1e3
        rec.batch_size = res.batch_size
        if _server_timed(res) and not self.spec.node:
            rec.reply_late_ms = reply_late_ms(pending.due, self._loop.time(), res)
        if res.status == wire.ResultStatus.OK:
            rec.heavy_model = res.model
            self._finish(pending, "heavy", res.prediction, at=deliver_at)
        elif res.status == wire.ResultStatus.REJECTED:
            self._finish(pending, "rejected", rec.light_pred, res.cause or "queue_full",
                         at=deliver_at)
        elif res.status == wire.ResultStatus.EXPIRED:
            self._finish(pending, "fallback", rec.light_pred, "expired", at=deliver_at)
        else:
            self._finish(pending, "fallback", rec.light_pred, "failed", at=deliver_at)

    def _on_timeout(self, sid: int) -> None:
        pending = self._pending.pop(sid, None)
        if pending is not None:
            self._finish(pending, "fallback", pending.rec.light_pred, "timeout")
            self._flush_if_due()

    def _fail(self, sid: int, cause: str) -> None:
        """The server cannot answer (no connection, or it refused the sample): the light
        answer is final now."""
        pending = self._pending.pop(sid, None)
        if pending is not None:
            if pending.timeout is not None:
                pending.timeout.cancel()
            self._finish(pending, "fallback", pending.rec.light_pred, cause)

    def _finish(self, pending: Pending, source: Source, prediction: int,
                cause: str = "", at: float | None = None) -> None:
        """The sample's final answer, given now or (`at`, loop time) when it is known ahead."""
        rec = pending.rec
        rec.source = source
        rec.cause = cause
        rec.final_pred = prediction
        rec.correct = prediction == rec.label
        rec.latency_ms = ((self._loop.time() if at is None else at) - pending.t_sched) * 1e3
        rec.slo_met = rec.latency_ms <= self.spec.slo_ms
        self._sources[source] += 1
        self._window.on_answered(source, rec.slo_met, already_missed=pending.slo_counted,
                                 latency_ms=rec.latency_ms)
        self._records.write(rec, self._loop.time())

    def _refused(self, exc: OSError) -> None:
        """The disk refused a record (the first time): stop generating and end the run with
        the error (the samples in flight are still answered; their rows cannot be written)."""
        log.error("%s; stopping", exc)
        self.stop()
        if self._arrivals_done is not None and not self._arrivals_done.done():
            self._arrivals_done.set_exception(exc)

    # --- the server session's news, control messages and reports ---------------------------

    def _on_welcome(self, welcome: wire.Welcome) -> None:
        """A (new) connection: the server's threshold holds, and the uplink starts empty."""
        self._apply_threshold(welcome.threshold, welcome.epoch, force=True)
        self._uplink.reset()

    def _on_lost(self) -> None:
        """The connection ended (or never started): no reply can come to a forwarded sample."""
        for sid in list(self._pending):
            self._fail(sid, "disconnected")
        self._flush_if_due()

    def _on_message(self, msg: wire.Message, nbytes: int) -> None:
        """A message from the server, as the session receives it."""
        if isinstance(msg, wire.Result):
            self._on_result(msg, nbytes)
        elif isinstance(msg, wire.Threshold):
            self._control_j += self._radio.transfer(self._loop.time(), down_bytes=nbytes)
            self._apply_threshold(msg.value, msg.epoch)
        elif isinstance(msg, wire.Error):
            code = error_name(msg.code)
            # Once per kind of error: a device over its budget gets one per sample.
            log.log(logging.DEBUG if code in self._refusals else logging.WARNING,
                    "%s: server error %s: %s", self.spec.device_id, msg.code, msg.reason)
            if msg.sample_id is not None and msg.sample_id in self._pending:
                self._refusals[code] = self._refusals.get(code, 0) + 1
                self._refusal = self._refusal or "".join(
                    c if c.isprintable() else "?" for c in f"{code}: {msg.reason}"[:240])
                self._fail(msg.sample_id, "error")
        self._flush_if_due()

    def _apply_threshold(self, value: float, epoch: int, force: bool = False) -> None:
        """A threshold from the server: within [0, 1], or `wire.decode` would have refused its
        message (the server clamps what its policy decides: `server.control.clamp_threshold`)."""
        if force or epoch > self.epoch:
            self.threshold = float(value)
            self.epoch = epoch

    def _on_report(self) -> None:
        """Reports travel the emulated uplink like samples: a cut link delays them too."""
        self._report_timer = self._loop.call_later(self.spec.report_interval_s, self._on_report)
        report = self._take_report()  # even unsent: the next report covers the next window
        size = len(wire.encode(report))
        deliver_at = self._uplink.transmit(self._loop.time(), size)
        self._control_j += self._radio.transfer(deliver_at, up_bytes=size)
        self._send_now(wire.encode(dataclasses.replace(report, hold_ms=self._hold_ms(deliver_at))),
                       None)

    async def _send_report(self) -> None:
        """The last report, sent directly as the device stops."""
        await self._session.send(wire.encode(self._take_report()))

    def _take_report(self) -> wire.Report:
        now = self._loop.time()
        slo_s = self.spec.slo_ms / 1e3
        for pending in self._pending.values():
            if not pending.slo_counted and now - pending.t_sched > slo_s:
                pending.slo_counted = True
                self._window.on_overdue()
        window_s, self._window_start = max(now - self._window_start, 1e-3), now
        return self._window.take(window_s, self.threshold, self.epoch)


def _link_trace(spec: LinkSpec) -> LinkTrace | None:
    return read_link_trace(spec.trace) if spec.trace else None


def _server_timed(res: wire.Result) -> bool:
    """A result whose queue and compute times are all the server spent on it after the uplink
    delivered it: answered, expired or refused at admission; not a refusal of the held
    uplink itself (answered on receipt) nor a failed model (its time is not reported). An IDN
    node's parents add emulated hops of their own, so devices of an IDN measure nothing."""
    return res.status in (wire.ResultStatus.OK, wire.ResultStatus.EXPIRED) or (
        res.status == wire.ResultStatus.REJECTED and res.cause != "link_backlog")


def reply_late_ms(due: float, replied: float, res: wire.Result) -> float:
    """How much later than the emulation intended the device holds the reply: the uplink
    meant the server to act at `due`, the server then spent its queue and compute time, and
    the device read the reply at `replied` (the downlink's emulated time starts there). Each
    is a difference on one clock, so it holds across hosts; what remains is the real transit
    both ways and how late the server's and the device's loops acted."""
    return (replied - due) * 1e3 - (res.queue_us + res.compute_us) / 1e3


def error_name(code: int) -> str:
    """A wire error code as the name summaries count it by (`bad_tensor`), or `code-N`."""
    try:
        return wire.ErrorCode(code).name.lower()
    except ValueError:
        return f"code-{int(code)}"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

