"""The aiohttp application factory: routes, and start-up/clean-up of the server's parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.batch_profiles import (
    BatchProfile,
    heavy_model_names,
    on_accelerator,
    profile_for,
)
from cascade_testbed.common.config import ServerConfig
from cascade_testbed.common.events import EventLog
from cascade_testbed.common.modelzoo import Zoo, open_zoo
from cascade_testbed.server import ingress
from cascade_testbed.server.admission import Admission
from cascade_testbed.server.batch_policy import BatchPolicy
from cascade_testbed.server.batcher import Batcher
from cascade_testbed.server.connection_limits import Limits
from cascade_testbed.server.control import Controller
from cascade_testbed.server.early_exit.batcher import EarlyExitBatcher
from cascade_testbed.server.early_exit.model import StagedModel
from cascade_testbed.server.early_exit.stages import StageScheduler
from cascade_testbed.server.fairness import RateLimits
from cascade_testbed.server.guard import ConnectionGuard, host_limits
from cascade_testbed.server.heavy_model import AgreementTier, HeavyModel, ServedModel
from cascade_testbed.server.held import HeldBudget
from cascade_testbed.server.idn.node import IdnNodeRuntime
from cascade_testbed.server.replicas import Autoscaler, AutoscaleRule
from cascade_testbed.server.request_queue import RequestQueue
from cascade_testbed.server.runtime import GUARD, RUNTIME, SETTINGS, Runtime, ServerSettings
from cascade_testbed.server.scheduling import make_policy
from cascade_testbed.server.stats import ServerStats

log = logging.getLogger(__name__)


def make_app(settings: ServerSettings, guard: ConnectionGuard | None = None) -> web.Application:
    # Validate the policy before anything starts, so a bad scenario fails fast and clearly.
    make_policy(settings.policy.name, settings.policy.params)
    app = web.Application(client_max_size=wire.MAX_MESSAGE_BYTES, middlewares=[_started])
    app[SETTINGS] = settings
    cfg = settings.server
    app[GUARD] = guard or ConnectionGuard(host_limits(Limits(
        cfg.max_connections, cfg.max_connections_per_peer, cfg.max_pending_connections,
        cfg.header_timeout_s)))
    app.cleanup_ctx.append(_runtime)
    app.on_shutdown.append(ingress.close_sockets)
    app.router.add_get("/v1/devices/{device_id}", ingress.device_socket)
    app.router.add_post("/v1/infer", ingress.http_infer)
    app.router.add_get("/healthz", ingress.healthz)
    app.router.add_get("/v1/status", ingress.status)
    app.router.add_get("/metrics", ingress.metrics)
    return app


@web.middleware
async def _started(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request whose headers have arrived is no longer a pending connection; a device socket
    stays pending until its hello (ingress marks it)."""
    if not request.path.startswith("/v1/devices/"):
        request.app[GUARD].started(request.transport)
    return await handler(request)


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    rt = await _build(app[SETTINGS])
    app[RUNTIME] = rt
    rt.start(asyncio.get_running_loop().time)
    yield
    await rt.stop()


async def _build(settings: ServerSettings) -> Runtime:
    """Load the models, then build the batcher, the controller and the runtime around them."""
    cfg = settings.server
    zoo = open_zoo(settings.zoo)
    names, models, profiles = await _load_models(cfg, zoo)
    default = next(iter(models))
    stats = ServerStats()
    stats.on_model_switch(default)
    batcher = _make_batcher(cfg, models[default], profiles[default], stats)
    events = EventLog(settings.events_path, "server")
    controller = Controller(make_policy(settings.policy.name, settings.policy.params), stats,
                            events, slo_ms=settings.slo_ms, interval_s=cfg.control_interval_s)
    rt = Runtime(settings, zoo, models, profiles, stats, batcher, controller, events,
                 asyncio.get_running_loop().time(), limits=RateLimits(cfg.fairness),
                 held_budget=HeldBudget(int(cfg.max_held_mb * 2**20)))
    stats.watch_rate_limited(lambda: rt.limits.limited)
    if cfg.autoscale.enabled:
        a = cfg.autoscale
        rt.autoscaler = Autoscaler(AutoscaleRule(a.min_replicas, a.max_replicas, a.utilization,
                                                 a.down_after_s, a.drain_s))
    if settings.idn_node:
        rt.idn = IdnNodeRuntime(settings.idn, settings.idn_node, cfg, zoo, stats, events,
                                settings.token, settings.parent_url, settings.seed,
                                settings.tier_tasks)
    events.emit("server_start", policy=settings.policy.name, heavy_model=default,
                heavy_models=names, max_batch_size=cfg.max_batch_size, slo_ms=settings.slo_ms,
                replicas=cfg.replicas, autoscale=cfg.autoscale.enabled)
    return rt


