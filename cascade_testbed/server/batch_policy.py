"""When to cut the next batch (Triton's dynamic-batcher semantics). Pure: time is passed in.

A batch is cut as soon as `max_batch_size` requests wait, or when the oldest request has waited
`max_queue_delay_s`; otherwise the batcher sleeps until that moment or the next arrival.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cut:
    size: int


@dataclass(frozen=True, slots=True)
class WaitUntil:
    time: float


@dataclass(frozen=True, slots=True)
class Idle:
    pass


Decision = Cut | WaitUntil | Idle


@dataclass(slots=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float

    def decide(self, queued: int, oldest_arrival: float | None, now: float) -> Decision:
        if queued <= 0 or oldest_arrival is None:
            return Idle()
        if queued >= self.max_batch_size:
            return Cut(self.max_batch_size)
        release = oldest_arrival + self.max_queue_delay_s
        if now >= release:
            return Cut(queued)
        return WaitUntil(release)
