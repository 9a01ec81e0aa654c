"""The server's bounded request queue with per-request deadlines. Pure: time is passed in.

FIFO order for batching, plus a heap of deadlines so that expired requests can be found and
answered from a timer without scanning the queue.
"""

from __future__ import annotations

import heapq
import itertools
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
    """Invariant: every request is in `_fifo` until popped or expired, exactly once."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1 (got {max_size})")
        self.max_size = max_size
        self._fifo: dict[int, Request] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._fifo)

    def push(self, req: Request) -> None:
        if len(self._fifo) >= self.max_size:
            raise QueueFull(len(self._fifo), self.max_size)
        req.seq = next(self._seq)
        self._fifo[req.seq] = req
        heapq.heappush(self._deadlines, (req.deadline, req.seq))

    def oldest_arrival(self) -> float | None:
        for req in self._fifo.values():
            return req.arrival
        return None

    def peek(self, n: int) -> list[Request]:
        """The n oldest requests, left in the queue."""
        return list(itertools.islice(self._fifo.values(), n))

    def pop(self, n: int) -> list[Request]:
        """Remove and return the n oldest requests (fewer if the queue is shorter)."""
        out = []
        for seq in itertools.islice(self._fifo, n):
            out.append(self._fifo[seq])
        for req in out:
            del self._fifo[req.seq]
        self._compact()
        return out

    def expire(self, now: float) -> list[Request]:
        """Remove and return every request whose deadline is <= now."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, seq = heapq.heappop(self._deadlines)
            req = self._fifo.pop(seq, None)
            if req is not None:
                out.append(req)
        return out

    def next_deadline(self) -> float | None:
        """Earliest deadline still queued (stale heap entries of popped requests are dropped)."""
        while self._deadlines and self._deadlines[0][1] not in self._fifo:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def drain(self) -> list[Request]:
        """Remove everything (shutdown)."""
        out = list(self._fifo.values())
        self._fifo.clear()
        self._deadlines.clear()
        return out

    def _compact(self) -> None:
        # Popped requests leave stale heap entries; rebuild when they dominate, so the heap
        # stays O(queue) instead of O(all requests ever seen).
        if len(self._deadlines) > 4 * len(self._fifo) + 64:
            self._deadlines = [(d, s) for d, s in self._deadlines if s in self._fifo]
            heapq.heapify(self._deadlines)