async def _load_models(cfg: ServerConfig, zoo: Zoo) -> tuple[
        list[str], dict[str, ServedModel], dict[str, BatchProfile | None]]:
    """Every heavy model the server may run, warmed up, and its emulated profile.

    Returns the names loaded, the models the batcher may switch between (the default first;
    an ensemble becomes one agreement tier) and a profile per name (None: no padding)."""
    loop = asyncio.get_running_loop()
    names = heavy_model_names(cfg, zoo)
    default = names[0]
    names += [n for n in cfg.ensemble if n not in names]
    loaded: dict[str, ServedModel] = {
        n: (StagedModel if zoo.card(n).get("stages") else HeavyModel)(zoo, n, cfg.intra_op_threads)
        for n in dict.fromkeys(names)}
    for model in loaded.values():
        if model.sample_shape != loaded[default].sample_shape:
            raise ValueError(f"heavy model {model.name} takes {model.sample_shape}, "
                             f"{default} takes {loaded[default].sample_shape}")
        await loop.run_in_executor(None, _warm_up, model)
    base = BatchProfile(cfg.batch_base_ms, cfg.batch_per_sample_ms)
    profiles: dict[str, BatchProfile | None] = {
        n: on_accelerator(profile_for(zoo, n, default, base, cfg.profiles), cfg.accelerator)
        if cfg.pad_compute else None for n in loaded}
    models: dict[str, ServedModel] = {n: loaded[n] for n in names if n not in cfg.ensemble
                                      or n == default}
    if cfg.ensemble:
        tier = AgreementTier([loaded[n] for n in cfg.ensemble], loaded[default],
                             cfg.ensemble_theta, profiles)
        models = {tier.name: tier}
        profiles[tier.name] = tier.profile
    for n, m in loaded.items():
        if isinstance(m, StagedModel) and profiles[n] is not None:
            m.pad_to(profiles[n])  # type: ignore[arg-type]
    return names, models, profiles


def _make_batcher(cfg: ServerConfig, first: ServedModel, profile: BatchProfile | None,
                  stats: ServerStats) -> Batcher | EarlyExitBatcher:
    """The plain batcher, or the stage-by-stage one for an early-exit model."""
    queue = RequestQueue(cfg.max_queue_size)
    batching = BatchPolicy(cfg.max_batch_size, cfg.max_queue_delay_us / 1e6)
    admission = Admission(cfg.admission, cfg.max_queue_size)
    if cfg.mode != "early-exit":
        return Batcher(first, queue, batching, profile, stats, admission, cfg.replicas)
    if not isinstance(first, StagedModel):
        raise ValueError(f"server.mode = 'early-exit' needs an early-exit heavy model "
                         f"(a zoo card with stages); {first.name} is not one")
    if first.profile is None:
        first.pad_to(BatchProfile(0.0, 0.0))
    scheduler = StageScheduler(first.costs(cfg.exit_threshold), cfg.max_batch_size,
                               cfg.max_queue_delay_us / 1e6, cfg.stage_scheduler)
    return EarlyExitBatcher(first, queue, batching, profile, stats, admission,
                            scheduler=scheduler, exit_threshold=cfg.exit_threshold,
                            target_s=cfg.target_ms / 1e3)


def _warm_up(model: ServedModel) -> None:
    """Run each power-of-two batch size once so the first real batches are not slow."""
    import numpy as np

    size = 1
    while size <= 64:
        model.infer(np.zeros((size, *model.sample_shape), dtype=np.float32))
        size *= 2
