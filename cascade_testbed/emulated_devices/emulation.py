"""Compute and link emulation as pure arithmetic over times passed in.

The real model always runs; `ComputeProfile` says how long the emulated device should take, and
the device pads up to that (counting an overrun when the host was slower than the target).
`Link` turns a message's send time and size into its delivery time on a FIFO link with
propagation delay, jitter, a serialisation rate (or a Mahimahi trace's delivery opportunities,
`emulated_devices.link_trace`), packet loss and outages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from cascade_testbed.common.config import LinkSpec
from cascade_testbed.common.link_trace import LinkTrace
from cascade_testbed.emulated_devices.link_trace import TraceCapacity, TraceQueue

MAX_RESENDS = 8
"""After this many losses in a row TCP would give up on the connection; we stop doubling."""


@dataclass(frozen=True, slots=True)
class ComputeProfile:
    median_ms: float
    jitter: float

    def sample_s(self, rng: np.random.Generator) -> float:
        """One target latency in seconds: log-normal around the median."""
        factor = math.exp(rng.normal(0.0, self.jitter)) if self.jitter > 0 else 1.0
        return self.median_ms * factor / 1e3


@dataclass(frozen=True, slots=True)
class Padding:
    """When the padded computation ends, and whether the real one overran its target."""

    end: float
    overrun: bool


def pad(start: float, real_s: float, target_s: float) -> Padding:
    return Padding(end=start + max(real_s, target_s), overrun=real_s > target_s)


@dataclass(frozen=True, slots=True)
class Impairment:
    """During [start, end) of the device's clock the link loses packets with probability
    `loss`; `loss` >= 1 is a cut: nothing passes until `end`."""

    start: float
    end: float
    loss: float


class Link:
    """One direction of a link. Messages leave in order: a message cannot start serialising
    before the previous one has, and cannot be delivered before it (TCP is FIFO, so a lost
    or held-back message delays every message behind it). With a `trace`, the trace's
    delivery opportunities replace `bandwidth_mbps`; trace time 0 is `origin` (set_origin)."""

    __slots__ = ("_free_at", "_impairments", "_last_delivery", "_origin", "_rng", "_spec",
                 "_trace")

    def __init__(self, spec: LinkSpec, rng: np.random.Generator,
                 impairments: Sequence[Impairment] = (), trace: LinkTrace | None = None
                 ) -> None:
        self._spec = spec
        self._rng = rng
        self._free_at = 0.0
        self._last_delivery = 0.0
        self._impairments = tuple(sorted(impairments, key=lambda w: w.start))
        self._trace = TraceQueue(TraceCapacity(trace)) if trace is not None else None
        self._origin = 0.0

    @property
    def trace_phase(self) -> str:
        """The spec's `trace_phase` ("spread" or "aligned")."""
        return self._spec.trace_phase

    def set_origin(self, origin: float, phase: float = 0.0) -> None:
        """`origin`: the run's start on `transmit`'s clock; the trace is then `phase` (a
        fraction of its period) along. With phase 0, every device of a tier sees the same
        capacity at the same run time."""
        period_s = self._trace.period_ms / 1e3 if self._trace is not None else 0.0
        self._origin = origin - phase * period_s

    def impair(self, impairments: Sequence[Impairment]) -> None:
        self._impairments = tuple(sorted(impairments, key=lambda w: w.start))

    def transmit(self, now: float, nbytes: int) -> float:
        """Delivery time of `nbytes` handed to the link at `now`."""
        queued = start = max(now, self._free_at)
        loss = self._spec.loss
        for w in self._impairments:  # sorted: a cut that ends inside the next window moves on
            if w.start <= start < w.end:
                if w.loss >= 1:
                    start = w.end
                else:
                    loss = 1 - (1 - loss) * (1 - w.loss)
        if self._trace is None:
            self._free_at = start + nbytes * 8 / (self._spec.bandwidth_mbps * 1e6)
        else:  # the trace's queue is FIFO itself: it needs when the message came, not `start`
            arrive = start if start > queued else now
            self._free_at = self._origin + self._trace.depart(
                (arrive - self._origin) * 1e3, nbytes) / 1e3
        jitter = self._rng.normal(0.0, self._spec.jitter_ms) if self._spec.jitter_ms else 0.0
        delay = max(0.0, self._spec.delay_ms + jitter) / 1e3
        self._last_delivery = max(self._free_at + delay + self._resend_delay(loss),
                                  self._last_delivery)
        return self._last_delivery

    def allowance_s(self, nbytes: int) -> float:
        """A message of `nbytes` on an idle link arrives within this time unless it is lost:
        delay, three standard deviations of jitter, serialisation."""
        spec = self._spec
        if self._trace is not None:  # at the trace's mean rate
            return (spec.delay_ms + 3 * spec.jitter_ms + self._trace.allowance_ms(nbytes)) / 1e3
        return (spec.delay_ms + 3 * spec.jitter_ms) / 1e3 + nbytes * 8 / (spec.bandwidth_mbps
                                                                          * 1e6)

    def _resend_delay(self, loss: float) -> float:
        """TCP resends a lost segment after the RTO and doubles the RTO each time it is lost
        again (exponential backoff)."""
        if loss <= 0:
            return 0.0
        extra, rto = 0.0, self._spec.rto_ms / 1e3
        for _ in range(MAX_RESENDS):
            if self._rng.random() >= loss:
                break
            extra += rto
            rto *= 2
        return extra

    def reset(self) -> None:
        """A new connection starts with an empty link."""
        self._free_at = 0.0
        self._last_delivery = 0.0
        if self._trace is not None:
            self._trace.reset()


GOLDEN: Final = (5 ** 0.5 - 1) / 2


def trace_phase(index: int, how: str) -> float:
    """Where in its link traces device `index` starts, as a fraction of the period: with
    "spread", the golden-ratio sequence, which places any number of devices (of a tier, or
    of the run) nearly evenly around the trace; with "aligned", 0 for every device."""
    return (index * GOLDEN) % 1.0 if how == "spread" else 0.0
