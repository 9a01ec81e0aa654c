"""Replicas of the emulated accelerator: how many a server provisions over time, what that
costs, and the autoscaling rule every system shares. Pure: time and load are passed in.

Cost is what a system provisions, not what it uses: every replica counts from the moment it
is provisioned until it is released, busy or idle (replica-seconds, the GPU-seconds a cloud
bill counts). A replica being released finishes the batch it runs first, and counts until
then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class ReplicaLedger:
    """Replica-seconds provisioned since `since`, with the count changing over time."""

    active: int
    since: float
    seconds: float = 0.0
    peak: int = 0
    draining: dict[int, float] = field(default_factory=dict)
    """Released replicas still finishing a batch: replica index -> when that batch ends."""

    def __post_init__(self) -> None:
        self.peak = max(self.peak, self.active)

    def set(self, n: int, now: float, finishing: dict[int, float] | None = None) -> None:
        """`n` replicas (indices 0..n-1) provisioned from `now` on; `finishing` says when the
        running batch of each replica ends: a released one costs until then."""
        self._advance(now)
        self.active = max(n, 0)
        self.peak = max(self.peak, self.active)
        for replica in [r for r in self.draining if r < self.active]:
            del self.draining[replica]  # provisioned again: counted as active
        for replica, until in (finishing or {}).items():
            if replica >= self.active and until > now:
                self.draining[replica] = until

    def total(self, now: float) -> float:
        """Replica-seconds from the start to `now`."""
        self._advance(now)
        return self.seconds

    def _advance(self, now: float) -> None:
        span = max(now - self.since, 0.0)
        self.seconds += self.active * span
        for replica, until in list(self.draining.items()):
            self.seconds += max(min(until, now) - self.since, 0.0)
            if until <= now:
                del self.draining[replica]
        self.since = max(now, self.since)


@dataclass(frozen=True, slots=True)
class AutoscaleRule:
    """Provision enough replicas for the load at a target utilisation: scale up at once,
    scale down only after the lower count has sufficed for `down_after_s` (a load that dips
    for a moment does not give back a replica it needs again a second later)."""

    min_replicas: int = 1
    max_replicas: int = 8
    utilization: float = 0.7
    """Load per replica as a share of its capacity at the largest batch."""
    down_after_s: float = 5.0
    drain_s: float = 1.0
    """A backlog counts as the load that would drain it in this long."""

    def wanted(self, load_sps: float, queue_len: int, capacity_sps: float) -> int:
        """Replicas this load needs now."""
        if capacity_sps <= 0 or math.isinf(capacity_sps):
            return self.min_replicas
        demand = max(load_sps, 0.0) + max(queue_len, 0) / self.drain_s
        need = math.ceil(demand / (capacity_sps * self.utilization) - 1e-9)
        return min(max(need, self.min_replicas), self.max_replicas)


@dataclass(slots=True)
class Autoscaler:
    rule: AutoscaleRule
    _low_since: float | None = None
    _low_peak: int = 0
    """The most replicas wanted since the count first looked too high."""

    def decide(self, now: float, current: int, wanted: int) -> int:
        """The count to provision from `now` on."""
        if wanted >= current:
            self._low_since = None
            return wanted
        if self._low_since is None:
            self._low_since, self._low_peak = now, wanted
        self._low_peak = max(self._low_peak, wanted)
        if now - self._low_since >= self.rule.down_after_s:
            self._low_since = None
            return self._low_peak
        return current
