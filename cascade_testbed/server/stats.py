"""The server's counters: Prometheus metrics for /metrics and window totals for the scheduler.

One sink object that ingress and batcher call, built per app (no global registry), so several
servers can live in one test process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cascade_testbed.server.scheduling.base import ServerWindow

_SECONDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(slots=True)
class _Window:
    arrivals: int = 0
    completed: int = 0
    rejected: int = 0
    expired: int = 0
    queue_s_sum: float = 0.0
    batches: int = 0
    batch_sum: int = 0
    busy_s: float = 0.0
    model_s: float = 0.0
    model_cpu_s: float = 0.0
    """Wall and CPU time inside the model's worker thread: with the process's CPU, what the
    server spends outside the model, and how much of the time the model runs at all
    (scripts/bench_server.py)."""


class BatchHistogram(Collector):
    """A Prometheus histogram observed a batch of values at a time.

    `Histogram.observe` takes a lock per value: per request that was ~0.5 us of the server's
    time. This one counts a whole batch with one `searchsorted` and is exported as the same
    histogram (same name, buckets, `_count` and `_sum`) through the client's collector
    interface. Used from the event loop's thread only, as the scrape is.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        """Per bucket, not cumulative; the last one is +Inf."""
        self._sum = 0.0
        registry.register(self)

    def observe(self, values: Sequence[float] | np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        # A value v falls in the first bucket whose bound is >= v, as in `Histogram.observe`.
        self._counts += np.bincount(np.searchsorted(self._bounds, v, side="left"),
                                    minlength=len(self._counts))
        self._sum += float(v.sum())

    def collect(self) -> Iterator[Metric]:
        cumulative = np.cumsum(self._counts).tolist()
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self.name, self.documentation,
                                    buckets=list(zip(les, cumulative, strict=True)),
                                    sum_value=self._sum)


class PerDeviceCounter(Collector):
    """A counter labelled by device read from a dict owned elsewhere (`RateLimits.limited`,
    whose keys are validated ids, at most a bounded number of them): nothing to update per
    request, and the series survive the device's leaving, as the summary's count does."""

    def __init__(self, name: str, documentation: str, counts: Callable[[], Mapping[str, int]],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self._counts = name, documentation, counts
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["device"])
        for device, n in sorted(self._counts().items()):
            family.add_metric([device], n)
        yield family


