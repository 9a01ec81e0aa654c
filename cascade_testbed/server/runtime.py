"""Everything one running server holds, built at startup and shared by the handlers: its
models, batcher and controller, the control loop that drives the policy, and the one place a
policy's decision is applied."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.common.config import (
    FairnessConfig,
    IdnConfig,
    PolicyConfig,
    ScenarioConfig,
    ServerConfig,
)
from cascade_testbed.common.events import EventLog
from cascade_testbed.common.gear_plan import CASCADE_NAME
from cascade_testbed.common.modelzoo import Zoo, ZooError
from cascade_testbed.server.batcher import Batcher
from cascade_testbed.server.control import Controller, every
from cascade_testbed.server.early_exit.batcher import EarlyExitBatcher
from cascade_testbed.server.fairness import RateLimits
from cascade_testbed.server.guard import ConnectionGuard
from cascade_testbed.server.heavy_model import ConfidenceTier, ServedModel
from cascade_testbed.server.held import HeldBudget
from cascade_testbed.server.idn.node import IdnNodeRuntime
from cascade_testbed.server.replicas import Autoscaler
from cascade_testbed.server.scheduling.base import (
    DeviceInfo,
    HeavyOption,
    PolicyDecision,
    ServerWindow,
    accuracy_optimal_threshold,
    curve_from_card,
    curves_from_card,
)
from cascade_testbed.server.stats import ServerStats


@dataclass(frozen=True)
class ServerSettings:
    server: ServerConfig = field(default_factory=ServerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    slo_ms: float = 150.0
    zoo: str | None = None
    token: str = ""
    """Devices must present it in `hello`; empty accepts any (for hand-run servers)."""
    tier_thresholds: dict[str, float] = field(default_factory=dict)
    """Initial thresholds the scenario sets per tier; other tiers take their card's default."""
    tier_tasks: dict[str, str] = field(default_factory=dict)
    """The task of each tier's devices (tiers without one: the dataset's own labels)."""
    events_path: Path | None = None
    idn: IdnConfig = field(default_factory=IdnConfig)
    idn_node: str = ""
    """This server is that node of the scenario's IDN ("" outside an IDN)."""
    parent_url: str = ""
    """The IDN parent's URL (not for the repository)."""
    seed: int = 0
    public_metrics: bool = False
    """Serve /v1/status and /metrics without the token (they list device ids and load)."""

    @classmethod
    def from_scenario(cls, cfg: ScenarioConfig, token: str = "",
                      events_path: Path | None = None, idn_node: str = "",
                      parent_url: str = "") -> ServerSettings:
        if cfg.idn.nodes and not idn_node:
            idn_node = cfg.idn.root.name
        return cls(server=cfg.server, policy=cfg.policy, slo_ms=cfg.slo_ms, zoo=cfg.zoo,
                   token=token, events_path=events_path,
                   tier_thresholds={t: s.threshold for t, s in cfg.tiers.items()
                                    if s.threshold is not None},
                   tier_tasks={t: s.task for t, s in cfg.tiers.items() if s.task},
                   idn=cfg.idn, idn_node=idn_node, parent_url=parent_url, seed=cfg.seed)


