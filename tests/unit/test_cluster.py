"""The cluster path's pure parts, without Ray: naming nodes, placing the server and the devices
by tier, shipping files from a node's scratch folder into the run folder, and the `[cluster]`
and `kill_node` scenario fields."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from cascade_testbed.common.config import (
    ClusterConfig,
    ClusterNodes,
    FaultSpec,
    ScenarioConfig,
    ScenarioError,
    assign_tiers,
    check_ray_address,
    device_specs,
)
from cascade_testbed.common.records import read_journal, read_records
from cascade_testbed.common.scenario_file import scenario_from_dict, scenario_to_dict
from cascade_testbed.testbed.cluster.placement import (
    NodeInfo,
    PlacementError,
    name_nodes,
    pick_node,
    place_devices,
    place_idn_nodes,
    placement_event,
)
from cascade_testbed.testbed.faults import plan_faults
from cascade_testbed.testbed.results.nodes import node_figures
from cascade_testbed.testbed.shipping import BadChunk, Chunk, Sink, Tail, driver_path


def ray_node(node_id: str, ip: str = "127.0.0.1", head: bool = False, alive: bool = True,
             **resources: float) -> dict[str, object]:
    res = {"CPU": 1.0, **resources}
    if head:
        res["node:__internal_head__"] = 1.0
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": alive, "Resources": res}


def nodes(*specs: tuple[str, dict[str, float]]) -> list[NodeInfo]:
    return [NodeInfo(name, f"id-{name}", "10.0.0.1", i == 0, {"CPU": 2.0, **res})
            for i, (name, res) in enumerate(specs)]


class TestNaming:
    def test_named_by_resource_head_first(self) -> None:
        got = name_nodes([ray_node("b", **{"testbed-node-node2": 1}),
                          ray_node("a", **{"testbed-node-node1": 1}),
                          ray_node("z", head=True, **{"testbed-node-head": 1})])
        assert [n.name for n in got] == ["head", "node1", "node2"]
        assert got[0].is_head and not got[1].is_head
        assert got[1].node_id == "a"

    def test_unnamed_nodes_by_ip_with_suffixes_on_one_host(self) -> None:
        got = name_nodes([ray_node("c"), ray_node("b"), ray_node("a", head=True),
                          ray_node("d", ip="192.0.2.7")])
        assert [n.name for n in got] == ["head", "node-127.0.0.1", "node-127.0.0.1-2",
                                         "node-192.0.2.7"]

    def test_dead_nodes_are_left_out(self) -> None:
        got = name_nodes([ray_node("a", head=True), ray_node("b", alive=False)])
        assert [n.name for n in got] == ["head"]

    def test_a_name_that_is_not_a_name_is_not_used(self) -> None:
        got = name_nodes([ray_node("a", head=True, **{"testbed-node-../x": 1})])
        assert got[0].name == "head"


class TestPickNode:
    def test_default_is_the_head(self) -> None:
        ns = nodes(("head", {}), ("gpu", {"accel": 1}))
        assert pick_node(ns, "", "server").name == "head"

    def test_by_name_then_by_resource(self) -> None:
        ns = nodes(("head", {}), ("box", {"accel": 1}), ("box2", {"accel": 1}))
        assert pick_node(ns, "box2", "server").name == "box2"
        assert pick_node(ns, "accel", "server").name == "box"

    def test_unknown_says_which_nodes_exist(self) -> None:
        with pytest.raises(PlacementError, match="head, box"):
            pick_node(nodes(("head", {}), ("box", {})), "nope", "cluster.server_node")

    def test_empty_cluster(self) -> None:
        with pytest.raises(PlacementError, match="no alive node"):
            pick_node([], "", "server")


def devs(count: int, mix: dict[str, float]) -> list[tuple[str, str]]:
    return [(f"{t}-{i:03d}", t) for i, t in enumerate(assign_tiers(count, mix))]


class TestPlaceDevices:
    @pytest.mark.parametrize("count,n_nodes", list(itertools.product([0, 1, 2, 7, 30, 60, 200],
                                                                     [1, 2, 3, 4, 7])))
    def test_spread_evenly_without_selectors(self, count: int, n_nodes: int) -> None:
        ns = nodes(*((f"n{i}", {}) for i in range(n_nodes)))
        d = devs(count, {"low": 1, "mid": 1, "high": 1})
        placement = place_devices(d, ns)
        assert set(placement) == {x for x, _ in d}
        per_node = Counter(placement.values())
        loads = [per_node.get(n.name, 0) for n in ns]
        assert max(loads) - min(loads) <= 1
        assert place_devices(d, ns) == placement  # the same run always places the same way

    @pytest.mark.parametrize("n_nodes", [2, 3, 4])
    def test_every_node_gets_a_mix_of_tiers(self, n_nodes: int) -> None:
        ns = nodes(*((f"n{i}", {}) for i in range(n_nodes)))
        placement = place_devices(devs(30, {"low": 1, "mid": 1, "high": 1}), ns)
        for node in ns:
            tiers = Counter(d.split("-")[0] for d, n in placement.items() if n == node.name)
            assert set(tiers) == {"low", "mid", "high"}
            assert max(tiers.values()) - min(tiers.values()) <= 3

    def test_selectors_send_tiers_to_their_nodes(self) -> None:
        ns = nodes(("head", {}), ("boardA", {"boards": 4}), ("boardB", {"boards": 4}),
                   ("phone", {"phones": 8}))
        sel = [ClusterNodes("boards", ("low",)), ClusterNodes("phones", ("high",))]
        d = devs(60, {"low": 1, "mid": 1, "high": 1})
        placement = place_devices(d, ns, sel)
        tier_of = dict(d)
        for dev, node in placement.items():
            if tier_of[dev] == "low":
                assert node in ("boardA", "boardB")
            if tier_of[dev] == "high":
                assert node == "phone"
        lows = Counter(n for dev, n in placement.items() if tier_of[dev] == "low")
        assert lows == {"boardA": 10, "boardB": 10}
        # mid has no selector: it fills the nodes with the fewest devices (head first)
        mids = Counter(n for dev, n in placement.items() if tier_of[dev] == "mid")
        assert sum(mids.values()) == 20 and mids["head"] >= mids["phone"]

    def test_a_tier_may_have_several_selectors(self) -> None:
        ns = nodes(("head", {}), ("a", {"x": 1}), ("b", {"y": 1}))
        placement = place_devices(devs(6, {"low": 1}), ns,
                                  [ClusterNodes("x", ("low",)), ClusterNodes("y", ("low",))])
        assert Counter(placement.values()) == {"a": 3, "b": 3}

    def test_a_selector_no_node_has_is_an_error(self) -> None:
        with pytest.raises(PlacementError, match=r"tier .low.*boards"):
            place_devices(devs(3, {"low": 1}), nodes(("head", {})),
                          [ClusterNodes("boards", ("low",))])

    def test_no_nodes(self) -> None:
        with pytest.raises(PlacementError):
            place_devices(devs(3, {"low": 1}), [])

    def test_node_figures_from_the_placement_event(self) -> None:
        ns = nodes(("head", {}), ("node1", {}), ("idle", {"x": 1}))
        d = devs(6, {"low": 1, "mid": 1})
        placement = place_devices(d, ns[:2])
        event = placement_event(placement, dict(d), ns, "head")
        assert set(event["nodes"]) == {"head", "node1"}  # idle runs nothing
        per_device = [{"device_id": dev, "samples": 9, "generated": 10, "aborted": 1,
                       "lost": 0, "slo_satisfaction": 0.5 if node == "node1" else 1.0}
                      for dev, node in placement.items()]
        table = node_figures(json.loads(json.dumps(event)), per_device, {"node1"})
        assert table["head"] == {"devices": 3, "ip": "10.0.0.1", "head": True,
                                 "tiers": {"low": 2, "mid": 1}, "generated": 30,
                                 "completed": 27, "aborted": 3, "lost": 0,
                                 "slo_satisfaction": 1.0, "server": True, "lost_node": False}
        assert table["node1"]["lost_node"] and not table["node1"]["server"]
        assert table["node1"]["slo_satisfaction"] == 0.5
        assert table["node1"]["tiers"] == {"low": 1, "mid": 2}

    def test_a_node_whose_devices_left_no_records_still_counts_them(self) -> None:
        ns = nodes(("head", {}), ("node1", {}))
        event = placement_event({"a": "node1"}, {"a": "low"}, ns, "head")
        table = node_figures(event, [], set())
        assert table == {"node1": {"devices": 1, "ip": "10.0.0.1", "head": False,
                                   "tiers": {"low": 1}, "generated": 0, "completed": 0,
                                   "aborted": 0, "lost": 0, "slo_satisfaction": None,
                                   "server": False, "lost_node": False}}


class TestPlaceIdnNodes:
    def test_unnamed_ones_go_to_the_node_with_the_fewest_servers(self) -> None:
        three = nodes(("head", {}), ("node1", {}), ("node2", {}))
        placed = place_idn_nodes(["r", "e1", "e2", "a1"], three, {}, {"head": 1})
        assert placed == {"r": "node1", "e1": "node2", "e2": "head", "a1": "node1"}

    def test_a_mapping_names_a_node_or_a_resource(self) -> None:
        two = nodes(("head", {}), ("node1", {"gpu": 1.0}))
        placed = place_idn_nodes(["r", "e1", "e2"], two, {"r": "gpu", "e1": "head"},
                                 {"head": 1})
        assert placed == {"r": "node1", "e1": "head", "e2": "node1"}

    def test_unknown_names_are_refused_saying_which(self) -> None:
        two = nodes(("head", {}), ("node1", {}))
        with pytest.raises(PlacementError, match="edge9"):
            place_idn_nodes(["e1"], two, {"edge9": "head"}, {})
        with pytest.raises(PlacementError, match="node7"):
            place_idn_nodes(["e1"], two, {"e1": "node7"}, {})

    def test_the_placement_event_names_them_and_the_figures_say_where(self) -> None:
        two = nodes(("head", {}), ("node1", {}))
        event = placement_event({"low-000": "node1"}, {"low-000": "low"}, two, "head",
                                {"e1": "node1"})
        assert event["idn_nodes"] == {"e1": "node1"} and set(event["nodes"]) == {"head",
                                                                                  "node1"}
        row = {"device_id": "low-000", "generated": 3, "samples": 3, "aborted": 0,
               "slo_satisfaction": 1.0}
        assert node_figures(event, [row], set())["node1"]["idn_nodes"] == ["e1"]


class TestShipping:
    def test_ships_whole_lines_then_the_rest_at_the_end(self, tmp_path: Path) -> None:
        node, run = tmp_path / "node", tmp_path / "run"
        (node / "samples").mkdir(parents=True)
        gen = node / "samples" / "low-000.gen"
        gen.write_bytes(b"0\n1\n2")
        tail, sink = Tail(node), Sink(run)
        for c in tail.chunks():
            sink.write("n1", c)
        assert (run / "samples" / "low-000.gen").read_bytes() == b"0\n1\n"
        assert tail.chunks() == []
        with gen.open("ab") as f:
            f.write(b"\n3\n4")
        for c in tail.chunks():
            sink.write("n1", c)
        assert read_journal(run / "samples" / "low-000.gen") == {0, 1, 2, 3}
        for c in tail.chunks(final=True):
            sink.write("n1", c)
        assert (run / "samples" / "low-000.gen").read_bytes() == gen.read_bytes()

    def test_records_and_outcomes_arrive_under_the_local_names(self, tmp_path: Path) -> None:
        node, run = tmp_path / "node", tmp_path / "run"
        for d in ("samples", "devices", "logs"):
            (node / d).mkdir(parents=True)
        header = "device_id,tier\n"
        (node / "samples" / "mid-001~1.csv").write_text(header)
        (node / "devices" / "mid-001~1.json").write_text('{"generated": 3')  # half written
        (node / "devices" / ".mid-001.json.x.tmp").write_text("junk")
        (node / "logs" / "devices.log").write_text("a line\n")
        (node / "logs" / "server.log").write_text("server line\n")
        (node / "events.server.jsonl").write_text('{"t": 1}\n')
        tail, sink = Tail(node), Sink(run)
        for c in tail.chunks():
            sink.write("node1", c)
        assert (run / "samples" / "mid-001~1.csv").read_text() == header
        assert not (run / "devices").exists()  # not until it parses
        assert (run / "logs" / "devices.node1.log").read_text() == "a line\n"
        assert (run / "logs" / "server.log").read_text() == "server line\n"
        assert (run / "events.server.jsonl").read_text() == '{"t": 1}\n'
        (node / "devices" / "mid-001~1.json").write_text('{"generated": 3}')
        for c in tail.chunks():
            sink.write("node1", c)
        assert json.loads((run / "devices" / "mid-001~1.json").read_text()) == {"generated": 3}
        assert tail.chunks() == [] and tail.chunks(final=True) == []
        assert not (run / "devices" / ".mid-001.json.x.tmp").exists()

    def test_empty_files_arrive_at_the_end(self, tmp_path: Path) -> None:
        node, run = tmp_path / "node", tmp_path / "run"
        (node / "logs").mkdir(parents=True)
        (node / "logs" / "devices.log").touch()
        tail, sink = Tail(node), Sink(run)
        assert tail.chunks() == []
        for c in tail.chunks(final=True):
            sink.write("n1", c)
        assert (run / "logs" / "devices.n1.log").read_bytes() == b""
        assert tail.chunks(final=True) == []

    def test_a_resent_chunk_is_idempotent_and_a_gap_is_refused(self, tmp_path: Path) -> None:
        sink = Sink(tmp_path)
        sink.write("n", Chunk("samples/a.gen", 0, b"1\n"))
        sink.write("n", Chunk("samples/a.gen", 0, b"1\n"))
        sink.write("n", Chunk("samples/a.gen", 2, b"2\n"))
        assert (tmp_path / "samples" / "a.gen").read_bytes() == b"1\n2\n"
        with pytest.raises(BadChunk, match="gap"):
            sink.write("n", Chunk("samples/a.gen", 9, b"3\n"))

    @pytest.mark.parametrize("rel", ["../x.csv", "samples/../../x.csv", "/etc/passwd",
                                     "samples/a/b.csv", "scenario.toml", "summary.json",
                                     "samples/.hidden.csv", "samples/a~x.csv", "other/a.csv",
                                     "samples/a.exe", "events.x.jsonl/../y"])
    def test_paths_outside_what_agents_ship_are_refused(self, tmp_path: Path,
                                                        rel: str) -> None:
        with pytest.raises(ValueError):
            Sink(tmp_path).write("n", Chunk(rel, 0, b"x\n"))
        assert not any(p.is_file() for p in tmp_path.rglob("*"))

    def test_driver_path(self) -> None:
        assert driver_path("n2", "samples/low-000~2.csv") == (("samples", "low-000~2"), ".csv")
        assert driver_path("n2", "logs/devices.log") == (("logs", "devices.n2"), ".log")
        assert driver_path("n2", "events.server.jsonl") == (("events.server",), ".jsonl")

    def test_large_files_come_in_bounded_chunks(self, tmp_path: Path) -> None:
        node, run = tmp_path / "node", tmp_path / "run"
        (node / "samples").mkdir(parents=True)
        big = b"".join(b"%d\n" % i for i in range(400_000))  # ~2.6 MB
        (node / "samples" / "x.gen").write_bytes(big)
        tail, sink = Tail(node), Sink(run)
        rounds = 0
        while chunks := tail.chunks():
            rounds += 1
            assert all(len(c.data) <= 1 << 20 for c in chunks)
            for c in chunks:
                sink.write("n", c)
        assert rounds >= 3
        assert (run / "samples" / "x.gen").read_bytes() == big

    def test_torn_csv_row_reads_as_torn(self, tmp_path: Path) -> None:
        node, run = tmp_path / "node", tmp_path / "run"
        (node / "samples").mkdir(parents=True)
        from cascade_testbed.common.records import FIELDS

        (node / "samples" / "a.csv").write_text(",".join(FIELDS) + "\nlow-000,low,0")
        tail, sink = Tail(node), Sink(run)
        for c in tail.chunks(final=True):
            sink.write("n", c)
        assert read_records(run / "samples" / "a.csv") == ([], 1)


class TestScenarioFields:
    @pytest.mark.parametrize("address", ["", "auto", "local:1", "local:16",
                                         "ray://10.0.0.5:10001", "ray://head.lan:10001",
                                         "ray://[::1]:10001"])
    def test_good_addresses(self, address: str) -> None:
        assert check_ray_address(address) == address

    @pytest.mark.parametrize("address", ["local:0", "local:17", "local:x", "local:", "ray://",
                                         "ray://h", "ray://h:0", "ray://h:99999", "http://h:1",
                                         "ray://h h:1", "ray://h/x:1", "ray://h:1\n", "x"])
    def test_bad_addresses(self, address: str) -> None:
        with pytest.raises(ScenarioError, match="ray address"):
            check_ray_address(address)

    def test_cluster_table_round_trips(self) -> None:
        cfg = scenario_from_dict({"cluster": {
            "ray": "local:3", "server_node": "head",
            "nodes": [{"resource": "boards", "tiers": ["low"]}]}})
        assert cfg.cluster == ClusterConfig("local:3", "head", (ClusterNodes("boards",
                                                                             ("low",)),))
        assert scenario_from_dict(scenario_to_dict(cfg)) == cfg
        assert ScenarioConfig().cluster.ray == ""

    @pytest.mark.parametrize("cluster,needle", [
        ({"ray": "lokal:3"}, "ray address"),
        ({"nodes": [{"resource": "boards", "tiers": ["tiny"]}]}, "unknown tiers"),
        ({"nodes": [{"resource": "../x", "tiers": ["low"]}]}, "must be a name"),
        ({"server_node": "a b"}, "must be a name"),
        ({"nodes": [{"tiers": ["low"]}]}, "missing keys"),
        ({"idn_nodes": {"../edge": "node1"}}, "must be a name"),
        ({"idn_nodes": {"edge": "node 1"}}, "must be a name"),
        ({"idn_nodes": ["edge"]}, "must be a table"),
    ])
    def test_bad_cluster_tables(self, cluster: dict[str, object], needle: str) -> None:
        with pytest.raises(ScenarioError, match=needle):
            scenario_from_dict({"cluster": cluster})

    def test_kill_node_needs_a_node_and_only_it_takes_one(self) -> None:
        with pytest.raises(ScenarioError, match="kill_node"):
            FaultSpec(kind="kill_node", at_s=1)
        with pytest.raises(ScenarioError, match="kill_node"):
            FaultSpec(kind="kill_device", at_s=1, node="n1")
        with pytest.raises(ScenarioError, match="must be a name"):
            FaultSpec(kind="kill_node", at_s=1, node="../n1")

    def test_kill_node_is_planned_once_per_occurrence(self) -> None:
        cfg = ScenarioConfig(duration_s=10, faults=(
            FaultSpec(kind="kill_node", at_s=4, node="node2"),
            FaultSpec(kind="kill_node", at_s=3, every_s=4, node="node1")))
        plan = plan_faults(cfg, [(s.device_id, s.tier) for s in device_specs(cfg)])
        assert [(a.at_s, a.kind, a.target) for a in plan.actions] == [
            (3.0, "kill_node", "node1"), (4.0, "kill_node", "node2"),
            (7.0, "kill_node", "node1")]
        assert plan.injected == 3
