"""A run spread over a Ray cluster (`testbed up/run/sweep --ray`): the nodes of the supervisor's
node interface as Ray actors.

`RayNodes` places the run's processes (devices by tier selectors, the server on
`cluster.server_node`, IDN nodes by `[cluster.idn_nodes]` or the least-loaded node), starts one
`testbed.agent.NodeAgent` actor on each node that has work, and turns the supervisor's calls
into Ray calls with a timeout: an agent that is gone makes its node lost. The loop itself is
`testbed.supervisor`'s, the same as a local run's. docs/cluster.md has the details.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.testbed.agent import SERVER
from cascade_testbed.testbed.cluster.placement import (
    pick_node,
    place_devices,
    place_idn_nodes,
    placement_event,
)
from cascade_testbed.testbed.cluster.ray_session import (
    AGENT_START_TIMEOUT_S,
    RayMissing,
    RaySession,
)
from cascade_testbed.testbed.nodes import CALL_TIMEOUT_S, Placement
from cascade_testbed.testbed.supervisor import Progress, RunError, RunResult, supervise

POLL_S = 0.5
"""How often the supervisor asks every agent for news (and records)."""
START_LEAD_S = 1.5
"""The common start instant is this far ahead: the `start` commands cross Ray first."""


@dataclass
class RayNodes:
    """The nodes of a Ray cluster, one agent actor on each node that runs part of the run."""

    session: RaySession
    distributed: bool = True
    poll_s: float = POLL_S
    start_lead_s: float = START_LEAD_S
    on_lost: Callable[[str, str], None] | None = None
    agents: dict[str, Any] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)

    def describe(self) -> dict[str, Any]:
        return {"ray": self.session.address,
                "nodes": {n.name: n.ip for n in self.session.nodes}}

    def place(self, cfg: ScenarioConfig, devices: Sequence[tuple[str, str]],
              idn_nodes: Sequence[str]) -> Placement:
        nodes = self.session.nodes
        server = pick_node(nodes, cfg.cluster.server_node, "cluster.server_node").name
        return Placement(place_devices(devices, nodes, cfg.cluster.nodes), {
            SERVER: server,
            **place_idn_nodes(idn_nodes, nodes, cfg.cluster.idn_nodes, {server: 1})})

    def kill_targets_error(self, targets: Sequence[str]) -> str:
        unknown = sorted(set(targets) - {n.name for n in self.session.nodes})
        if not unknown:
            return ""
        return (f"kill_node names unknown nodes {unknown}; the cluster has "
                f"{', '.join(n.name for n in self.session.nodes)}")

    def start(self, used: set[str], run_name: str,
              on_lost: Callable[[str, str], None]) -> dict[str, dict[str, Any]]:
        self.on_lost = on_lost
        for node in self.session.nodes:
            if node.name in used:
                self.agents[node.name] = self.session.agent(node, run_name)
        return self.call_all("info", timeout=AGENT_START_TIMEOUT_S)

    def host(self, node: str) -> str | None:
        return next(n.ip for n in self.session.nodes if n.name == node)

    def placement_event(self, placement: Placement, tiers: dict[str, str]) -> dict[str, Any]:
        return placement_event(placement.devices, tiers, self.session.nodes,
                               placement.servers[SERVER],
                               {k: v for k, v in placement.servers.items() if k != SERVER})

    def call(self, node: str, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        agent = self.agents.get(node)
        if agent is None or node in self.lost:
            return None
        ray = self.session.ray
        try:
            return ray.get(getattr(agent, method).remote(*args), timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                ray.exceptions.RayTaskError) as exc:
            self._lose(node, f"{type(exc).__name__} in {method}")
            return None

    def call_all(self, method: str, *args: Any,
                 timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        ray = self.session.ray
        refs = {node: getattr(agent, method).remote(*args)
                for node, agent in self.agents.items() if node not in self.lost}
        out = {}
        deadline = time.monotonic() + timeout
        for node, ref in refs.items():
            try:
                out[node] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                    ray.exceptions.RayTaskError) as exc:
                self._lose(node, f"{type(exc).__name__} in {method}")
        return out

    def kill(self, node: str) -> None:
        self.session.ray.kill(self.agents[node], no_restart=True)
        self.lost.add(node)

    def close(self) -> None:
        for agent in self.agents.values():
            with contextlib.suppress(Exception):  # already gone with its node
                self.session.ray.kill(agent, no_restart=True)
        self.agents.clear()

    def _lose(self, node: str, why: str) -> None:
        if node not in self.lost:
            self.lost.add(node)
            if self.on_lost is not None:
                self.on_lost(node, why)


def run_on_cluster(cfg: ScenarioConfig, run_dir: Path, address: str,
                   progress: Progress | None = None, *, checked: bool = False,
                   on_listening: Callable[[str], None] | None = None) -> RunResult:
    """Run one scenario over the Ray cluster at `address` (see `check_ray_address`) and write
    its run folder here, as `testbed.orchestrator.run_scenario` does on this host."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not empty")
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, ray=address))
    try:
        session = RaySession.open(address)
    except RayMissing as exc:
        raise RunError(str(exc)) from None
    except Exception as exc:  # Ray says why in its own exception types
        raise RunError(f"cannot reach the Ray cluster {address}: "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    try:
        return supervise(cfg, run_dir, RayNodes(session), progress, checked=checked,
                         on_listening=on_listening)
    finally:
        session.close()
