"""Inference delivery networks, pure parts: serving choice, gains, allocation policies, and
the topology's configuration."""

from __future__ import annotations

import pytest

from common.config import ScenarioError, device_specs
from common.scenario_file import scenario_from_dict
from server.idn.alloc import (
    CatalogModel,
    MirrorAscent,
    Seen,
    fits,
    greedy,
    model_gains,
    project,
    round_allocation,
)
from server.idn.routing import Option, choose, expected_infer_ms, serving_cost_ms

SIZES = {"small": 300.0, "mid": 700.0, "big": 1000.0}


class TestRouting:
    def test_cost_is_round_trip_plus_inference_plus_weighted_inaccuracy(self) -> None:
        assert serving_cost_ms(10, 30, 0.9, 500) == pytest.approx(20 + 30 + 50)

    def test_serves_here_with_the_cheapest_model_that_has_room_if_not_dearer_upstream(
            self) -> None:
        opts = [Option("a", 50, True), Option("b", 40, False), Option("c", 45, True)]
        assert choose(opts, upstream_cost_ms=60) == "c"
        assert choose(opts, upstream_cost_ms=44) is None
        assert choose([Option("a", 10, False)], upstream_cost_ms=60) is None
        assert choose([], upstream_cost_ms=60) is None

    def test_the_repository_serves_everything(self) -> None:
        assert choose([Option("a", 50, False), Option("b", 70, False)], None) == "a"
        assert choose([Option("a", 50, False), Option("b", 70, True)], None) == "b"
        assert choose([], None) is None

    def test_expected_inference_counts_full_batches_ahead(self) -> None:
        def batch_ms(b: int) -> float:
            return 2.0 + b
        assert expected_infer_ms(0, 8, batch_ms, 2) == 2 + 3
        assert expected_infer_ms(17, 8, batch_ms, 2) == 2 + 2 * 10 + 4


CATALOG = [CatalogModel("small", 300, 0.90, infer_ms=10, capacity_sps=10),
           CatalogModel("big", 1000, 0.95, infer_ms=30, capacity_sps=100)]


class TestGains:
    def test_gain_is_cost_saved_per_second_within_capacity(self) -> None:
        seen = [Seen(path_ms=5, alt_cost_ms=200)] * 40
        g = model_gains(seen, CATALOG, alpha_ms=1000, slot_s=2)
        # small saves 200 - (10 + 10 + 100) = 80 on at most 10 * 2 requests
        assert g["small"] == pytest.approx(80 * 20 / 2)
        # big saves 200 - (10 + 30 + 50) = 110 on all 40
        assert g["big"] == pytest.approx(110 * 40 / 2)

    def test_requests_already_served_cheaper_upstream_give_no_gain(self) -> None:
        g = model_gains([Seen(5, 50)] * 10, CATALOG, alpha_ms=1000, slot_s=1)
        assert g == {"small": 0.0, "big": 0.0}


class TestAllocation:
    def test_greedy_takes_gain_per_kb_while_it_fits(self) -> None:
        assert greedy({"small": 300, "mid": 1400, "big": 5000}, SIZES, 1000) == {"big"}
        assert greedy({"small": 600, "mid": 700, "big": 900}, SIZES, 1000) == {"small", "mid"}
        assert greedy({"small": 0, "mid": 0, "big": 0}, SIZES, 5000) == set()

    def test_projection_meets_the_budget_and_bounds(self) -> None:
        y = project({"small": 1.0, "mid": 1.0, "big": 1.0}, SIZES, 1000)
        assert sum(SIZES[m] * v for m, v in y.items()) == pytest.approx(1000, rel=1e-6)
        assert all(0 < v <= 1 for v in y.values())
        assert project({"small": 0.5, "mid": 0.1, "big": 0.1}, SIZES, 5000) == \
            {"small": 0.5, "mid": 0.1, "big": 0.1}

    def test_rounding_follows_the_draws_and_always_fits(self) -> None:
        y = {"big": 0.9, "mid": 0.8, "small": 0.2}
        assert round_allocation(y, SIZES, 1000, [0.5, 0.5, 0.5]) == {"big"}  # mid dropped
        assert round_allocation(y, SIZES, 2000, [0.5, 0.5, 0.5]) == {"big", "mid"}
        assert round_allocation(y, SIZES, 2000, [0.95, 0.1, 0.1]) == {"mid", "small"}

    def test_mirror_ascent_converges_on_the_model_that_keeps_gaining(self) -> None:
        ma = MirrorAscent(SIZES, 1000, eta=1.0, seed=3)
        held = set()
        for _ in range(15):
            held = ma.update({"small": 10.0, "mid": 40.0, "big": 100.0})
            assert fits(held, SIZES, 1000)
        assert ma.y["big"] > 0.95 and held == {"big"}
        for _ in range(15):  # popularity shifts: now the small model is what pays
            held = ma.update({"small": 100.0, "mid": 1.0, "big": 0.0})
        assert held >= {"small"} and "big" not in held


def idn(**over: object) -> dict[str, object]:
    nodes = [{"name": "cloud"}, {"name": "edge", "parent": "cloud", "link_ms": 5},
             {"name": "acc-a", "parent": "edge", "link_ms": 2, "devices": 1,
              "trace": [[0, 2.0], [10, 0.5]]},
             {"name": "acc-b", "parent": "edge", "link_ms": 2, "devices": 1}]
    return {"name": "t", "devices": {"count": 4}, "idn": {"nodes": nodes, **over}}


class TestTopology:
    def test_devices_attach_to_access_nodes_and_follow_their_popularity(self) -> None:
        cfg = scenario_from_dict(idn())
        specs = device_specs(cfg)
        assert [s.node for s in specs] == ["acc-a", "acc-b", "acc-a", "acc-b"]
        assert specs[0].arrival == "trace" and specs[0].trace_points == ((0, 20.0), (10, 5.0))
        assert specs[1].arrival == "poisson"
        assert cfg.idn.depth_ms("edge") == 2 and cfg.idn.depth_ms("cloud") == 7
        assert cfg.idn.root.name == "cloud"

    @pytest.mark.parametrize("nodes,match", [
        ([{"name": "a", "devices": 1}, {"name": "b"}], "exactly one"),
        ([{"name": "a", "devices": 1}, {"name": "b", "parent": "x"}], "not a node"),
        ([{"name": "r"}, {"name": "a", "parent": "b", "devices": 1},
          {"name": "b", "parent": "a"}], "cycle"),
        ([{"name": "r"}, {"name": "r", "parent": "r"}], "unique"),
    ])
    def test_bad_topologies_are_refused(self, nodes: list[dict[str, object]],
                                        match: str) -> None:
        with pytest.raises(ScenarioError, match=match):
            scenario_from_dict({"idn": {"nodes": nodes}})
