"""Fault scenarios: parsing, the seeded timeline, lossy and cut links, admission control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascade_testbed.common.config import (
    FaultSpec,
    LinkSpec,
    ScenarioConfig,
    ScenarioError,
    device_specs,
)
from cascade_testbed.common.scenario_file import load_scenario, scenario_from_dict, scenario_to_dict
from cascade_testbed.emulated_devices.emulation import Impairment, Link
from cascade_testbed.server.admission import Admission, AdmissionRefused, estimated_finish
from cascade_testbed.testbed.faults import occurrences, plan_faults

ROOT = Path(__file__).resolve().parents[2]


def cfg_with(*faults: dict[str, object], duration_s: float = 20.0, count: int = 9,
             seed: int = 0) -> ScenarioConfig:
    return scenario_from_dict({"duration_s": duration_s, "seed": seed,
                               "devices": {"count": count}, "faults": list(faults)})


def devices(cfg: ScenarioConfig) -> list[tuple[str, str]]:
    return [(s.device_id, s.tier) for s in device_specs(cfg)]


class TestFaultConfig:
    def test_example_scenario_loads_and_round_trips(self) -> None:
        cfg = load_scenario(ROOT / "scenarios" / "faults.toml")
        kinds = [f.kind for f in cfg.faults]
        assert kinds == ["kill_device", "kill_server", "cut_link", "packet_loss"]
        assert cfg.devices.restart_dead and cfg.server.restart_on_exit
        assert scenario_from_dict(scenario_to_dict(cfg)) == cfg

    @pytest.mark.parametrize("fault,needle", [
        ({"kind": "explode", "at_s": 1}, "faults[0].kind"),
        ({"kind": "cut_link", "at_s": 1}, "duration_s > 0"),
        ({"kind": "packet_loss", "at_s": 1, "duration_s": 2, "loss": 1.5}, "0 < loss < 1"),
        ({"kind": "kill_device", "at_s": -1}, "at_s must be in [0"),
        ({"kind": "kill_device", "at_s": 1, "tier": "huge"}, "unknown tier"),
        ({"kind": "kill_device", "at_s": 1, "devices": "low-000"}, "must be a list"),
        ({"kind": "kill_device", "at_s": 1, "when": 3}, "unknown keys"),
    ])
    def test_bad_faults_are_named(self, fault: dict[str, object], needle: str) -> None:
        with pytest.raises(ScenarioError, match=needle.replace("[", r"\[").replace("]", r"\]")
                           .replace("(", r"\(").replace(")", r"\)")):
            cfg_with(fault)

    def test_link_loss_bounds(self) -> None:
        with pytest.raises(ScenarioError, match="loss"):
            LinkSpec(loss=1.0)


class TestPlan:
    def test_kill_and_restart_device(self) -> None:
        cfg = cfg_with({"kind": "kill_device", "at_s": 4, "devices": ["mid-001"],
                        "restart_after_s": 2})
        plan = plan_faults(cfg, devices(cfg))
        assert [(a.at_s, a.kind, a.target) for a in plan.actions] == \
            [(4, "kill_device", "mid-001"), (6, "restart_device", "mid-001")]
        assert plan.injected == 1 and plan.links == {}

    def test_no_restart_past_the_end(self) -> None:
        cfg = cfg_with({"kind": "kill_server", "at_s": 19, "restart_after_s": 2})
        plan = plan_faults(cfg, devices(cfg))
        assert [a.kind for a in plan.actions] == ["kill_server"]

    def test_targets_are_seeded_and_respect_the_tier(self) -> None:
        fault = {"kind": "kill_device", "at_s": 1, "tier": "low", "count": 2}
        a = plan_faults(cfg_with(fault, seed=1), devices(cfg_with(fault, seed=1)))
        b = plan_faults(cfg_with(fault, seed=1), devices(cfg_with(fault, seed=1)))
        assert a == b
        targets = [x.target for x in a.actions]
        assert len(set(targets)) == 2 and all(t.startswith("low-") for t in targets)

    def test_count_larger_than_pool_takes_all(self) -> None:
        cfg = cfg_with({"kind": "kill_device", "at_s": 1, "tier": "high", "count": 50})
        assert len(plan_faults(cfg, devices(cfg)).actions) == 3

    def test_unknown_named_device(self) -> None:
        cfg = cfg_with({"kind": "kill_device", "at_s": 1, "devices": ["nope"]})
        with pytest.raises(ScenarioError, match="unknown devices"):
            plan_faults(cfg, devices(cfg))

    def test_repeating_fault(self) -> None:
        spec = FaultSpec(kind="kill_server", at_s=5, every_s=4)
        assert occurrences(spec, 20.0) == [5, 9, 13, 17]
        assert occurrences(FaultSpec(kind="kill_server", at_s=25), 20.0) == []
        cfg = cfg_with({"kind": "kill_device", "at_s": 2, "every_s": 5, "restart_after_s": 1})
        plan = plan_faults(cfg, devices(cfg))
        kills = [a for a in plan.actions if a.kind == "kill_device"]
        assert [a.at_s for a in kills] == [2, 7, 12, 17] and plan.injected == 4

    def test_link_faults_become_windows_clipped_to_the_run(self) -> None:
        cfg = cfg_with({"kind": "cut_link", "at_s": 3, "duration_s": 3, "devices": ["low-000"]},
                       {"kind": "packet_loss", "at_s": 18, "duration_s": 5, "loss": 0.2,
                        "devices": ["low-000"], "direction": "up"})
        plan = plan_faults(cfg, devices(cfg))
        windows = plan.links["low-000"]
        assert [(w.start_s, w.end_s, w.loss, w.direction) for w in windows] == \
            [(3, 6, 1.0, "both"), (18, 20, 0.2, "up")]
        assert [a.kind for a in plan.actions] == ["link_down", "link_up", "link_down",
                                                  "link_up"]


def link(loss: float = 0.0, impairments: tuple[Impairment, ...] = (), seed: int = 0) -> Link:
    return Link(LinkSpec(delay_ms=5.0, jitter_ms=0.0, bandwidth_mbps=1000.0, loss=loss,
                         rto_ms=200.0), np.random.default_rng(seed), impairments)


class TestImpairedLink:
    def test_cut_holds_messages_until_the_link_is_back(self) -> None:
        ln = link(impairments=(Impairment(1.0, 4.0, 1.0),))
        assert ln.transmit(0.5, 100) == pytest.approx(0.5 + 0.005, abs=1e-5)
        assert ln.transmit(2.0, 100) == pytest.approx(4.005, abs=1e-5)
        # FIFO: a message sent after the cut is not delivered before the held one.
        assert ln.transmit(4.0, 100) >= 4.005

    def test_loss_adds_rto_with_backoff(self) -> None:
        """With loss p, the extra delay is RTO * (2^k - 1) for k losses in a row."""
        ln = link(loss=0.5, seed=1)
        extras = []
        for i in range(2000):
            t = 100.0 * i  # far apart: no queueing behind earlier messages
            extras.append(ln.transmit(t, 100) - t - 0.005)
        extras_ms = np.round(np.array(extras) * 1e3)
        assert set(np.unique(extras_ms)) <= {0, 200, 600, 1400, 3000, 6200, 12600, 25400,
                                             51000}
        assert abs(np.mean(extras_ms == 0) - 0.5) < 0.05
        assert abs(np.mean(extras_ms == 200) - 0.25) < 0.04

    def test_loss_window_only_inside(self) -> None:
        ln = link(impairments=(Impairment(10.0, 20.0, 0.9),), seed=2)
        before = [ln.transmit(float(t), 10) - t for t in np.arange(0.0, 9.0, 0.5)]
        assert max(before) == pytest.approx(0.005, abs=1e-5)
        inside = [ln.transmit(t, 10) - t for t in np.arange(100.0, 1100.0, 50.0)]
        # After the window: no loss; inside one far from the others the mean delay is large.
        ln2 = link(impairments=(Impairment(0.0, 1e9, 0.9),), seed=2)
        during = [ln2.transmit(t, 10) - t for t in np.arange(0.0, 10000.0, 100.0)]
        assert max(inside) == pytest.approx(0.005, abs=1e-5)
        assert np.mean(during) > 0.5

    def test_no_loss_draws_no_random_numbers(self) -> None:
        """Runs without loss keep exactly the random streams they had before loss existed."""
        rng = np.random.default_rng(5)
        ln = Link(LinkSpec(jitter_ms=1.0), rng)
        for t in range(10):
            ln.transmit(float(t), 100)
        fresh = np.random.default_rng(5)
        fresh.normal(size=10)
        assert rng.random() == fresh.random()


def cost(b: int) -> float:
    return (6.0 + 4.0 * b) / 1e3


class TestAdmission:
    def test_finish_estimate(self) -> None:
        """70 queued with batches of 32: two full batches, then its own, counted as full
        (requests behind it will fill it), after the running batch."""
        assert estimated_finish(70, 32, busy_until=1.1, now=1.0, batch_s=cost) == \
            pytest.approx(1.1 + 3 * cost(32))
        assert estimated_finish(0, 32, busy_until=0.0, now=1.0, batch_s=cost) == \
            pytest.approx(1.0 + cost(32))

    def test_bound_refuses_only_a_full_queue(self) -> None:
        adm = Admission("bound", max_queue_size=4)
        adm.check(queued=3, max_batch_size=2, busy_until=0, now=0, deadline=0, batch_s=cost)
        with pytest.raises(AdmissionRefused) as err:
            adm.check(queued=4, max_batch_size=2, busy_until=0, now=0, deadline=99,
                      batch_s=cost)
        assert err.value.cause == "queue_full"

    def test_deadline_refuses_what_would_expire(self) -> None:
        adm = Admission("deadline", max_queue_size=1000)
        kw = {"max_batch_size": 32, "busy_until": 0.0, "now": 0.0, "batch_s": cost}
        adm.check(queued=31, deadline=0.145, **kw)  # its own batch: 134 ms (+5% slack)
        with pytest.raises(AdmissionRefused) as err:
            adm.check(queued=32, deadline=0.145, **kw)  # a full batch ahead: 268 ms
        assert err.value.cause == "admission" and "after its deadline" in err.value.reason
