"""The plain server mode: batches cut by `BatchPolicy` (Triton's semantics) run whole on the
heavy model in a worker thread, padded to the profile, every request answered once; replicas
of the accelerator take batches from the same queue.

Admission, deadlines, sleeping and cutting are the `BatchShell`'s, which the early-exit
batcher shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.server.admission import Admission
from cascade_testbed.server.batch_policy import BatchPolicy, Cut, Decision, WaitUntil
from cascade_testbed.server.batch_shell import UNMEASURED_PER_SAMPLE_S, BatchShell, resolve
from cascade_testbed.server.heavy_model import BatchOutput, ServedModel
from cascade_testbed.server.model_thread import ModelThread
from cascade_testbed.server.replicas import ReplicaLedger
from cascade_testbed.server.request_queue import Request, RequestQueue
from cascade_testbed.server.stats import ServerStats
from cascade_testbed.server.tensors import model_input

__all__ = ["Batcher", "ModelThread"]
log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Replica:
    """A replica of the emulated accelerator beyond the first: its own model thread and
    busy time, batches from the shared queue."""

    index: int
    thread: ModelThread
    busy_until: float = 0.0
    task: asyncio.Task[None] | None = None


class Batcher:
    def __init__(self, model: ServedModel, queue: RequestQueue, policy: BatchPolicy,
                 profile: BatchProfile | None, stats: ServerStats,
                 admission: Admission | None = None, replicas: int = 1) -> None:
        self.model = model
        self.queue = queue
        self.policy = policy
        self.profile = profile
        self.stats = stats
        self.shell = BatchShell(queue, policy, stats,
                                admission or Admission("bound", queue.max_size), self)
        self.admission = self.shell.admission
        self._busy_until = 0.0
        self._per_sample_s = UNMEASURED_PER_SAMPLE_S
        """Measured cost per sample (smoothed): the batch time estimate without a profile."""
        self._loop = self.shell.loop
        self.ledger = ReplicaLedger(max(replicas, 1), self._loop.time())
        """Replica-seconds provisioned; replica 0 is this object's own loop and the shell's
        model thread."""
        self._extra: list[_Replica] = []
        self._scaled = asyncio.Event()
        self._started = False

    def now(self) -> float:
        return self._loop.time()

    @property
    def active(self) -> int:
        """Replicas provisioned now."""
        return self.ledger.active

    def set_replicas(self, n: int) -> None:
        """Provision `n` replicas from now on (at least 1): new ones start taking batches at
        once, released ones finish their running batch."""
        n = max(n, 1)
        if n == self.ledger.active:
            return
        now = self._loop.time()
        self.ledger.set(n, now, {r.index: r.busy_until for r in self._extra})
        self.stats.on_replicas(n)
        if self._started:
            self._spawn_replicas()
        self._scaled.set()
        self._scaled = asyncio.Event()

    def submit(self, req: Request) -> None:
        """Queue a request or raise `AdmissionRefused`; once queued, its `respond` will be
        called exactly once."""
        self.shell.submit(req)

    def use(self, model: ServedModel, profile: BatchProfile | None) -> None:
        """Run the next batches with another heavy model (the running batch finishes)."""
        self.model = model
        self.profile = profile

    def batch_s(self, size: int) -> float:
        """Expected duration of a batch: the emulated profile, or the measured cost."""
        return self.profile.target_s(size) if self.profile else self._per_sample_s * size

    def set_max_batch_size(self, n: int) -> None:
        """Takes effect at the next batch."""
        self.policy.max_batch_size = max(1, n)

    def free_at(self) -> float:
        """When the first provisioned replica is free (for the admission estimate)."""
        ends = [self._busy_until, *(r.busy_until for r in self._extra[:self.ledger.active - 1])]
        return min(ends)

    async def run(self) -> None:
        self._started = True
        self._spawn_replicas()
        await self.shell.serve(self._decide, self._run_cut)

    def _decide(self, now: float) -> Decision:
        return self.policy.decide(len(self.queue), self.queue.oldest_arrival(), now)

    async def _run_cut(self, cut: Cut, now: float) -> None:
        await self._run_batches(self.shell.cut(cut.size))

    def _spawn_replicas(self) -> None:
        """A loop (and a model thread) for every provisioned replica beyond the first."""
        while len(self._extra) < self.ledger.active - 1:
            index = len(self._extra) + 1
            r = _Replica(index, ModelThread(self._loop, f"heavy-model-{index}"))
            r.task = self._loop.create_task(self._replica_loop(r), name=f"replica-{r.index}")
            self._extra.append(r)

    async def _replica_loop(self, r: _Replica) -> None:
        """An extra replica: while provisioned, cut batches from the shared queue and run
        them on its own thread; when released, wait to be provisioned again."""
        while not self.shell.closed:
            if r.index >= self.ledger.active:
                await self._scaled.wait()
                continue
            decision = self._decide(self._loop.time())
            if isinstance(decision, Cut):
                batch = self.shell.cut(decision.size)
                begins = self._loop.time()
                r.busy_until = begins + self.batch_s(len(batch))
                model, profile = self.model, self.profile
                running = r.thread.run(_timed, self._loop.time, model.run,
                                       model_input([q.x for q in batch]))
                await self._finish(_Running(batch, model.name, profile, running))
                continue
            await self._idle_wait(decision.time if isinstance(decision, WaitUntil) else None)

    async def _idle_wait(self, until: float | None) -> None:
        """An extra replica sleeps until `until`, the next submission, or a change in the
        number of replicas."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self.shell.idle.add(fut)
        timer = self._loop.call_at(until, resolve, fut) if until is not None else None
        scaled = asyncio.ensure_future(self._scaled.wait())
        scaled.add_done_callback(lambda _: resolve(fut))
        try:
            await fut
        finally:
            self.shell.idle.discard(fut)
            scaled.cancel()
            if timer is not None:
                timer.cancel()

    async def _run_batches(self, batch: list[Request]) -> None:
        """Run a batch and, while the queue holds full batches, the ones after it.

        Without padding the next full batch is handed to the model as soon as the queue holds
        one, while the current one runs, so the model starts it the moment the current one
        ends instead of waiting for the event loop to come round (a quarter of the model's
        time was lost between batches that way: docs/performance.md). An emulated accelerator
        (padding) runs one batch at a time, padded to its profile.
        """
        running: _Running | None = self._start(batch, behind=False)
        following: _Running | None = None
        while running is not None:
            if self.profile is None and following is None:
                full = self.policy.max_batch_size
                if len(self.queue) < full and not running.future.done():
                    await self.shell.wait(None, done=running.future, queue_len=full)
                if len(self.queue) >= full:
                    following = self._start(self.shell.cut(full), behind=True)
            await self._finish(running)
            running, following = following, None

    def _start(self, batch: list[Request], behind: bool) -> _Running:
        """Hand a batch to the model's thread; `behind` another one still running there."""
        now = self._loop.time()
        begins = max(now, self._busy_until) if behind else now
        self._busy_until = begins + self.batch_s(len(batch))
        model, profile = self.model, self.profile  # a switch mid-batch applies to the next
        fut = self.shell.model_thread.run(_timed, self._loop.time, model.run,
                                          model_input([r.x for r in batch]))
        return _Running(batch, model.name, profile, fut)

    async def _finish(self, running: _Running) -> None:
        """Await a started batch, pad it to its profile, and answer its requests (from a
        callback, so that `run` cuts the next batch before the answers go out)."""
        batch, profile = running.batch, running.profile
        try:
            out, start, real, cpu = await running.future
        except Exception as exc:  # a broken model must not take the server down
            log.exception("heavy model failed on a batch of %d", len(batch))
            self.stats.on_failed(len(batch))
            for r in batch:
                r.respond(wire.Result(sample_id=r.sample_id, status=wire.ResultStatus.FAILED,
                                      batch_size=len(batch), reason=f"model error: {exc}",
                                      cause="model_error"))
            return
        self._per_sample_s += 0.2 * (real / len(batch) - self._per_sample_s)
        padded = out.target_s is not None or profile is not None
        target = out.target_s if out.target_s is not None else \
            profile.target_s(len(batch)) if profile else 0.0
        if target > real:
            await asyncio.sleep(target - real)
        end = self._loop.time()
        queue_s = start - np.fromiter([r.arrival for r in batch], np.float64, len(batch))
        self.stats.on_batch(queue_s, end - start, overrun=padded and real > target,
                            model_s=real, model_cpu_s=cpu)
        self._loop.call_soon(_answer, batch, out, running.model, queue_s, end - start)

    async def close(self) -> None:
        """Refuse new work, answer everything still queued, end the replicas."""
        self.shell.close()
        self._scaled.set()
        for extra in self._extra:
            if extra.task is not None:
                extra.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await extra.task
            extra.thread.shutdown()
        self.shell.model_thread.shutdown()


