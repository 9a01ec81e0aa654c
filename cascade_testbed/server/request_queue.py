"""The server's bounded request queue, shared fairly among devices, with per-request
deadlines. Pure: time is passed in.

Batches are cut in round-robin order across devices (deficit round robin with a quantum of one
request: every sample costs the same), oldest first within a device, so a device with a long
queue gets a batch slot per round, not the batch. When the queue is full, the device holding
the most requests gives up its newest (longest queue drop), so a flooding device cannot fill
the queue and push every other device out. A heap of deadlines lets expired requests be
found and answered from a timer without scanning the queue.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True, eq=False)
class Request:
    """One queued sample. It is answered exactly once: `respond` is called with the outcome,
    or `send` with its encoded bytes."""

    device_id: str
    sample_id: int
    x: np.ndarray
    arrival: float
    deadline: float
    respond: Callable[..., Any]
    send: Callable[[bytes], Any] | None = None
    """Where `respond`'s message goes, for a result already encoded (a device socket's
    `Outbox.send`): the batcher packs a batch's results without building `Result`s. None: only
    `respond`. Whoever wraps `respond` (to relabel a result, say) must drop this."""
    seq: int = field(default=-1)
    task: str = ""
    """The task the sample belongs to (an inference delivery network serves it with that
    task's models); "" the dataset's own labels."""


class QueueFull(Exception):
    """Admission refused: the queue is at its bound."""

    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"queue full ({queued}/{limit})")
        self.queued = queued
        self.limit = limit


class RequestQueue:
    """Invariant: every queued request is in `_all` (arrival order) and in its device's
    queue in `_by_device` exactly once; a device is in `_ring` while it has requests queued."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1 (got {max_size})")
        self.max_size = max_size
        self._all: dict[int, Request] = {}
        self._by_device: dict[str, dict[int, Request]] = {}
        self._ring: deque[str] = deque()
        """Devices with queued requests; the first is served next."""
        self._deadlines: list[tuple[float, int]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._all)

    def queued_by(self, device_id: str) -> int:
        return len(self._by_device.get(device_id, ()))

    def push(self, req: Request) -> Request | None:
        """Queue `req`. When the queue is full, the newest request of the device holding the
        most leaves to make room and is returned (the caller answers it); if `req`'s own
        device holds as many, `QueueFull` is raised instead."""
        evicted = None
        if len(self._all) >= self.max_size:
            longest = max(self._by_device, key=lambda d: len(self._by_device[d]))
            if len(self._by_device[longest]) <= self.queued_by(req.device_id) + 1:
                raise QueueFull(len(self._all), self.max_size)
            evicted = self._remove(next(reversed(self._by_device[longest].values())))
        req.seq = next(self._seq)
        self._all[req.seq] = req
        mine = self._by_device.get(req.device_id)
        if mine is None:
            mine = self._by_device[req.device_id] = {}
            self._ring.append(req.device_id)
        mine[req.seq] = req
        heapq.heappush(self._deadlines, (req.deadline, req.seq))
        return evicted

    def oldest_arrival(self) -> float | None:
        for req in self._all.values():
            return req.arrival
        return None

    def peek(self, n: int) -> list[Request]:
        """The next n requests in batch order (what `pop(n)` would return), left queued."""
        out: list[Request] = []
        cursors = [iter(self._by_device[d].values()) for d in self._ring]
        while cursors and len(out) < n:
            alive = []
            for cursor in cursors:
                req = next(cursor, None)
                if req is None:
                    continue
                out.append(req)
                alive.append(cursor)
                if len(out) == n:
                    break
            cursors = alive
        return out

    def pop(self, n: int) -> list[Request]:
        """Remove and return the next n requests (fewer if the queue is shorter): one per
        device per round, from where the last pop stopped."""
        out: list[Request] = []
        ring, by_device = self._ring, self._by_device
        while len(out) < n and ring:
            device = ring[0]
            mine = by_device[device]
            seq = next(iter(mine))
            out.append(mine.pop(seq))
            del self._all[seq]
            if mine:
                ring.rotate(-1)
            else:
                ring.popleft()
                del by_device[device]
        self._compact()
        return out

    def expire(self, now: float) -> list[Request]:
        """Remove and return every request whose deadline is <= now."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._deadlines)
            req = self._all.get(seq)
            if req is not None:
                out.append(self._remove(req))
        return out

    def next_deadline(self) -> float | None:
        """Earliest deadline still queued (stale heap entries of popped requests are dropped)."""
        while self._deadlines and self._deadlines[0][1] not in self._all:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def drain(self) -> list[Request]:
        """Remove everything (shutdown)."""
        out = list(self._all.values())
        self._all.clear()
        self._by_device.clear()
        self._ring.clear()
        self._deadlines.clear()
        return out

    def _remove(self, req: Request) -> Request:
        """Take one queued request out of turn (expired, or evicted for room)."""
        del self._all[req.seq]
        mine = self._by_device[req.device_id]
        del mine[req.seq]
        if not mine:
            del self._by_device[req.device_id]
            self._ring.remove(req.device_id)
        return req

    def _compact(self) -> None:
        # Popped requests leave stale heap entries; rebuild when they dominate, so the heap
        # stays O(queue) instead of O(all requests ever seen).
        if len(self._deadlines) > 4 * len(self._all) + 64:
            self._deadlines = [(d, s) for d, s in self._deadlines if s in self._all]
            heapq.heapify(self._deadlines)