@dataclass
class Runtime:
    settings: ServerSettings
    zoo: Zoo
    models: dict[str, ServedModel]
    """Every heavy model loaded; the batcher runs one of them at a time."""
    profiles: dict[str, BatchProfile | None]
    stats: ServerStats
    batcher: Batcher | EarlyExitBatcher
    controller: Controller
    events: EventLog
    started_at: float
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    idn: IdnNodeRuntime | None = None
    """Set when this server is a node of an inference delivery network."""
    autoscaler: Autoscaler | None = None
    """The shared autoscaling rule, when the scenario turns it on."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    limits: RateLimits = field(default_factory=lambda: RateLimits(FairnessConfig()))
    """Each connected device's request budget (`server.fairness`)."""
    held_budget: HeldBudget = field(default_factory=lambda: HeldBudget(128 * 2**20))
    """Bytes of held uplink messages over every connection (`server.max_held_mb`)."""

    def start(self, clock: Callable[[], float]) -> None:
        """Start batching, the control loop and (in an IDN) the node's own loop."""
        self.tasks = [
            asyncio.create_task(self.batcher.run(), name="batcher"),
            asyncio.create_task(every(self.controller.interval_s,
                                      lambda: self.control_step(clock()),
                                      f"policy {self.controller.policy.name}"),
                                name="controller")]
        if self.idn is not None:
            self.tasks.append(asyncio.create_task(self.idn.run(), name="idn"))

    async def stop(self) -> None:
        """Stop the loops, answer what is still queued, close the event log."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.idn is not None:
            await self.idn.close()
        await self.batcher.close()
        self.events.emit("server_stop", totals=self.status()["totals"])
        self.events.close()

    def server_window(self, now: float) -> ServerWindow:
        """The server over the control interval ending `now`, as the policy sees it."""
        return self.stats.take_window(now, len(self.batcher.queue), self.batcher.queue.max_size,
                                      self.batcher.policy.max_batch_size, self.batcher.active)

    def control_step(self, now: float) -> PolicyDecision:
        window = self.server_window(now)
        decision = self.controller.step(now, window, self.model.name, self.heavy_options())
        self.apply(decision, now)
        if decision.replicas is None and self.autoscaler is not None:
            self.autoscale(now, window)
        return decision

    def apply(self, decision: PolicyDecision, now: float | None = None) -> None:
        """What a decision asks of the server beyond thresholds (the controller sends those)."""
        if decision.heavy_model:
            self.switch_model(decision.heavy_model, decision.note)
        if decision.max_batch_size is not None:
            self.batcher.set_max_batch_size(decision.max_batch_size)
        if decision.replicas is not None:
            self.set_replicas(decision.replicas, decision.note)

    def autoscale(self, now: float, window: ServerWindow) -> None:
        """The shared autoscaling rule: replicas for the arrival rate and backlog at the
        target utilisation of one replica's capacity at the largest batch."""
        assert self.autoscaler is not None
        size = self.batcher.policy.max_batch_size
        batch_s = self.batcher.batch_s(size)
        capacity = size / batch_s if batch_s > 0 else float("inf")
        wanted = self.autoscaler.rule.wanted(window.arrival_rate, window.queue_len, capacity)
        n = self.autoscaler.decide(now, self.batcher.active, wanted)
        self.set_replicas(n, f"autoscale: {window.arrival_rate:.0f} samples/s, queue "
                             f"{window.queue_len}, {capacity:.0f} samples/s per replica")

    def set_replicas(self, n: int, reason: str) -> None:
        if n == self.batcher.active:
            return
        previous = self.batcher.active
        self.batcher.set_replicas(n)
        self.events.emit("replicas", previous=previous, replicas=self.batcher.active,
                         reason=reason)

    @property
    def model(self) -> ServedModel:
        return self.batcher.model

    def heavy_options(self) -> dict[str, HeavyOption]:
        """What a policy may switch to: accuracy and capacity at the largest batch."""
        size = self.batcher.policy.max_batch_size
        out = {}
        for name, model in self.models.items():
            profile = self.profiles[name]
            batch_s = profile.target_s(size) if profile else self.batcher.batch_s(size)
            out[name] = HeavyOption(name, model.card.get("accuracy", {}).get("val"),
                                    size / batch_s if batch_s > 0 else float("inf"))
        return out

    def switch_model(self, name: str, reason: str) -> bool:
        """Run `name` from the next batch on: a loaded model, or a server-side cascade of two
        (`first>final@theta`, built on first use); False if neither, or already running."""
        if name not in self.models:
            tier = self._cascade(name)
            if tier is None:
                return False
            self.models[name], self.profiles[name] = tier, tier.profile
        if name == self.model.name:
            return False
        old = self.model.name
        self.batcher.use(self.models[name], self.profiles[name])
        self.stats.on_model_switch(name)
        self.events.emit("model_switch", previous=old, model=name, reason=reason)
        return True

    def _cascade(self, name: str) -> ConfidenceTier | None:
        match = CASCADE_NAME.fullmatch(name)
        if match is None:
            return None
        first, final, theta = match.group(1), match.group(2), float(match.group(3))
        plain = {n: m for n, m in self.models.items() if CASCADE_NAME.fullmatch(n) is None}
        if first not in plain or final not in plain or first == final:
            return None
        return ConfidenceTier(plain[first], plain[final], theta, self.profiles)

    def device_info(self, hello: wire.Hello) -> DeviceInfo:
        try:
            card = self.zoo.card(hello.model)
        except ZooError:
            card = {}  # a device with its own model: no curve, the policy works without one
        curves = curves_from_card(card)
        default = next(iter(self.models))
        curve = curves.get(default) or curve_from_card(card)
        initial = self.settings.tier_thresholds.get(hello.tier)
        return DeviceInfo(
            device_id=hello.device_id, tier=hello.tier, model=hello.model,
            light_accuracy=card.get("accuracy", {}).get("val"), curve=curve,
            initial_threshold=initial if initial is not None
            else accuracy_optimal_threshold(curve), curves=curves)

    def status(self) -> dict[str, Any]:
        window = self.controller.last_server_window
        totals = self.stats.totals
        return {
            **self.controller.status(),
            "heavy_model": self.model.name,
            "heavy_models": list(self.models),
            "queue": {"length": len(self.batcher.queue),
                      "max_size": self.batcher.queue.max_size,
                      "max_batch_size": self.batcher.policy.max_batch_size},
            "throughput_sps": round(window.throughput, 2),
            "arrival_rate_sps": round(window.arrival_rate, 2),
            "busy_fraction": round(window.busy_fraction, 3),
            "mean_batch_size": round(window.mean_batch_size, 2),
            "mean_queue_ms": round(window.mean_queue_ms, 2),
            "totals": dataclasses.asdict(totals),
            "replicas": {"active": self.batcher.active, "peak": self.batcher.ledger.peak,
                         "replica_seconds": round(self.batcher.ledger.total(
                             self.batcher.now()), 3)},
            "shed": dict(self.stats.shed),
            "rate_limited": dict(self.limits.limited),
            "held": {"bytes": self.held_budget.held_bytes,
                     "limit_bytes": self.held_budget.limit_bytes,
                     "refused": self.held_budget.refused,
                     "late": self.held_budget.late.to_dict()},
            "slo_ms": self.settings.slo_ms,
            **({"idn": self.idn.status()} if self.idn is not None else {}),
        }


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", ServerSettings)
GUARD = web.AppKey("guard", ConnectionGuard)