@dataclass(frozen=True, slots=True)
class _Running:
    batch: list[Request]
    model: str
    profile: BatchProfile | None
    future: asyncio.Future[tuple[BatchOutput, float, float, float]]


def _timed(clock: Callable[[], float], run: Callable[[np.ndarray], BatchOutput],
           x: np.ndarray) -> tuple[BatchOutput, float, float, float]:
    """In the worker thread: the output, when it started on `clock` (the event loop's, which
    the requests' arrival times are on: a batch may wait behind another), its wall and its
    CPU time."""
    cpu, start = time.thread_time(), clock()
    out = run(x)
    return out, start, clock() - start, time.thread_time() - cpu


def _answer(batch: list[Request], out: BatchOutput, model: str, queue_s: np.ndarray,
            compute_s: float) -> None:
    """Answer a batch's requests: a device socket's (`Request.send`) with the bytes of its
    result packed from the batch's shared fields (`wire.OkResults`), others with a `Result`."""
    compute_us, size = int(compute_s * 1e6), len(batch)
    probs = out.probs
    predictions, confidences = probs.argmax(axis=1).tolist(), probs.max(axis=1).tolist()
    queue_us = (queue_s * 1e6).astype(np.int64).tolist()  # truncated, as int() would
    if out.models is None:
        encode = wire.OkResults(compute_us, size, model).encode
        for r, p, c, q in zip(batch, predictions, confidences, queue_us, strict=True):
            if r.send is not None:
                r.send(encode(r.sample_id, p, c, q))
            else:
                r.respond(wire.Result(sample_id=r.sample_id, prediction=p, confidence=c,
                                      queue_us=q, compute_us=compute_us, batch_size=size,
                                      model=model))
        return
    for r, p, c, q, name in zip(batch, predictions, confidences, queue_us, out.models,
                                strict=True):
        r.respond(wire.Result(sample_id=r.sample_id, prediction=p, confidence=c, queue_us=q,
                              compute_us=compute_us, batch_size=size, model=name))

