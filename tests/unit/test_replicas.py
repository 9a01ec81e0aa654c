"""Replicas: the provisioned replica-seconds, the shared autoscaling rule and its hysteresis,
and a run's cost from the server's events."""

from __future__ import annotations

import pytest

from cascade_testbed.server.replicas import Autoscaler, AutoscaleRule, ReplicaLedger
from cascade_testbed.testbed.results.cost import provisioned


def test_the_ledger_counts_every_provisioned_replica_busy_or_idle() -> None:
    ledger = ReplicaLedger(1, since=0.0)
    ledger.set(3, 10.0)          # 10 s of one replica
    ledger.set(2, 15.0)          # 5 s of three
    assert ledger.total(20.0) == pytest.approx(10 + 15 + 10)
    assert ledger.peak == 3


def test_a_released_replica_costs_until_its_batch_ends_and_not_twice() -> None:
    ledger = ReplicaLedger(2, since=0.0)
    ledger.set(1, 10.0, finishing={1: 10.4})
    assert ledger.total(11.0) == pytest.approx(20 + 1 + 0.4)
    ledger = ReplicaLedger(3, since=0.0)
    ledger.set(1, 10.0, finishing={1: 12.0, 2: 9.0})  # replica 2 was idle: no cost after
    ledger.set(2, 11.0)          # provisioned again while draining: counted once
    assert ledger.total(12.0) == pytest.approx(30 + 1 + 1 + 2)


@pytest.mark.parametrize("load,queue,expected", [
    (0.0, 0, 1), (100.0, 0, 1), (141.0, 0, 2), (280.0, 0, 2), (281.0, 0, 3),
    (0.0, 300, 3), (10_000.0, 0, 8)])
def test_the_rule_provisions_for_the_load_at_the_target_utilisation(
        load: float, queue: int, expected: int) -> None:
    rule = AutoscaleRule(min_replicas=1, max_replicas=8, utilization=0.7, drain_s=1.0)
    assert rule.wanted(load, queue, capacity_sps=200.0) == expected


def test_up_at_once_down_after_the_lower_count_has_sufficed_for_a_while() -> None:
    scaler = Autoscaler(AutoscaleRule(down_after_s=5.0))
    assert scaler.decide(0.0, current=1, wanted=4) == 4
    assert scaler.decide(1.0, current=4, wanted=2) == 4
    assert scaler.decide(3.0, current=4, wanted=3) == 4
    assert scaler.decide(6.0, current=4, wanted=2) == 3  # the most wanted since 1.0 s
    assert scaler.decide(6.5, current=3, wanted=1) == 3
    assert scaler.decide(7.0, current=3, wanted=5) == 5  # a surge resets the wait
    assert scaler.decide(8.0, current=5, wanted=1) == 5


def test_a_runs_cost_is_what_it_provisioned_over_the_arrivals() -> None:
    events = [{"t": 99.0, "source": "server", "kind": "replicas", "replicas": 2},
              {"t": 105.0, "source": "server", "kind": "replicas", "replicas": 4},
              {"t": 105.0, "source": "harness", "kind": "replicas", "replicas": 9},
              {"t": 115.0, "source": "server", "kind": "replicas", "replicas": 1},
              {"t": 140.0, "source": "server", "kind": "replicas", "replicas": 6}]
    cost = provisioned(events, initial=1, start=100.0, arrivals_s=20.0, generated=2000)
    assert cost["replica_seconds"] == pytest.approx(2 * 5 + 4 * 10 + 1 * 5)
    assert cost["per_1000_samples"] == pytest.approx(27.5)
    assert cost["mean_replicas"] == pytest.approx(2.75) and cost["peak_replicas"] == 4
    fixed = provisioned([], initial=3, start=0.0, arrivals_s=10.0, generated=500)
    assert fixed["replica_seconds"] == 30.0 and fixed["per_1000_samples"] == 60.0
    assert provisioned([], 1, None, 10.0, 0)["per_1000_samples"] is None
