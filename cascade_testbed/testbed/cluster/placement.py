"""Which node runs what: the server on the node the scenario names, each device on a node of its
tier (`[[cluster.nodes]]` selectors) or spread evenly over all nodes. Pure: the nodes come in
as plain data (what Ray reports), so every rule is tested without a cluster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cascade_testbed.common.config import ClusterNodes
from cascade_testbed.common.names import is_name

NAME_RESOURCE_PREFIX = "testbed-node-"
"""A node started with the resource `testbed-node-<name>` is called <name> in the run."""


class PlacementError(ValueError):
    """The cluster cannot hold the run as asked (no node for a tier, an unknown node)."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One alive Ray node, as the run calls it."""

    name: str
    node_id: str
    ip: str
    is_head: bool = False
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0.0))


def name_nodes(raw: Sequence[Mapping[str, Any]]) -> list[NodeInfo]:
    """Name the alive nodes of `ray.nodes()`-shaped entries (NodeID, NodeManagerAddress,
    Resources, Alive; `is_head` when known): a node's `testbed-node-<name>` resource names it,
    else the head is "head" and the others `node-<ip>` (`-2`, `-3`... when several share an
    IP, as on one host). Head first, then by name."""
    alive = [n for n in raw if n.get("Alive", True)]
    out: list[NodeInfo] = []
    taken: Counter[str] = Counter()
    for node in sorted(alive, key=lambda n: (not _is_head(n), str(n["NodeID"]))):
        resources = dict(node.get("Resources") or {})
        named = sorted(k.removeprefix(NAME_RESOURCE_PREFIX) for k in resources
                       if k.startswith(NAME_RESOURCE_PREFIX))
        ip = str(node.get("NodeManagerAddress", ""))
        if named and is_name(named[0]):
            base = named[0]
        elif _is_head(node):
            base = "head"
        else:
            base = "node-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in ip)[:50]
        taken[base] += 1
        name = base if taken[base] == 1 else f"{base}-{taken[base]}"
        out.append(NodeInfo(name, str(node["NodeID"]), ip, _is_head(node), resources))
    names = [n.name for n in out]
    if len(set(names)) != len(names):
        raise PlacementError(f"two nodes share a name: {sorted(names)}")
    return sorted(out, key=lambda n: (not n.is_head, n.name))


def _is_head(node: Mapping[str, Any]) -> bool:
    return bool(node.get("is_head")) or "node:__internal_head__" in (node.get("Resources") or {})


def pick_node(nodes: Sequence[NodeInfo], wanted: str, what: str) -> NodeInfo:
    """The node called `wanted`, else the first node that has the resource `wanted`; "" is the
    head node (or the first node if none is marked)."""
    if not nodes:
        raise PlacementError("the cluster has no alive node")
    if not wanted:
        return next((n for n in nodes if n.is_head), nodes[0])
    for node in nodes:
        if node.name == wanted:
            return node
    for node in nodes:
        if node.resources.get(wanted, 0) > 0:
            return node
    raise PlacementError(f"{what} {wanted!r} is neither a node ({', '.join(n.name for n in nodes)})"
                         " nor a resource any node has")


def place_devices(devices: Sequence[tuple[str, str]], nodes: Sequence[NodeInfo],
                  selectors: Sequence[ClusterNodes] = ()) -> dict[str, str]:
    """Node name for each (device id, tier): a tier named by selectors goes to the nodes that
    have one of their resources, any other tier to every node. Within that set each device
    goes to the node holding the fewest devices so far, among those the one with the fewest of
    its tier (then the earlier node): loads differ by at most one device and every node gets
    a mix of tiers, not one tier each when the tiers' cycle matches the node count."""
    if not nodes:
        raise PlacementError("the cluster has no alive node")
    by_tier: dict[str, list[str]] = {}
    for sel in selectors:
        for tier in sel.tiers:
            by_tier.setdefault(tier, []).append(sel.resource)
    order = [n.name for n in nodes]
    candidates: dict[str, list[str]] = {}
    for tier in dict.fromkeys(t for _, t in devices):
        if tier not in by_tier:
            candidates[tier] = order
            continue
        chosen = [n.name for n in nodes if any(n.resources.get(r, 0) > 0 for r in by_tier[tier])]
        if not chosen:
            raise PlacementError(f"no node has a resource of tier {tier!r} "
                                 f"({', '.join(by_tier[tier])})")
        candidates[tier] = chosen
    load = dict.fromkeys(order, 0)
    of_tier: Counter[tuple[str, str]] = Counter()
    placement: dict[str, str] = {}
    for device_id, tier in devices:
        node = min(candidates[tier], key=lambda n: (load[n], of_tier[n, tier], order.index(n)))
        load[node] += 1
        of_tier[node, tier] += 1
        placement[device_id] = node
    return placement


def place_idn_nodes(idn_nodes: Sequence[str], nodes: Sequence[NodeInfo],
                    wanted: Mapping[str, str], taken: Mapping[str, int]) -> dict[str, str]:
    """Node name for each IDN node below the repository: the node (or a node with the
    resource) that `[cluster.idn_nodes]` names for it, else the node running the fewest server
    processes so far (`taken` counts those already placed, the repository's), then the
    earlier node."""
    if not nodes:
        raise PlacementError("the cluster has no alive node")
    unknown = sorted(set(wanted) - set(idn_nodes))
    if unknown:
        raise PlacementError(f"cluster.idn_nodes names {unknown}, which are not idn nodes "
                             "below the repository")
    load = {n.name: taken.get(n.name, 0) for n in nodes}
    order = [n.name for n in nodes]
    out: dict[str, str] = {}
    for name in idn_nodes:
        if name in wanted:
            node = pick_node(nodes, wanted[name], f"cluster.idn_nodes.{name}").name
        else:
            node = min(order, key=lambda n: (load[n], order.index(n)))
        load[node] += 1
        out[name] = node
    return out


def placement_event(placement: Mapping[str, str], tiers: Mapping[str, str],
                    nodes: Sequence[NodeInfo], server: str,
                    idn_nodes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the run records of its placement (the `placement` event): enough to rebuild
    summary.json's `nodes` from the run folder alone."""
    idn = dict(idn_nodes or {})
    used = set(placement.values()) | {server} | set(idn.values())
    return {"server": server,
            "nodes": {n.name: {"ip": n.ip, "head": n.is_head} for n in nodes if n.name in used},
            "devices": {d: [node, tiers.get(d, "?")] for d, node in placement.items()},
            **({"idn_nodes": idn} if idn else {})}