class ServerStats:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` is clutter here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("testbed_server_requests", "Requests by outcome.",
                                ["outcome"], registry=r)
        self.rejected = Counter("testbed_server_rejected", "Requests shed, by reason.",
                                ["reason"], registry=r)
        self.protocol_errors = Counter("testbed_server_protocol_errors",
                                       "Messages refused, by error code.", ["code"], registry=r)
        self.inferences = Counter("testbed_server_inferences", "Samples run by the heavy model.",
                                  registry=r)
        self.batches = Counter("testbed_server_batch_executions", "Heavy-model batches.",
                               registry=r)
        self.overruns = Counter("testbed_server_compute_overruns",
                                "Batches whose real compute exceeded the emulated profile.",
                                registry=r)
        self.batch_size = Histogram("testbed_server_batch_size", "Samples per batch.",
                                    buckets=_BATCH, registry=r)
        self.queue_seconds = BatchHistogram("testbed_server_queue_seconds",
                                            "Time from receipt to batch start.", _SECONDS, r)
        self.compute_seconds = Histogram("testbed_server_compute_seconds",
                                         "Batch compute time, padded.", buckets=_SECONDS,
                                         registry=r)
        self.pending = Gauge("testbed_server_pending_requests", "Requests queued now.",
                             registry=r)
        self.queued = 0
        """Requests admitted and not yet taken into a batch or shed: a plain int per request,
        read by the gauge at scrape time (a locked gauge update per request cost ~1 us)."""
        self.pending.set_function(lambda: self.queued)
        self.devices = Gauge("testbed_server_devices_connected", "Connected devices.",
                             registry=r)
        self.threshold = Gauge("testbed_scheduler_threshold", "Threshold sent to each device.",
                               ["device"], registry=r)
        self.slow_clients = Counter("testbed_server_slow_client_aborts",
                                    "Device connections aborted for not reading replies.",
                                    registry=r)
        self.heavy_model = Gauge("testbed_server_heavy_model",
                                 "1 for the heavy model running now.", ["model"], registry=r)
        self.threshold_updates = Counter("testbed_scheduler_threshold_updates",
                                         "Threshold messages sent.", registry=r)
        self.replicas = Gauge("testbed_server_replicas",
                              "Replicas of the emulated accelerator provisioned now.",
                              registry=r)
        self.replicas.set(1)
        self.paced_seconds = Counter(
            "testbed_server_paced_seconds", "Time device sockets were not read because they "
            "sent frames faster than server.fairness.max_frames_per_s.", registry=r)
        self.totals = _Window()
        self.shed: dict[str, int] = {}
        """Requests not run, by cause (queue_full, admission, deadline, shutdown)."""
        self._window = _Window()
        self._window_start: float | None = None

    # --- events ---------------------------------------------------------------------------

    def on_admitted(self) -> None:
        self._window.arrivals += 1
        self.totals.arrivals += 1
        self.queued += 1

    def on_rejected(self, reason: str) -> None:
        self.requests.labels("rejected").inc()
        self.rejected.labels(reason).inc()
        self.shed[reason] = self.shed.get(reason, 0) + 1
        for w in (self._window, self.totals):
            w.arrivals += 1
            w.rejected += 1

    def on_evicted(self) -> None:
        """A queued request left to make room for another device's (counted as arrived when
        it was admitted)."""
        self.requests.labels("rejected").inc()
        self.rejected.labels("queue_full").inc()
        self.shed["queue_full"] = self.shed.get("queue_full", 0) + 1
        self._window.rejected += 1
        self.totals.rejected += 1

    def on_expired(self, n: int) -> None:
        self.requests.labels("expired").inc(n)
        self.rejected.labels("deadline").inc(n)
        self.shed["deadline"] = self.shed.get("deadline", 0) + n
        self._window.expired += n
        self.totals.expired += n

    def on_failed(self, n: int) -> None:
        self.requests.labels("failed").inc(n)

    def on_replicas(self, n: int) -> None:
        self.replicas.set(n)

    def on_model_switch(self, name: str) -> None:
        self.heavy_model.clear()
        self.heavy_model.labels(name).set(1)

    def on_device_left(self, device_id: str) -> None:
        """Its series leave /metrics with it: 3,000 joins must not mean 3,000 series."""
        with contextlib.suppress(KeyError):
            self.threshold.remove(device_id)

    def watch_rate_limited(self, counts: Callable[[], Mapping[str, int]]) -> None:
        PerDeviceCounter("testbed_server_rate_limited", "Requests refused (rate_limited) per "
                         "device: over its declared rate with headroom.", counts, self.registry)

    def on_paced(self, seconds: float) -> None:
        self.paced_seconds.inc(seconds)

    def on_slow_client(self) -> None:
        self.slow_clients.inc()

    def on_protocol_error(self, code: str) -> None:
        self.protocol_errors.labels(code).inc()

    def on_batch(self, queue_s: Sequence[float] | np.ndarray, padded_s: float, overrun: bool, *,
                 completed: int | None = None, size: int | None = None,
                 model_s: float = 0.0, model_cpu_s: float = 0.0) -> None:
        """A batch ran. A stage of an early-exit model runs `size` samples, of which
        `completed` exit; `queue_s` has the queueing of those that started with it."""
        n = len(queue_s) if completed is None else completed
        b = len(queue_s) if size is None else size
        self.requests.labels("ok").inc(n)
        self.inferences.inc(b)
        self.batches.inc()
        self.overruns.inc(overrun)
        self.batch_size.observe(b)
        self.compute_seconds.observe(padded_s)
        self.queue_seconds.observe(queue_s)
        queued_s = float(np.sum(queue_s))
        for w in (self._window, self.totals):
            w.completed += n
            w.batches += 1
            w.batch_sum += b
            w.queue_s_sum += queued_s
            w.busy_s += padded_s
            w.model_s += model_s
            w.model_cpu_s += model_cpu_s

    # --- windows --------------------------------------------------------------------------

    def take_window(self, now: float, queue_len: int, max_queue_size: int,
                    max_batch_size: int, replicas: int = 1) -> ServerWindow:
        """The window since the previous call; counters start again from zero. Busy time is
        a share of what `replicas` replicas could have run."""
        start = self._window_start if self._window_start is not None else now
        self._window_start = now
        w, self._window = self._window, _Window()
        span = max(now - start, 1e-9)
        return ServerWindow(
            window_s=now - start, arrivals=w.arrivals, completed=w.completed,
            rejected=w.rejected, expired=w.expired, queue_len=queue_len,
            max_queue_size=max_queue_size,
            mean_queue_ms=1e3 * w.queue_s_sum / w.completed if w.completed else 0.0,
            mean_batch_size=w.batch_sum / w.batches if w.batches else 0.0,
            busy_fraction=min(w.busy_s / (span * max(replicas, 1)), 1.0),
            max_batch_size=max_batch_size, replicas=replicas)
