"""Who may hold a connection to the server: a cap on all connections, on those of one peer
address, and on those that have not yet sent a whole request (slowloris). Pure bookkeeping
with the time passed in; `server.guard` applies it to real sockets.

A connection that has not sent its first request's headers within `header_timeout_s` is
closed. When the connections still waiting for their headers reach `max_pending`, the one that
has waited longest is closed to make room: an attacker who holds slots by trickling bytes
loses them to anyone who sends a request at normal speed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Conn = TypeVar("Conn", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 4096
    max_per_peer: int = 2048
    """Devices of one testbed all come from 127.0.0.1: this bounds a peer, not a device."""
    max_pending: int = 512
    """Connections that have not sent a whole request yet (headers, or a WebSocket hello)."""
    header_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not (1 <= self.max_pending <= self.max_connections
                and 1 <= self.max_per_peer <= self.max_connections
                and self.header_timeout_s > 0):
            raise ValueError(f"inconsistent connection limits {self}")


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str


@dataclass(frozen=True, slots=True)
class Admit(Generic[Conn]):
    evict: Conn | None = None
    """A pending connection to close first to make room (the one waiting longest)."""


@dataclass
class ConnectionLimits(Generic[Conn]):
    limits: Limits = field(default_factory=Limits)
    _peer_of: dict[Conn, str] = field(default_factory=dict)
    _per_peer: dict[str, int] = field(default_factory=dict)
    _pending: OrderedDict[Conn, float] = field(default_factory=OrderedDict)
    """Pending connections by arrival time, oldest first."""
    refused: dict[str, int] = field(default_factory=dict)
    evicted: int = 0
    timed_out: int = 0

    def open(self, conn: Conn, peer: str, now: float) -> Admit[Conn] | Refuse:
        """A connection was accepted from `peer`: keep it (maybe evicting one), or refuse."""
        lim = self.limits
        if len(self._peer_of) >= lim.max_connections:
            return self._refuse("too many connections")
        if self._per_peer.get(peer, 0) >= lim.max_per_peer:
            return self._refuse("too many connections from this address")
        evict = None
        if len(self._pending) >= lim.max_pending:
            evict = next(iter(self._pending))
            self.close(evict)
            self.evicted += 1
        self._peer_of[conn] = peer
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._pending[conn] = now
        return Admit(evict)

    def started(self, conn: Conn) -> None:
        """`conn` sent a whole request: it no longer counts as pending."""
        self._pending.pop(conn, None)

    def close(self, conn: Conn) -> None:
        peer = self._peer_of.pop(conn, None)
        self._pending.pop(conn, None)
        if peer is not None:
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]

    def overdue(self, now: float) -> list[Conn]:
        """Pending connections past the header timeout, to be closed (and forgotten here)."""
        cutoff = now - self.limits.header_timeout_s
        late = []
        for conn, since in self._pending.items():
            if since > cutoff:
                break
            late.append(conn)
        for conn in late:
            self.close(conn)
        self.timed_out += len(late)
        return late

    def next_deadline(self) -> float | None:
        """When the oldest pending connection times out."""
        for since in self._pending.values():
            return since + self.limits.header_timeout_s
        return None

    @property
    def open_count(self) -> int:
        return len(self._peer_of)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def _refuse(self, reason: str) -> Refuse:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return Refuse(reason)
