"""The early-exit stage scheduler and stage costs (pure), and the staged zoo model."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.server.batch_policy import Idle, WaitUntil
from cascade_testbed.server.early_exit.stages import (
    RunStage,
    StageCosts,
    StageScheduler,
    Waiting,
    first,
)

COSTS = StageCosts((BatchProfile(2, 1), BatchProfile(1, 1), BatchProfile(3, 2)),
                   (0.6, 0.5, 1.0))


def sched(policy: str = "slack", max_batch: int = 4) -> StageScheduler:
    return StageScheduler(COSTS, max_batch, 0.002, policy)  # type: ignore[arg-type]


def test_expected_remaining_counts_later_stages_by_how_often_they_are_reached() -> None:
    # A batch of 10 shrinks by its exits: stage 0 at 10 = 12 ms, stage 1 at 4 = 5 ms (reached
    # 40%), stage 2 at 2 = 7 ms (reached 20%). (Costing later stages at the first stage's size,
    # as before, overstated what the survivors of a batch cost.)
    assert COSTS.expected_remaining_s(0, 10) == pytest.approx((12 + 0.4 * 5 + 0.2 * 7) / 1e3)
    assert COSTS.expected_remaining_s(2, 2) == pytest.approx(7 / 1e3)


def test_path_says_when_the_batch_ends_each_stage_and_who_leaves_there() -> None:
    aware = COSTS.path(0, 10)
    assert [t for t, _ in aware] == pytest.approx([0.012, 0.017, 0.024])
    assert [p for _, p in aware] == pytest.approx([0.6, 0.2, 0.2])
    blind = COSTS.path(0, 10, exit_aware=False)  # the whole batch runs every stage
    assert [t for t, _ in blind] == pytest.approx([0.012, 0.023, 0.046])
    assert [p for _, p in blind] == pytest.approx([0.0, 0.0, 1.0])
    assert COSTS.chance_in_time(aware, 0.017) == pytest.approx(0.8)
    assert COSTS.chance_in_time(blind, 0.017) == 0.0


def test_stage_costs_refuse_mismatched_or_bad_rates() -> None:
    with pytest.raises(ValueError):
        StageCosts((BatchProfile(1, 1),), (0.5, 1.0))
    with pytest.raises(ValueError):
        StageCosts((BatchProfile(1, 1),), (1.5,))


def test_nothing_waiting_is_idle_and_a_young_stage0_batch_waits() -> None:
    assert isinstance(sched().decide(0.0, [[], [], []]), Idle)
    d = sched().decide(1.0, [[Waiting(0.9995, 2.0)], [], []])
    assert isinstance(d, WaitUntil) and d.time == pytest.approx(1.0015)
    assert sched().decide(1.0, [[Waiting(0.99, 2.0)], [], []]) == first(0, 1)
    full = [Waiting(1.0, 2.0)] * 5
    assert sched().decide(1.0, [full, [], []]) == first(0, 4) == RunStage(0, (0, 1, 2, 3))


def test_fcfs_runs_the_batch_in_flight_to_completion_first() -> None:
    new = [Waiting(0.0, 0.05)] * 4
    parked = [Waiting(0.0, 10.0)]
    assert sched("fcfs").decide(1.0, [new, parked, []]) == first(1, 1)
    assert sched("fcfs").decide(1.0, [new, parked, parked]) == first(2, 1)


def test_slack_lets_urgent_arrivals_preempt_parked_samples() -> None:
    now = 1.0
    urgent = [Waiting(0.99, now + 0.012)] * 4  # 12 ms left, about 8 ms of work expected
    relaxed = [Waiting(0.5, now + 1.0)]
    assert sched().decide(now, [urgent, relaxed, []]) == first(0, 4)
    assert sched("fcfs").decide(now, [urgent, relaxed, []]) == first(1, 1)


def test_slack_serves_what_can_still_make_it_before_what_cannot() -> None:
    now = 1.0
    hopeless = [Waiting(0.0, now + 0.001)]  # stage 2 alone takes 5 ms
    feasible = [Waiting(0.99, now + 0.5)] * 4
    assert sched().decide(now, [feasible, [], hopeless]) == first(0, 4)
    assert sched().decide(now, [[], [], hopeless]) == first(2, 1)
    # among hopeless ones, the deepest first (it frees its parked activations soonest)
    assert sched().decide(now, [[], hopeless, hopeless]) == first(2, 1)


def test_staged_zoo_model_stages_compose_to_the_whole_network() -> None:
    from cascade_testbed.common.modelzoo import open_zoo, to_model_input
    from cascade_testbed.server.early_exit.model import StagedModel

    zoo = open_zoo()
    model = StagedModel(zoo, "heavy-ee")
    assert model.stages == 3
    x = to_model_input(zoo.dataset("val").x[:64])
    act: np.ndarray | None = x
    for s in range(3):
        assert act is not None
        probs, act = model.run_stage(s, act)
        assert probs.shape == (64, 10)
    assert act is None
    np.testing.assert_allclose(model.infer(x), probs, rtol=1e-5)
    model.pad_to(BatchProfile(6.0, 4.2))
    assert sum(p.base_ms for p in model.stage_profiles) == pytest.approx(6.0)
    costs = model.costs(0.9)
    assert costs.exit_rates[-1] == 1.0 and 0.4 < costs.exit_rates[0] < 0.8


def test_edf_is_the_slack_rule_blind_to_exits() -> None:
    assert COSTS.expected_remaining_s(0, 2, exit_aware=False) == pytest.approx((4 + 3 + 7) / 1e3)
    now = 1.0
    # 12 ms left: feasible if exits are counted (about 10 ms), not if every stage runs (17 ms)
    arrivals = [Waiting(0.99, now + 0.012)] * 4
    parked = [Waiting(0.5, now + 1.0)]
    assert sched("slack").decide(now, [arrivals, parked, []]) == first(0, 4)
    assert sched("edf").decide(now, [arrivals, parked, []]) == first(1, 1)


def test_slack_skips_only_the_samples_that_cannot_leave_at_any_exit_in_time() -> None:
    now = 1.0
    queue = [Waiting(0.9, now + 0.001),   # not even stage 0 (4-5 ms) ends in time
             Waiting(0.9, now + 0.007),   # in time only if it exits after stage 0 (60%)
             Waiting(0.95, now + 1.0)]
    assert sched().in_time(now, 0, queue) == (1, 2)
    assert sched().decide(now, [queue, [], []]) == RunStage(0, (1, 2))
    # blind to exits, the second needs all three stages (18 ms) and looks hopeless too; edf
    # judges the batch, which has a sample that can make it, and runs it whole
    assert sched("edf").decide(now, [queue, [], []]) == first(0, 3)


def test_slack_runs_the_batch_that_lets_most_samples_leave_unless_another_would_miss() -> None:
    now = 1.0
    arrivals = [Waiting(0.99, now + 1.0)] * 4   # 6 ms, 60% leave: 0.4 per ms
    parked = [Waiting(0.5, now + 0.5)]           # stage 2 alone: 5 ms, all leave: 0.2 per ms
    assert sched().decide(now, [arrivals, [], parked]) == first(0, 4)
    # blind to exits, the new batch (22 ms to go through every stage) is preferred to the
    # parked sample only by its slack: the parked one's deadline is nearer, so it goes first
    assert sched("edf").decide(now, [arrivals, [], parked]) == first(2, 1)
    # 8 ms left, 5 ms of work: the 6 ms stage-0 batch first would make it miss, so it runs
    tight = [Waiting(0.5, now + 0.008)]
    assert sched().decide(now, [arrivals, [], tight]) == first(2, 1)


def test_the_shell_cuts_the_picked_requests_and_holds_the_skipped_ones_in_order() -> None:
    import asyncio

    from cascade_testbed.common.modelzoo import open_zoo
    from cascade_testbed.server.batch_policy import BatchPolicy
    from cascade_testbed.server.early_exit.batcher import EarlyExitBatcher
    from cascade_testbed.server.early_exit.model import StagedModel
    from cascade_testbed.server.request_queue import Request, RequestQueue
    from cascade_testbed.server.stats import ServerStats

    async def main() -> None:
        model = StagedModel(open_zoo(), "heavy-ee")
        model.pad_to(BatchProfile(0.0, 0.0))
        batcher = EarlyExitBatcher(model, RequestQueue(64), BatchPolicy(4, 0.002), None,
                                   ServerStats(), scheduler=sched(), exit_threshold=0.9)
        x = np.zeros(model.sample_shape, dtype=np.float32)
        for i in range(6):
            batcher.submit(Request("d", i, x, float(i), 10.0 + i, lambda *_: None))
        ids = [r.sample_id for r in batcher._take_stage0((1, 3))]
        assert ids == [1, 3] and len(batcher.queue) == 2
        assert [p.req.sample_id for p in batcher.parked[0]] == [0, 2]
        # the view is the held ones, then the queue; picks may mix both
        assert [r.sample_id for r in batcher._stage0_view()] == [0, 2, 4, 5]
        assert [r.sample_id for r in batcher._take_stage0((1, 2))] == [2, 4]
        assert [p.req.sample_id for p in batcher.parked[0]] == [0]
        assert [r.sample_id for r in batcher._take_stage0((0,))] == [0]
        assert batcher.parked[0] == [] and [r.sample_id for r in batcher._stage0_view()] == [5]
        await batcher.close()

    asyncio.run(main())
