"""Inference delivery networks, pure parts: serving choice, gains, allocation policies, and
the topology's configuration."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cascade_testbed.common.config import ScenarioError, device_specs
from cascade_testbed.common.scenario_file import scenario_from_dict
from cascade_testbed.server.idn.alloc import (
    CatalogModel,
    Demand,
    MirrorAscent,
    Seen,
    dep_round,
    fits,
    greedy,
    project,
)
from cascade_testbed.server.idn.routing import Option, choose, expected_infer_ms, serving_cost_ms

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

    def test_a_probe_goes_up_whatever_the_costs_but_not_at_the_repository(self) -> None:
        opts = [Option("a", 10, True)]
        assert choose(opts, upstream_cost_ms=60, probe=True) is None
        assert choose(opts, upstream_cost_ms=None, probe=True) == "a"

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


def demand(alts: Sequence[float], slot_s: float = 1.0, path_ms: float = 5.0) -> Demand:
    return Demand.of([Seen(path_ms, a) for a in alts], CATALOG, alpha_ms=1000, slot_s=slot_s)


class TestGains:
    # at path 5 and alpha 1000: small costs 10 + 10 + 100 = 120, big 10 + 30 + 50 = 90

    def test_a_model_saves_only_on_the_requests_of_its_own_task(self) -> None:
        catalog = [CatalogModel("digit", 300, 0.90, infer_ms=10, capacity_sps=100),
                   CatalogModel("parity", 300, 0.99, infer_ms=10, capacity_sps=100,
                                task="parity")]
        seen = [Seen(5, 200)] * 10 + [Seen(5, 200, "parity")] * 30
        d = Demand.of(seen, catalog, alpha_ms=1000, slot_s=1.0)
        assert d.gain({"digit"}) == pytest.approx(10 * (200 - 120))
        assert d.gain({"parity"}) == pytest.approx(30 * (200 - 30))
        assert d.gain({"digit", "parity"}) == pytest.approx(d.gain({"digit"})
                                                            + d.gain({"parity"}))
        grad = d.subgradient({"digit": 0.5, "parity": 0.5})
        assert grad["parity"] > grad["digit"] > 0

    def test_gain_is_cost_saved_per_second_within_capacity(self) -> None:
        d = demand([200] * 40, slot_s=2)
        assert d.gain({"small"}) == pytest.approx(80 * 20 / 2)  # 10/s x 2 s requests
        assert d.gain({"big"}) == pytest.approx(110 * 40 / 2)
        # both: big is cheaper and reaches every request, small adds nothing
        assert d.gain({"small", "big"}) == pytest.approx(d.gain({"big"}))

    def test_capacity_goes_to_the_requests_with_most_to_gain(self) -> None:
        d = demand([300] * 5 + [130] * 20)
        assert d.reach[:, 0].sum() == 10 and d.reach[:5, 0].all()
        assert d.gain({"small"}) == pytest.approx(5 * 180 + 5 * 10)

    def test_requests_already_served_cheaper_upstream_give_no_gain(self) -> None:
        d = demand([50] * 10)
        assert d.gain({"small", "big"}) == 0.0
        assert d.subgradient({"small": 0.5, "big": 0.5}) == {"small": 0.0, "big": 0.0}

    def test_subgradient_stops_where_cheaper_options_cover_the_request(self) -> None:
        d = demand([200])
        # options: big (90), small (120), upstream (200)
        assert d.subgradient({"small": 0.3, "big": 0.5}) == \
            pytest.approx({"big": 30 + 80, "small": 80})
        assert d.subgradient({"small": 0.3, "big": 0.8}) == pytest.approx({"big": 30, "small": 0})
        assert d.subgradient({"small": 0.3, "big": 1.0}) == pytest.approx({"big": 0, "small": 0})

    def test_subgradient_is_a_supergradient_of_the_relaxation(self) -> None:
        rng = np.random.default_rng(0)
        d = demand([60, 95, 125, 200, 400] * 3)
        for _ in range(200):
            y = dict(zip(d.names, rng.random(2), strict=True))
            z = dict(zip(d.names, rng.random(2), strict=True))
            g = d.subgradient(y)
            assert d.relaxed(z) <= d.relaxed(y) + sum(g[m] * (z[m] - y[m]) for m in y) + 1e-6
        assert d.relaxed({"small": 1, "big": 1}) == pytest.approx(d.gain({"small", "big"}))


class TestAllocation:
    def test_greedy_takes_marginal_gain_per_kb_then_fills_the_memory(self) -> None:
        sizes = {"small": 300.0, "big": 1000.0}
        d = demand([200] * 40)
        assert greedy(d, sizes, 1000) == {"big"}
        # big first; small adds nothing at the margin but gains alone, so it fills the rest
        assert greedy(d, sizes, 1300) == {"small", "big"}
        assert greedy(demand([50] * 5), sizes, 5000) == set()
        assert greedy(demand([50] * 5), sizes, 5000, held=["small"]) == {"small"}

    def test_greedy_keeps_the_best_single_model_when_density_misleads(self) -> None:
        d = demand([160] * 10 + [95] * 90)   # small: 40 on 10 requests; big: 70 on 10, 5 on 90
        assert d.gain({"small"}) / 300 > d.gain({"big"}) / 1000
        assert d.gain({"big"}) > d.gain({"small"})
        assert greedy(d, {"small": 300.0, "big": 1000.0}, 1000) == {"big"}

    def test_projection_is_the_weighted_kl_projection(self) -> None:
        v = {"small": 1.0, "mid": 0.7, "big": 0.9}
        y = project(v, SIZES, 1000)
        assert sum(SIZES[m] * x for m, x in y.items()) == pytest.approx(1000, rel=1e-6)
        assert all(1e-3 <= x <= 1 for x in y.values())

        def kl(z: dict[str, float]) -> float:
            return float(sum(SIZES[m] * (z[m] * np.log(z[m] / v[m]) - z[m] + v[m]) for m in z))

        rng = np.random.default_rng(1)
        for _ in range(500):  # no feasible point is closer
            z = dict(zip(SIZES, rng.uniform(1e-3, 1, 3), strict=True))
            if sum(SIZES[m] * x for m, x in z.items()) <= 1000:
                assert kl(z) >= kl(y) - 1e-6
        assert project({"small": 0.5, "mid": 0.1, "big": 0.1}, SIZES, 5000) == \
            {"small": 0.5, "mid": 0.1, "big": 0.1}

    def test_dep_round_keeps_the_marginals_and_the_budget(self) -> None:
        rng = np.random.default_rng(2)
        sizes = {"a": 200.0, "b": 200.0, "c": 200.0}
        y = {"a": 0.5, "b": 0.7, "c": 0.8}          # 400 kB, the whole budget
        draws = [dep_round(y, sizes, 400, rng) for _ in range(4000)]
        assert all(len(x) == 2 for x in draws)
        for m in y:
            assert np.mean([m in x for x in draws]) == pytest.approx(y[m], abs=0.03)
        for budget in (400, 1000, 1500):  # unequal sizes: always within the budget
            y = project({"small": 0.9, "mid": 0.8, "big": 0.5}, SIZES, budget)
            assert all(fits(dep_round(y, SIZES, budget, rng), SIZES, budget)
                       for _ in range(300))
        assert dep_round({"small": 1.0, "mid": 1e-3, "big": 1e-3}, SIZES, 1000, rng) >= \
            {"small"}

    def test_models_larger_than_the_budget_are_never_allocated(self) -> None:
        ma = MirrorAscent(SIZES, 800, eta=1.0)
        assert set(ma.y) == set(SIZES) and ma.y["big"] == 0.0
        assert all("big" not in ma.update({"big": 100.0, "small": 1.0}) for _ in range(10))

    def test_mirror_ascent_converges_on_the_model_that_keeps_gaining(self) -> None:
        ma = MirrorAscent(SIZES, 1000, eta=1.0, seed=3)
        held = set()
        for _ in range(15):
            held = ma.update({"small": 10.0, "mid": 40.0, "big": 100.0})
            assert fits(held, SIZES, 1000)
        assert ma.y["big"] > 0.95 and held == {"big"}
        for _ in range(30):  # popularity shifts: now the small model is what pays
            held = ma.update({"small": 100.0, "mid": 1.0, "big": 0.0})
        assert held >= {"small"} and "big" not in held

    def test_the_step_is_per_kb_and_scaled_by_the_largest_seen(self) -> None:
        ma = MirrorAscent({"a": 100.0, "b": 400.0}, 1000, eta=1.0)
        ma.update({"a": 10.0, "b": 40.0})    # the same gain per kB: both grow alike
        assert ma.y["a"] == pytest.approx(ma.y["b"])
        before = dict(ma.y)
        ma.update({"a": 1.0, "b": 0.0})      # a tenth of the largest seen: a small step
        assert ma.y["a"] == pytest.approx(min(1.0, before["a"] * np.exp(0.1)))


ALTERNATING = (CatalogModel("wide", 500, 0.90, infer_ms=10, capacity_sps=100),
               CatalogModel("sharp", 500, 0.95, infer_ms=10, capacity_sps=5))
ALT_SIZES = {"wide": 500.0, "sharp": 500.0}


class TestRegret:
    """Where INFIDA's guarantee bites: a demand that alternates every slot."""

    def slot(self, t: int) -> Demand:
        # odd slots: many requests with a little to gain (wide wins: 2000 vs 350 per s);
        # even slots: a few with much to gain (sharp wins: 1150 vs 900)
        seen = [Seen(0, 130)] * 100 if t % 2 else [Seen(0, 300)] * 5
        return Demand.of(seen, ALTERNATING, alpha_ms=1000, slot_s=1)

    def test_mirror_ascent_approaches_the_best_static_where_greedy_lags(self) -> None:
        ma = MirrorAscent(ALT_SIZES, 500, eta=1.0, seed=4)
        held_ma: set[str] = ma.round()
        held_g: set[str] = set()
        got_ma = got_g = 0.0
        for t in range(1, 201):
            d = self.slot(t)
            got_ma += d.gain(held_ma)
            got_g += d.gain(held_g)
            held_ma = ma.update(d.subgradient(ma.y))
            held_g = greedy(d, ALT_SIZES, 500, held_g)
        static = max(sum(self.slot(t).gain({m}) for t in range(1, 201)) for m in ALT_SIZES)
        assert got_g < 0.5 * static      # always holding the last slot's winner
        assert got_ma > 0.9 * static


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
