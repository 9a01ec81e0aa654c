"""The nodes a run's processes live on, as the supervisor sees them: one small interface with two
implementations. `LocalNodes` is this host alone, one `NodeAgent` in the harness's process that
writes straight into the run folder; `testbed.cluster.driver.RayNodes` is a Ray cluster, one
agent actor per node, whose answers carry the files' new bytes. The supervisor calls the
agents' methods (`testbed.agent.NodeAgent`) by name through `call`/`call_all` and never starts
a process itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.testbed.agent import SERVER, NodeAgent

CALL_TIMEOUT_S = 20.0
"""A Ray agent that does not answer a call this long is taken as lost."""
LOCAL = "local"
"""The one node of a local run."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Which node runs what: each device, and each server process (`SERVER`, IDN nodes)."""

    devices: dict[str, str]
    servers: dict[str, str]

    def used(self) -> set[str]:
        return set(self.devices.values()) | set(self.servers.values())


class Nodes(Protocol):
    """What the supervisor needs of the nodes, wherever they are."""

    distributed: bool
    """Processes on more than this host: events name their node, records are shipped."""
    poll_s: float
    """How long one poll of the agents may wait for news."""
    start_lead_s: float
    """How far ahead the common start instant is set, so every device hears it in time."""

    def describe(self) -> dict[str, Any]:
        """Fields the `run_start` event adds."""
        ...

    def place(self, cfg: ScenarioConfig, devices: Sequence[tuple[str, str]],
              idn_nodes: Sequence[str]) -> Placement:
        """Where each (device id, tier) and server process runs; `PlacementError` if the
        scenario does not fit these nodes."""
        ...

    def kill_targets_error(self, targets: Sequence[str]) -> str:
        """Why `kill_node` faults of these nodes cannot run here ("" if they can)."""
        ...

    def start(self, used: set[str], run_name: str,
              on_lost: Callable[[str, str], None]) -> dict[str, dict[str, Any]]:
        """Start an agent on each node in `used`; their `info`, by node (a node missing did
        not start). `on_lost` is told (node, why) when a node's agent is gone."""
        ...

    def host(self, node: str) -> str | None:
        """The address servers on `node` listen on (None: the scenario's)."""
        ...

    def placement_event(self, placement: Placement, tiers: dict[str, str]) -> dict[str, Any]:
        """The `placement` event ({} for a local run: one host holds everything)."""
        ...

    def call(self, node: str, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """One agent method; None if the node is (or becomes) lost."""
        ...

    def call_all(self, method: str, *args: Any,
                 timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """The same method on every live agent at once; the answers by node."""
        ...

    def kill(self, node: str) -> None:
        """End a node's agent and every process on it (a `kill_node` fault)."""
        ...

    def close(self) -> None:
        """Release the agents (after their `shutdown`)."""
        ...


@dataclass
class LocalNodes:
    """This host alone: one agent, called directly, writing into the run folder."""

    run_dir: Path
    distributed: bool = False
    poll_s: float = 0.2
    start_lead_s: float = 0.3
    agent: NodeAgent | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {}

    def place(self, cfg: ScenarioConfig, devices: Sequence[tuple[str, str]],
              idn_nodes: Sequence[str]) -> Placement:
        return Placement({d: LOCAL for d, _ in devices},
                         {name: LOCAL for name in (SERVER, *idn_nodes)})

    def kill_targets_error(self, targets: Sequence[str]) -> str:
        return "kill_node faults need a cluster run (--ray)" if targets else ""

    def start(self, used: set[str], run_name: str,
              on_lost: Callable[[str, str], None]) -> dict[str, dict[str, Any]]:
        self.agent = NodeAgent(LOCAL, run_name, root=self.run_dir)
        return {}

    def host(self, node: str) -> str | None:
        return None

    def placement_event(self, placement: Placement, tiers: dict[str, str]) -> dict[str, Any]:
        return {}

    def call(self, node: str, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        if self.agent is None:
            return None
        return getattr(self.agent, method)(*args)

    def call_all(self, method: str, *args: Any,
                 timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        return {LOCAL: self.call(LOCAL, method, *args)} if self.agent is not None else {}

    def kill(self, node: str) -> None:
        raise ValueError("a local run has no node to kill")

    def close(self) -> None:
        self.agent = None
