"""The early-exit stage scheduler and stage costs (pure), and the staged zoo model."""

from __future__ import annotations

import numpy as np
import pytest

from common.batch_profiles import BatchProfile
from server.batch_policy import Idle, WaitUntil
from server.early_exit.stages import RunStage, StageCosts, StageScheduler, Waiting

COSTS = StageCosts((BatchProfile(2, 1), BatchProfile(1, 1), BatchProfile(3, 2)),
                   (0.6, 0.5, 1.0))


def sched(policy: str = "slack", max_batch: int = 4) -> StageScheduler:
    return StageScheduler(COSTS, max_batch, 0.002, policy)  # type: ignore[arg-type]


def test_expected_remaining_counts_later_stages_by_how_often_they_are_reached() -> None:
    # size 2: stage 0 = 4 ms, stage 1 = 3 ms (reached 40%), stage 2 = 7 ms (reached 20%)
    assert COSTS.expected_remaining_s(0, 2) == pytest.approx((4 + 0.4 * 3 + 0.2 * 7) / 1e3)
    assert COSTS.expected_remaining_s(2, 2) == pytest.approx(7 / 1e3)


def test_stage_costs_refuse_mismatched_or_bad_rates() -> None:
    with pytest.raises(ValueError):
        StageCosts((BatchProfile(1, 1),), (0.5, 1.0))
    with pytest.raises(ValueError):
        StageCosts((BatchProfile(1, 1),), (1.5,))


def test_nothing_waiting_is_idle_and_a_young_stage0_batch_waits() -> None:
    assert isinstance(sched().decide(0.0, [[], [], []]), Idle)
    d = sched().decide(1.0, [[Waiting(0.9995, 2.0)], [], []])
    assert isinstance(d, WaitUntil) and d.time == pytest.approx(1.0015)
    assert sched().decide(1.0, [[Waiting(0.99, 2.0)], [], []]) == RunStage(0, 1)
    full = [Waiting(1.0, 2.0)] * 5
    assert sched().decide(1.0, [full, [], []]) == RunStage(0, 4)


def test_fcfs_runs_the_batch_in_flight_to_completion_first() -> None:
    new = [Waiting(0.0, 0.05)] * 4
    parked = [Waiting(0.0, 10.0)]
    assert sched("fcfs").decide(1.0, [new, parked, []]) == RunStage(1, 1)
    assert sched("fcfs").decide(1.0, [new, parked, parked]) == RunStage(2, 1)


def test_slack_lets_urgent_arrivals_preempt_parked_samples() -> None:
    now = 1.0
    urgent = [Waiting(0.99, now + 0.012)] * 4  # 12 ms left, about 10 ms of work expected
    relaxed = [Waiting(0.5, now + 1.0)]
    assert sched().decide(now, [urgent, relaxed, []]) == RunStage(0, 4)
    assert sched("fcfs").decide(now, [urgent, relaxed, []]) == RunStage(1, 1)


def test_slack_serves_what_can_still_make_it_before_what_cannot() -> None:
    now = 1.0
    hopeless = [Waiting(0.0, now + 0.001)]  # stage 2 alone takes 5 ms
    feasible = [Waiting(0.99, now + 0.5)] * 4
    assert sched().decide(now, [feasible, [], hopeless]) == RunStage(0, 4)
    assert sched().decide(now, [[], [], hopeless]) == RunStage(2, 1)
    # among hopeless ones, the deepest first (it frees its parked activations soonest)
    assert sched().decide(now, [[], hopeless, hopeless]) == RunStage(2, 1)


def test_staged_zoo_model_stages_compose_to_the_whole_network() -> None:
    from common.modelzoo import open_zoo, to_model_input
    from server.early_exit.model import StagedModel

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
    assert sched("slack").decide(now, [arrivals, parked, []]) == RunStage(0, 4)
    assert sched("edf").decide(now, [arrivals, parked, []]) == RunStage(1, 1)
