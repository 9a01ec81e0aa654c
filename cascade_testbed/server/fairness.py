"""Per-device budgets: a device's requests are admitted within what it declared, and one
socket's frames are read at a bounded pace. Pure: time is passed in.

The server is shared by many tenants; without these a device holding the token could send
thousands of requests per second and take the queue, the batches and the event loop from every
other device (docs/security.md, "Fair sharing"). The queue's own share rule (longest queue
drops first, round robin across devices: `server.request_queue`) covers the saturated case;
this module covers the rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cascade_testbed.common.config import FairnessConfig


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second up to `depth`; a request takes one. Starts full, so a device
    may begin with a burst."""

    rate: float
    depth: float
    tokens: float = -1.0
    at: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.depth < 1:
            raise ValueError(f"a token bucket needs rate > 0 and depth >= 1 (got {self})")
        if self.tokens < 0:
            self.tokens = self.depth

    def _refill(self, now: float) -> None:
        if self.at is not None and now > self.at:
            self.tokens = min(self.depth, self.tokens + (now - self.at) * self.rate)
        if self.at is None or now > self.at:
            self.at = now

    def take(self, now: float) -> bool:
        """One token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Take a token, waiting for it if need be: how long the caller must wait before the
        thing it pays for (0: at once). The debt is booked now, so the waits of a burst add
        up to its length at `rate`."""
        self._refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def admitted_rate(cfg: FairnessConfig, declared_sps: float) -> float:
    """Requests per second a device may send: its declared rate (or the default for one that
    declares none) with headroom, at most what one connection may send in frames."""
    base = declared_sps if declared_sps > 0 else cfg.undeclared_rate_sps
    return min(base * cfg.headroom, cfg.max_frames_per_s)


def request_bucket(cfg: FairnessConfig, declared_sps: float) -> TokenBucket:
    rate = admitted_rate(cfg, declared_sps)
    return TokenBucket(rate, max(float(cfg.min_burst), rate * cfg.burst_s))


def frame_bucket(cfg: FairnessConfig) -> TokenBucket:
    """One connection's frames, any kind, valid or not: a second's worth of burst."""
    return TokenBucket(cfg.max_frames_per_s, cfg.max_frames_per_s)


MAX_TRACKED = 4096
"""Devices counted by name in `RateLimits.limited`; the rest together under `OTHERS` (ids
churned by one token holder must not grow the server's memory)."""
OTHERS = "other-devices"


@dataclass
class RateLimits:
    """The request budget of each connected device, and who went over it."""

    cfg: FairnessConfig
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    limited: dict[str, int] = field(default_factory=dict)
    """Requests refused per device, since the server started (devices that left included)."""

    def join(self, device_id: str, declared_sps: float) -> None:
        self._buckets[device_id] = request_bucket(self.cfg, declared_sps)

    def leave(self, device_id: str) -> None:
        self._buckets.pop(device_id, None)

    def admit(self, device_id: str, now: float) -> bool:
        """May this device queue one more request now? A device not joined (the HTTP
        endpoint's callers) has no budget here: the queue's share rule still applies."""
        if not self.cfg.enabled:
            return True
        bucket = self._buckets.get(device_id)
        if bucket is None or bucket.take(now):
            return True
        key = device_id if device_id in self.limited or len(self.limited) < MAX_TRACKED \
            else OTHERS
        self.limited[key] = self.limited.get(key, 0) + 1
        return False

    def rate_of(self, device_id: str) -> float | None:
        bucket = self._buckets.get(device_id)
        return bucket.rate if bucket else None
