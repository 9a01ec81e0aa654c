"""Which stage of an early-exit model runs next, and on how many samples. Pure: time is passed in.

The server keeps one queue per stage: new requests wait for stage 0, samples that did not exit
wait (with their activations parked) for the next stage. After every stage batch the scheduler
picks the next one:

* `slack` (fluid batching's exit-aware deadline-slack priority): for each stage with work, the
  batch it would run and that batch's tightest slack, deadline - now - expected time left, where
  the expected time counts later stages only as often as samples reach them (exit rates). The
  stage with the least non-negative slack runs; batches that cannot make their deadlines wait
  until nothing that still can is waiting. New arrivals can so preempt samples parked between
  stages.
* `edf` (the ablation between them): the same preemptive slack rule, but blind to exits: the
  expected time left counts every later stage in full.
* `fcfs` (run to completion): the batch in flight goes through its stages before a new batch
  starts; exited samples leave at each stage boundary.

Stage 0 forms batches with Triton's semantics (full, or the oldest has waited
`max_queue_delay_s`); later stages run as soon as chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from common.batch_profiles import BatchProfile
from server.batch_policy import Idle, WaitUntil

StagePolicy = Literal["slack", "edf", "fcfs"]


@dataclass(frozen=True, slots=True)
class Waiting:
    arrival: float
    deadline: float


@dataclass(frozen=True, slots=True)
class RunStage:
    stage: int
    size: int


@dataclass(frozen=True)
class StageCosts:
    profiles: tuple[BatchProfile, ...]
    """Emulated batch latency of each stage."""
    exit_rates: tuple[float, ...]
    """P(a sample that runs stage s exits after it); the last stage's is 1."""

    def __post_init__(self) -> None:
        if len(self.profiles) != len(self.exit_rates) or not self.profiles:
            raise ValueError("one profile and one exit rate per stage")
        if not all(0 <= r <= 1 for r in self.exit_rates):
            raise ValueError("exit rates must be in [0, 1]")

    @property
    def stages(self) -> int:
        return len(self.profiles)

    def expected_remaining_s(self, stage: int, size: int, exit_aware: bool = True) -> float:
        """Expected time for a sample about to run `stage` to finish: each later stage counts
        with the probability of reaching it (with `exit_aware`), else in full."""
        total, reach = 0.0, 1.0
        for j in range(stage, self.stages):
            total += reach * self.profiles[j].target_s(size)
            if exit_aware:
                reach *= 1.0 - self.exit_rates[j]
        return total


StageDecision = RunStage | WaitUntil | Idle


@dataclass
class StageScheduler:
    costs: StageCosts
    max_batch_size: int
    max_queue_delay_s: float
    policy: StagePolicy = "slack"

    def decide(self, now: float, queues: Sequence[Sequence[Waiting]]) -> StageDecision:
        """`queues[0]`: requests waiting for stage 0, oldest first; `queues[s]`: samples parked
        before stage s, in the order the shell would batch them (earliest deadline first)."""
        ready: list[int] = []
        release: float | None = None
        for s, q in enumerate(queues):
            if not q:
                continue
            if s == 0 and len(q) < self.max_batch_size and \
                    now < q[0].arrival + self.max_queue_delay_s:
                release = q[0].arrival + self.max_queue_delay_s
                continue
            ready.append(s)
        if not ready:
            return WaitUntil(release) if release is not None else Idle()
        if self.policy == "fcfs":
            stage = max(ready)
        else:
            stage = min(ready, key=lambda s: self._priority(now, s, queues[s]))
        return RunStage(stage, min(len(queues[stage]), self.max_batch_size))

    def _priority(self, now: float, stage: int, queue: Sequence[Waiting]) -> tuple[int, float]:
        batch = queue[:self.max_batch_size]
        left = self.costs.expected_remaining_s(stage, len(batch), self.policy == "slack")
        slacks = [w.deadline - now - left for w in batch]
        feasible = [x for x in slacks if x >= 0]
        if feasible:
            return 0, min(feasible)
        return 1, -stage  # nothing here can make it: after all that can, deepest first
