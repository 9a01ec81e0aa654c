"""The early-exit server mode: stage-by-stage batches of an early-exit heavy model.

New requests wait in the admission queue (stage 0, with its deadline timer); samples that did
not exit are parked before their next stage with their activations. `StageScheduler` (pure)
picks each next batch; this shell runs the stage in the worker thread, pads it to the stage's
emulated latency, answers the samples whose exit is confident enough at once, and parks the
rest. A parked sample whose deadline passes is answered `expired` (its device falls back).
Admission, the queue's deadlines, sleeping and cutting are the `BatchShell`'s, which the plain
batcher shares."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.server.admission import Admission
from cascade_testbed.server.batch_policy import BatchPolicy
from cascade_testbed.server.batch_shell import UNMEASURED_PER_SAMPLE_S, BatchShell
from cascade_testbed.server.early_exit.model import StagedModel
from cascade_testbed.server.early_exit.stages import (
    RunStage,
    StageDecision,
    StageScheduler,
    Waiting,
)
from cascade_testbed.server.heavy_model import ServedModel
from cascade_testbed.server.replicas import ReplicaLedger
from cascade_testbed.server.request_queue import Request, RequestQueue
from cascade_testbed.server.stats import ServerStats
from cascade_testbed.server.tensors import model_input


@dataclass(slots=True)
class Parked:
    req: Request
    act: np.ndarray
    started: float
    """When its first stage started (its queueing before that is its queue time)."""


class EarlyExitBatcher:
    """Stage-by-stage batches on one accelerator, behind the interface the server uses for
    the plain `Batcher`."""

    def __init__(self, model: StagedModel, queue: RequestQueue, policy: BatchPolicy,
                 profile: BatchProfile | None, stats: ServerStats,
                 admission: Admission | None = None, *, scheduler: StageScheduler,
                 exit_threshold: float, target_s: float = 0.0) -> None:
        self.staged = model
        self.model: ServedModel = model
        """The model the server reports and checks inputs against; `use` changes it, not the
        stages run (the scenario refuses model switching in this mode)."""
        self.queue = queue
        self.policy = policy
        self.profile = profile
        """The whole model's profile: the admission estimate's batch time."""
        self.stats = stats
        self.shell = BatchShell(queue, policy, stats,
                                admission or Admission("bound", queue.max_size), self)
        self.admission = self.shell.admission
        self.ledger = ReplicaLedger(1, self.shell.loop.time())
        self._busy_until = 0.0
        self.scheduler = scheduler
        self.exit_threshold = exit_threshold
        self.target_s = target_s
        """> 0: the scheduler aims each request at arrival + target_s (a soft deadline; it
        still expires only at its own deadline)."""
        self.parked: list[list[Parked]] = [[] for _ in range(model.stages)]
        self.exits = [0] * model.stages

    def now(self) -> float:
        return self.shell.loop.time()

    @property
    def active(self) -> int:
        """Replicas counted as provisioned."""
        return self.ledger.active

    def set_replicas(self, n: int) -> None:
        """Count `n` replicas as provisioned (a policy's gear may ask for some); the stages
        still run on one (the scenario refuses `replicas` and `autoscale` in this mode)."""
        n = max(n, 1)
        if n == self.ledger.active:
            return
        self.ledger.set(n, self.shell.loop.time(), {})
        self.stats.on_replicas(n)

    def submit(self, req: Request) -> None:
        """Queue a request or raise `AdmissionRefused`; once queued, its `respond` will be
        called exactly once."""
        self.shell.submit(req)

    def use(self, model: ServedModel, profile: BatchProfile | None) -> None:
        """Report another heavy model (the stages keep running `staged`)."""
        self.model = model
        self.profile = profile

    def batch_s(self, size: int) -> float:
        """Expected duration of a whole-model batch: the emulated profile, or an estimate."""
        return self.profile.target_s(size) if self.profile else UNMEASURED_PER_SAMPLE_S * size

    def free_at(self) -> float:
        """When the accelerator is free (for the admission estimate)."""
        return self._busy_until

    def set_max_batch_size(self, n: int) -> None:
        """Takes effect at the next batch."""
        self.policy.max_batch_size = max(1, n)
        self.scheduler.max_batch_size = self.policy.max_batch_size

    async def run(self) -> None:
        await self.shell.serve(self._decide, self._run_stage)

    def _decide(self, now: float) -> StageDecision:
        self._expire_parked(now)
        for stage in self.parked[1:]:
            stage.sort(key=lambda p: self._waiting(p.req).deadline)
        queues = [[self._waiting(r) for r in self._stage0_view()]]
        queues += [[self._waiting(p.req) for p in stage] for stage in self.parked[1:]]
        return self.scheduler.decide(now, queues)

    def _waiting(self, req: Request) -> Waiting:
        if self.target_s > 0:
            return Waiting(req.arrival, min(req.deadline, req.arrival + self.target_s))
        return Waiting(req.arrival, req.deadline)

    def _stage0_view(self) -> list[Request]:
        """What waits for stage 0: the requests a stage-0 batch skipped (they could not make
        their deadline then), then the next batch's worth of the queue in its order (round
        robin across devices, oldest first within one)."""
        return [p.req for p in self.parked[0]] + \
            self.queue.peek(self.scheduler.max_batch_size)

    def _take_stage0(self, picks: tuple[int, ...]) -> list[Request]:
        """Cut the picked positions of `_stage0_view()`; the ones skipped before the last
        pick leave the queue for `parked[0]`, where they wait for their deadline in order."""
        held = self.parked[0]
        chosen = set(picks)
        fresh = self.shell.cut(max(picks) + 1 - len(held)) if max(picks) >= len(held) else []
        view = [p.req for p in held] + fresh
        self.parked[0] = [Parked(r, r.x, 0.0) for i, r in enumerate(view) if i not in chosen]
        return [view[i] for i in picks]

    async def _run_stage(self, d: RunStage, now: float) -> None:
        if d.stage == 0:
            reqs = self._take_stage0(d.picks)
            items = [Parked(r, r.x, now) for r in reqs]
            x = model_input([r.x for r in reqs])
        else:
            queue, chosen = self.parked[d.stage], set(d.picks)
            items = [queue[i] for i in d.picks]
            self.parked[d.stage] = [p for i, p in enumerate(queue) if i not in chosen]
            x = np.stack([p.act for p in items])
        start = self.shell.loop.time()
        profile = self.staged.stage_profiles[d.stage] if self.staged.stage_profiles else None
        self._busy_until = start + (profile.target_s(len(items)) if profile else 0.0)
        t = time.perf_counter()
        try:
            probs, act = await self.shell.model_thread.run(self.staged.run_stage, d.stage, x)
        except Exception as exc:  # a broken stage must not take the server down
            self.stats.on_failed(len(items))
            for p in items:
                p.req.respond(wire.Result(sample_id=p.req.sample_id,
                                          status=wire.ResultStatus.FAILED,
                                          batch_size=len(items), reason=f"model error: {exc}",
                                          cause="model_error"))
            return
        real = time.perf_counter() - t
        target = profile.target_s(len(items)) if profile else 0.0
        if target > real:
            await asyncio.sleep(target - real)
        end = self.shell.loop.time()
        last = d.stage == self.staged.stages - 1
        confs = probs.max(axis=1)
        done = [i for i in range(len(items)) if last or confs[i] >= self.exit_threshold]
        self.stats.on_batch([start - p.req.arrival for p in items if d.stage == 0], end - start,
                            overrun=profile is not None and real > target, completed=len(done),
                            size=len(items))
        self.exits[d.stage] += len(done)
        name = f"{self.staged.name}@exit{d.stage + 1}"
        preds = probs.argmax(axis=1)
        for i in done:
            p = items[i]
            p.req.respond(wire.Result(
                sample_id=p.req.sample_id, prediction=int(preds[i]), confidence=float(confs[i]),
                queue_us=int((p.started - p.req.arrival) * 1e6),
                compute_us=int((end - p.started) * 1e6), batch_size=len(items), model=name))
        if not last:
            keep = set(done)
            assert act is not None
            self.parked[d.stage + 1].extend(
                Parked(p.req, act[i], p.started) for i, p in enumerate(items) if i not in keep)

    def _expire_parked(self, now: float) -> None:
        for s, stage in enumerate(self.parked):
            late = [p for p in stage if p.req.deadline <= now]
            if not late:
                continue
            self.parked[s] = [p for p in stage if p.req.deadline > now]
            self.stats.on_expired(len(late))
            for p in late:
                p.req.respond(wire.Result(
                    sample_id=p.req.sample_id, status=wire.ResultStatus.EXPIRED,
                    queue_us=int((now - p.req.arrival) * 1e6),
                    reason=f"deadline passed while parked before stage {s + 1}",
                    cause="deadline"))

    async def close(self) -> None:
        """Refuse new work and answer every parked and queued sample."""
        for s, stage in enumerate(self.parked):
            for p in stage:
                self.stats.on_rejected("shutdown")
                p.req.respond(wire.Result(sample_id=p.req.sample_id,
                                          status=wire.ResultStatus.REJECTED,
                                          reason=f"server shutting down (parked at stage "
                                                 f"{s + 1})", cause="shutdown"))
            stage.clear()
        self.shell.close()
        self.shell.model_thread.shutdown()
