"""Ray, seen from the driver: import it (only under `--ray`), join or create the cluster, list
its nodes, start pinned agents, tear down. The one module besides the agent's wrapping that
knows Ray's API, so the rest of the cluster path reads as plain harness code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cascade_testbed.common.config import check_ray_address
from cascade_testbed.testbed.cluster.placement import NAME_RESOURCE_PREFIX, NodeInfo, name_nodes

LOCAL_NODE_OBJECT_STORE_BYTES = 80 * 2**20
"""Per node of a `local:N` cluster: the run ships little through Ray's object store, and
Ray's default (30 % of memory per node) would reserve most of a small host."""
AGENT_START_TIMEOUT_S = 60.0
LOCAL_IP = "127.0.0.1"
"""A `local:N` cluster (its nodes, the server, the devices' traffic) stays on loopback."""
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
"""No usage report leaves the host; workers' lines are not folded together."""


class RayMissing(RuntimeError):
    """`--ray` without Ray installed."""


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""For `local:N`: Ray's switch for a single-host cluster. Without it Ray replaces 127.0.0.1 by
the host's interface address wherever it resolves one (the GCS address the driver dials, the
node IPs), so the cluster's traffic would leave loopback; with it every address stays
127.0.0.1. Read when Ray is imported, and inherited by the processes the cluster starts."""


def import_ray(local: bool = False) -> Any:
    for key, value in {**RAY_ENV, **(LOOPBACK_ENV if local else {})}.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise RayMissing("--ray needs Ray, an optional extra: pip install -e '.[ray]'") \
            from None
    return ray


def local_nodes(address: str) -> int | None:
    """N of `local:N`, else None."""
    check_ray_address(address)
    return int(address.removeprefix("local:")) if address.startswith("local:") else None


@dataclass
class RaySession:
    """The driver's connection to a cluster (and the cluster itself, for `local:N`)."""

    ray: Any
    address: str
    local: Any = None
    """`ray.cluster_utils.Cluster` of a `local:N` session, shut down with the session."""
    nodes: list[NodeInfo] = field(default_factory=list)

    @classmethod
    def open(cls, address: str) -> RaySession:
        n = local_nodes(address)
        ray = import_ray(local=n is not None)
        session = cls(ray, address)
        try:
            if n is None:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING")
            else:
                session.local = start_local_cluster(n)
                ray.init(address=session.local.address, log_to_driver=False,
                         logging_level="WARNING", _node_ip_address=LOCAL_IP)
            session.refresh()
        except BaseException:
            session.close()
            raise
        return session

    def refresh(self) -> list[NodeInfo]:
        self.nodes = name_nodes([{**n, "is_head": n.get("is_head", False)}
                                 for n in self.ray.nodes()])
        return self.nodes

    def agent(self, node: NodeInfo, run_name: str) -> Any:
        """A `NodeAgent` actor on `node` (hard affinity: it runs there or not at all)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from cascade_testbed.testbed.agent import NodeAgent

        remote = self.ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1)(NodeAgent)
        return remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        ).remote(node.name, run_name)

    def close(self) -> None:
        try:
            if self.ray.is_initialized():
                self.ray.shutdown()
        finally:
            if self.local is not None:
                self.local.shutdown()
                self.local = None


def start_local_cluster(n: int) -> Any:
    """N Ray nodes on this host (Ray's own multi-node-on-one-host support), each with one CPU
    and a `testbed-node-<name>` resource naming it: head, node1, node2, ... Every node listens
    on 127.0.0.1 only."""
    from ray.cluster_utils import Cluster

    common: dict[str, Any] = {"num_cpus": 1, "node_ip_address": LOCAL_IP,
                              "object_store_memory": LOCAL_NODE_OBJECT_STORE_BYTES}
    cluster: Any = Cluster(initialize_head=True, head_node_args={
        **common, "include_dashboard": False,
        "resources": {f"{NAME_RESOURCE_PREFIX}head": 1}})
    try:
        for i in range(1, n):
            cluster.add_node(**common, resources={f"{NAME_RESOURCE_PREFIX}node{i}": 1})
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster
