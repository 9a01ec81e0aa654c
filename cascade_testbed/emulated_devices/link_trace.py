"""A link whose capacity follows a Mahimahi trace (`common.link_trace`), as mm-link shapes it:
FIFO, byte accounting, opportunities with nothing queued are wasted. Pure arithmetic over times
passed in: a message's departure is computed from the cumulative opportunity count (bisect),
never by a timer per opportunity, so a device wakes up no more often on a trace than on a
constant-rate link.

Times are milliseconds of trace time (0 = the trace's start). An opportunity at time t serves
messages that arrived strictly before t (mm-link dequeues the opportunities that are due before
it enqueues a packet arriving in the same millisecond); a message leaves when the opportunity
carrying its last byte occurs. A message may start in the opportunity its predecessor finished
in, using the bytes left there, if it was already queued then.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate

from cascade_testbed.common.link_trace import PACKET_BYTES, LinkTrace


class TraceCapacity:
    """The opportunities of a trace repeated forever: how many occur by a time, and when the
    k-th occurs."""

    __slots__ = ("_cum", "_n", "_period", "_times")

    def __init__(self, trace: LinkTrace) -> None:
        # Compact arrays that bisect reads directly: 8 bytes an entry (a list of ints takes
        # ~36), ~1 us a lookup (numpy's scalar searchsorted took ~20).
        self._times = array("q", trace.times_ms)
        self._cum = array("q", accumulate(trace.counts))
        """Opportunities at times <= times[i], within one period."""
        self._n = self._cum[-1]
        self._period = int(trace.period_ms)

    @property
    def per_period(self) -> int:
        return self._n

    @property
    def period_ms(self) -> int:
        return self._period

    def count_until(self, t_ms: float) -> int:
        """Opportunities at times <= `t_ms` (>= 0), counted from the trace's start."""
        k, r = divmod(t_ms, self._period)
        i = bisect_right(self._times, r)
        return int(k) * self._n + (self._cum[i - 1] if i else 0)

    def time_of(self, k: int) -> int:
        """When the `k`-th opportunity (1-based) occurs."""
        wraps, j = divmod(k - 1, self._n)
        return wraps * self._period + self._times[bisect_left(self._cum, j + 1)]


class TraceQueue:
    """The FIFO of one direction: which opportunity the last message ended in, and the bytes
    it left there."""

    __slots__ = ("_cap", "_last", "_left")

    def __init__(self, capacity: TraceCapacity) -> None:
        self._cap = capacity
        self._last = 0
        """The opportunity (1-based) carrying the previous message's last byte; 0: none."""
        self._left = 0
        """Bytes of that opportunity the previous message did not use."""

    @property
    def period_ms(self) -> int:
        return self._cap.period_ms

    def depart(self, arrive_ms: float, nbytes: int) -> float:
        """When a message of `nbytes` handed to the link at `arrive_ms` has left it."""
        need = max(int(nbytes), 1)
        cap = self._cap
        if self._left and cap.time_of(self._last) > arrive_ms:
            # Queued before the previous message's last opportunity occurred: share it.
            if need <= self._left:
                self._left -= need
                return float(cap.time_of(self._last))
            need -= self._left
        first = max(self._last + 1, cap.count_until(max(arrive_ms, 0.0)) + 1)
        used = math.ceil(need / PACKET_BYTES)
        self._last = first + used - 1
        self._left = used * PACKET_BYTES - need
        return float(cap.time_of(self._last))

    def allowance_ms(self, nbytes: int) -> float:
        """Time for `nbytes` at the trace's mean rate (an idle link's typical wait)."""
        return math.ceil(max(nbytes, 1) / PACKET_BYTES) * self._cap.period_ms / \
            self._cap.per_period

    def reset(self) -> None:
        self._last = 0
        self._left = 0
