"""What every batcher does whatever its batching rule: admit requests into the queue, answer
those whose deadline passes there, sleep until there is work, cut batches for one model thread,
and answer what is still queued at shutdown.

The plain `Batcher` and the early-exit one each own a shell and only decide and run their
batches, so neither depends on the other's insides. Deadlines are enforced by one timer armed
at the earliest queued deadline, so an expired request is answered when its deadline passes,
not when a batch slot frees (Triton issue #7512).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from cascade_testbed.common import protocol as wire
from cascade_testbed.server.admission import Admission, AdmissionRefused
from cascade_testbed.server.batch_policy import BatchPolicy, Idle, WaitUntil
from cascade_testbed.server.model_thread import ModelThread
from cascade_testbed.server.request_queue import QueueFull, Request, RequestQueue
from cascade_testbed.server.stats import ServerStats

D = TypeVar("D")

UNMEASURED_PER_SAMPLE_S = 1e-3
"""Cost per sample a batch estimate assumes (without a profile) until one is measured."""


class Capacity(Protocol):
    """What deadline-aware admission asks of a batcher to estimate when a request finishes."""

    @property
    def active(self) -> int:
        """Replicas provisioned now."""

    def free_at(self) -> float:
        """When the first provisioned replica is free."""

    def batch_s(self, size: int) -> float:
        """Expected duration of a batch of `size`."""


class BatchShell:
    def __init__(self, queue: RequestQueue, policy: BatchPolicy, stats: ServerStats,
                 admission: Admission, capacity: Capacity) -> None:
        self.queue = queue
        self.policy = policy
        """Its `max_batch_size` is the full batch of the admission estimate."""
        self.stats = stats
        self.admission = admission
        self.capacity = capacity
        self.loop = asyncio.get_running_loop()
        self.model_thread = ModelThread(self.loop)
        """Where the owner runs its batches (an extra replica brings its own)."""
        self.closed = False
        self.idle: set[asyncio.Future[None]] = set()
        """Futures any submission resolves (extra replicas waiting for work)."""
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at = 1
        """Queue length at which a submission wakes the waiting batcher."""
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = float("inf")

    @property
    def waiting_for(self) -> int | None:
        """The queue length at which a submission wakes the batcher sleeping in `wait`; None
        when it is not sleeping there."""
        if self._waiter is None or self._waiter.done():
            return None
        return self._wake_at

    def submit(self, req: Request) -> None:
        """Queue a request or raise `AdmissionRefused`; once queued, its `respond` will be
        called exactly once."""
        if self.closed:
            raise AdmissionRefused("shutdown", "server is shutting down")
        admission, queued = self.admission, len(self.queue)
        # The bound is the queue's (a full queue makes room by its share rule, or refuses);
        # only the deadline estimate is asked here (this runs once per request).
        if admission.mode == "deadline":
            capacity = self.capacity
            admission.check(queued=queued, max_batch_size=self.policy.max_batch_size,
                            busy_until=capacity.free_at(), now=req.arrival,
                            deadline=req.deadline, batch_s=capacity.batch_s,
                            replicas=capacity.active, bound=False)
        try:
            evicted = self.queue.push(req)
        except QueueFull as exc:
            raise AdmissionRefused("queue_full", str(exc)) from None
        if evicted is not None:
            self.stats.on_evicted()
            self.stats.queued -= 1
            evicted.respond(wire.Result(
                sample_id=evicted.sample_id, status=wire.ResultStatus.REJECTED,
                queue_us=int((req.arrival - evicted.arrival) * 1e6), cause="queue_full",
                reason="queue full: room made for a device holding fewer requests"))
        self.stats.on_admitted()
        if req.deadline < self._expiry_at:
            self._arm_expiry(req.deadline)
        if self._waiter is not None and len(self.queue) >= self._wake_at \
                and not self._waiter.done():
            self._waiter.set_result(None)
        if self.idle:
            for fut in self.idle:
                resolve(fut)

    async def serve(self, decide: Callable[[float], Idle | WaitUntil | D],
                    run: Callable[[D, float], Awaitable[None]]) -> None:
        """The batching loop: at each turn `decide` (given the time), then sleep as it says or
        `run` the batch it chose (given the same time)."""
        while True:
            now = self.loop.time()
            decision = decide(now)
            if isinstance(decision, Idle):
                await self.wait(None)
            elif isinstance(decision, WaitUntil):
                await self.wait(decision.time)
            else:
                await run(decision, now)

    async def wait(self, until: float | None, *, done: asyncio.Future[Any] | None = None,
                   queue_len: int = 1) -> None:
        """Sleep until `until`, `done` completes, or a submission brings the queue to
        `queue_len` requests, whichever comes first."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiter, self._wake_at = fut, queue_len
        timer = self.loop.call_at(until, resolve, fut) if until is not None else None
        if done is not None:
            done.add_done_callback(lambda _: resolve(fut))
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter, self._wake_at = None, 1

    def cut(self, size: int) -> list[Request]:
        """Take the next `size` requests off the queue (its order) for a batch."""
        batch = self.queue.pop(size)
        self.stats.queued -= len(batch)
        return batch

    def close(self) -> None:
        """Refuse new work and answer everything still queued (the owner then ends the model
        threads)."""
        self.closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        for r in self.queue.drain():
            self.stats.on_rejected("shutdown")
            r.respond(wire.Result(sample_id=r.sample_id, status=wire.ResultStatus.REJECTED,
                                  reason="server shutting down", cause="shutdown"))
        self.stats.queued = 0

    # --- deadlines ------------------------------------------------------------------------

    def _arm_expiry(self, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self._expiry_at = float("inf")
        now = self.loop.time()
        expired = self.queue.expire(now)
        if expired:
            self.stats.on_expired(len(expired))
            self.stats.queued -= len(expired)
            for r in expired:
                r.respond(wire.Result(sample_id=r.sample_id, status=wire.ResultStatus.EXPIRED,
                                      queue_us=int((now - r.arrival) * 1e6),
                                      reason="deadline passed in queue", cause="deadline"))
        nxt = self.queue.next_deadline()
        if nxt is not None:
            self._arm_expiry(nxt)


def resolve(fut: asyncio.Future[None]) -> None:
    """Wake whoever awaits `fut`, unless it is already done."""
    if not fut.done():
        fut.set_result(None)
