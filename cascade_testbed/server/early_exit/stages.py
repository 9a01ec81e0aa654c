"""Which stage of an early-exit model runs next, and on which samples. Pure: time is passed in.

The server keeps one queue per stage: new requests wait for stage 0, samples that did not exit
wait (with their activations parked) for the next stage. After every stage batch the scheduler
picks the next one:

* `slack` (fluid batching's exit-aware preemptive rule): a sample is worth running only if it
  can still meet its deadline by leaving at some exit it has a chance of taking (a sample
  about to run stage 0 needs only stage 0's time if it exits there, which most do); the
  others are skipped and wait (they expire at their deadline, or run when nothing that can
  still make it is waiting). Of the stages with such samples, the batch that lets the most
  samples leave per second of accelerator time (size x exit rate / batch time) runs, unless
  running it first would push another batch past its slack (deadline - now - expected time
  left, each later stage counted as often as samples reach it, at the size the batch has
  shrunk to by then): then the one with the least slack. New arrivals so preempt samples
  parked between stages when they let more samples leave sooner and nothing is urgent.
  (Least slack alone, with the exit-aware time left, ran new arrivals *later* than the
  exit-blind rule does, since exits make their time left look short: docs/early-exit.md.)
* `edf` (the exit-blind ablation): the same preemptive least-slack rule, but the expected
  time left counts every later stage in full for the whole batch, and feasibility is judged
  per batch (a batch none of whose samples can make it waits), since a scheduler blind to
  exits cannot tell which single sample might still make it.
* `fcfs` (run to completion): the batch in flight goes through its stages before a new batch
  starts; exited samples leave at each stage boundary.

Stage 0 forms batches with Triton's semantics (full, or the oldest has waited
`max_queue_delay_s`); later stages run as soon as chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.server.batch_policy import Idle, WaitUntil

StagePolicy = Literal["slack", "edf", "fcfs"]


@dataclass(frozen=True, slots=True)
class Waiting:
    arrival: float
    deadline: float


@dataclass(frozen=True, slots=True)
class RunStage:
    stage: int
    picks: tuple[int, ...]
    """Positions, in the queue the scheduler was given for `stage`, of the samples to run
    (increasing; not always the first ones: `slack` skips samples that cannot make it)."""

    @property
    def size(self) -> int:
        return len(self.picks)


def first(stage: int, n: int) -> RunStage:
    """Run the first `n` samples waiting for `stage`."""
    return RunStage(stage, tuple(range(n)))


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

    def path(self, stage: int, size: int, exit_aware: bool = True
             ) -> tuple[tuple[float, float], ...]:
        """For a batch of `size` about to run `stage`: for each stage from it on, (time from
        now until that stage's batch ends, P(a sample leaves there)). With `exit_aware`, each
        later batch has shrunk by the exits before it; blind, the batch runs every stage
        whole and every sample leaves at the last."""
        out, t, reach = [], 0.0, 1.0
        for j in range(stage, self.stages):
            n = size * reach if exit_aware else size
            t += self.profiles[j].target_s(max(1, round(n)))
            last = j == self.stages - 1
            leave = reach * (self.exit_rates[j] if exit_aware else 0.0) if not last else reach
            out.append((t, leave))
            reach -= leave
        return tuple(out)

    def expected_remaining_s(self, stage: int, size: int, exit_aware: bool = True) -> float:
        """Expected time for a sample about to run `stage` (in a batch of `size`) to leave:
        with `exit_aware`, each later stage counts with the probability of reaching it and at
        the size the batch has shrunk to; blind, every stage in full at `size`."""
        return sum(t * p for t, p in self.path(stage, size, exit_aware))

    def chance_in_time(self, path: Sequence[tuple[float, float]], slack_s: float) -> float:
        """P(a sample with `slack_s` until its deadline leaves in time) along `path`."""
        return sum(p for t, p in path if t <= slack_s)


StageDecision = RunStage | WaitUntil | Idle


@dataclass(frozen=True, slots=True)
class _Candidate:
    run: RunStage
    took: float
    """Time the stage batch itself takes."""
    leave_rate: float
    """Samples expected to leave at this stage's exit, per second of the batch."""
    slack: float
    """Tightest deadline - now - expected time left, over the batch."""


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
            return first(stage, min(len(queues[stage]), self.max_batch_size))
        if self.policy == "edf":
            stage = min(ready, key=lambda s: self._blind_priority(now, s, queues[s]))
            return first(stage, min(len(queues[stage]), self.max_batch_size))
        return self._exit_aware(now, ready, queues)

    def _blind_priority(self, now: float, stage: int, queue: Sequence[Waiting]
                        ) -> tuple[int, float]:
        batch = queue[:self.max_batch_size]
        left = self.costs.expected_remaining_s(stage, len(batch), exit_aware=False)
        slacks = [w.deadline - now - left for w in batch]
        feasible = [x for x in slacks if x >= 0]
        if feasible:
            return 0, min(feasible)
        return 1, -stage  # nothing here can make it: after all that can, deepest first

    def _exit_aware(self, now: float, ready: Sequence[int],
                    queues: Sequence[Sequence[Waiting]]) -> RunStage:
        """Of the batches of samples that can still make it, the one that lets the most
        samples leave per second of accelerator time, unless running it first would push
        another past its slack: then the one with the least slack."""
        cands: list[_Candidate] = []
        for s in ready:
            picks = self.in_time(now, s, queues[s])
            if not picks:
                continue
            path = self.costs.path(s, len(picks))
            (took, leave), left = path[0], sum(t * p for t, p in path)
            cands.append(_Candidate(
                run=RunStage(s, picks), took=took, leave_rate=len(picks) * leave / took,
                slack=min(queues[s][i].deadline for i in picks) - now - left))
        if not cands:
            stage = max(ready)  # nothing can make it: deepest first (frees its activations)
            return first(stage, min(len(queues[stage]), self.max_batch_size))
        best = max(cands, key=lambda c: c.leave_rate)
        urgent = [c for c in cands if c is not best and c.slack < best.took]
        return min(urgent, key=lambda c: c.slack).run if urgent else best.run

    def in_time(self, now: float, stage: int, queue: Sequence[Waiting]) -> tuple[int, ...]:
        """Positions of the first samples (at most a batch) that can still leave in time at
        an exit they may take, judged at the batch size they would run at."""
        size = min(len(queue), self.max_batch_size)
        picks: tuple[int, ...] = ()
        for _ in range(2):  # a smaller batch is faster: judge once more at the size found
            path = self.costs.path(stage, size)
            picks = tuple(i for i, w in enumerate(queue)
                          if self.costs.chance_in_time(path, w.deadline - now) > 0
                          )[:self.max_batch_size]
            if len(picks) in (0, size):
                break
            size = len(picks)
        return picks
