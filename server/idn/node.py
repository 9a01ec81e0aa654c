"""One node of an inference delivery network: the I/O around `routing` and `alloc`.

The node serves a request with one of the models it holds (each with its own batcher on the
node's emulated accelerator) or sends it to its parent over HTTP, across an emulated link of
`link_ms` each way. Replies from the parent teach the node what serving upstream costs. Every
slot the node's policy picks the models to hold from the slot's requests; the node loads the
new ones (usable after `load_s`) and unloads the others once their queues have drained. The
repository (the root) holds the whole catalog and serves everything that reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from common import protocol as wire
from common.batch_profiles import BatchProfile, profile_for
from common.config import IdnConfig, ServerConfig
from common.events import EventLog
from common.modelzoo import Zoo
from server.admission import Admission, AdmissionRefused
from server.batch_policy import BatchPolicy
from server.batcher import Batcher
from server.heavy_model import HeavyModel
from server.idn.alloc import CatalogModel, Demand, MirrorAscent, Seen, greedy
from server.idn.routing import Option, choose, expected_infer_ms, serving_cost_ms
from server.request_queue import Request, RequestQueue
from server.stats import ServerStats
from server.tensors import model_input

log = logging.getLogger(__name__)
EWMA = 0.2
PROBE_S = 0.5
"""A node that has sent nothing up for this long sends the next request up (a probe)."""


@dataclass
class _Held:
    model: HeavyModel
    batcher: Batcher
    task: asyncio.Task[None]
    profile: BatchProfile
    accepting: bool = True


@dataclass
class _Counts:
    local: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    failed_up: int = 0


async def _stop(held: _Held) -> None:
    """Stop its batcher's loop, then answer whatever is still queued."""
    held.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held.task
    await held.batcher.close()


class IdnNodeRuntime:
    def __init__(self, idn: IdnConfig, name: str, server: ServerConfig, zoo: Zoo,
                 stats: ServerStats, events: EventLog, token: str, parent_url: str,
                 seed: int = 0) -> None:
        self.idn, self.cfg, self.server, self.zoo = idn, idn.node(name), server, zoo
        self.name = name
        self.stats, self.events, self.token, self.parent_url = stats, events, token, parent_url
        self.is_root = self.cfg.parent is None
        self.catalog = list(idn.catalog or zoo.index.get("heavy_variants") or [zoo.heavy])
        self.path_ms = idn.depth_ms(name)
        default = server.heavy_model or zoo.heavy
        base = BatchProfile(server.batch_base_ms, server.batch_per_sample_ms)
        b = server.max_batch_size
        self.profiles = {}
        self.specs = {}
        for m in self.catalog:
            p = profile_for(zoo, m, default, base, server.profiles)
            p = BatchProfile(p.base_ms / self.cfg.speed, p.per_sample_ms / self.cfg.speed)
            self.profiles[m] = p
            card = zoo.card(m)
            self.specs[m] = CatalogModel(
                m, float(card["size_bytes"]) / 1024, float(card["accuracy"]["val"]),
                infer_ms=p.target_s(max(b // 4, 1)) * 1e3, capacity_sps=b / p.target_s(b))
        self.sizes = {m: s.size_kb for m, s in self.specs.items()}
        self.accuracy = {m: s.accuracy for m, s in self.specs.items()}
        self.upstream_ms: float | None = None if self.is_root else self._guess_upstream_ms()
        self.held: dict[str, _Held] = {}
        self.seen: list[Seen] = []
        self.counts = _Counts()
        self.allocator = MirrorAscent(self.sizes, self.cfg.memory_kb, idn.eta, seed) \
            if idn.policy == "idn" else None
        self._frozen: set[str] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()
        self._sent_up = self._loop.time()

    # --- serving ----------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Serve here or send up; `req.respond` is called exactly once either way."""
        options = [Option(m, serving_cost_ms(self.path_ms, self._infer_ms(h), self.accuracy[m],
                                             self.idn.alpha_ms),
                          len(h.batcher.queue) < 2 * h.batcher.policy.max_batch_size)
                   for m, h in self.held.items() if h.accepting]
        now = self._loop.time()
        model = choose(options, self.upstream_ms, probe=now - self._sent_up >= PROBE_S)
        if model is not None:
            try:
                self._serve_here(req, model)
                return
            except AdmissionRefused:
                if self.is_root:
                    raise
        if self.is_root:
            raise AdmissionRefused("no_model", "the repository holds no model yet")
        self._sent_up = now
        self._spawn(self._forward(req))

    def _infer_ms(self, h: _Held) -> float:
        return expected_infer_ms(len(h.batcher.queue), h.batcher.policy.max_batch_size,
                                 lambda b: h.profile.target_s(b) * 1e3,
                                 self.server.max_queue_delay_us / 1e3)

    def _serve_here(self, req: Request, model: str) -> None:
        label = f"{self.name}/{model}"
        respond = req.respond

        def relabel(res: wire.Result) -> None:
            respond(dataclasses.replace(res, model=label) if res.model else res)

        self.held[model].batcher.submit(dataclasses.replace(req, respond=relabel, send=None))
        self.counts.local[model] = self.counts.local.get(model, 0) + 1
        if self.upstream_ms is not None:
            self.seen.append(Seen(self.path_ms, self.upstream_ms))

    async def _forward(self, req: Request) -> None:
        t0 = self._loop.time()
        self.counts.forwarded += 1
        await asyncio.sleep(self.cfg.link_ms / 1e3)
        budget_ms = (req.deadline - self._loop.time()) * 1e3 - self.cfg.link_ms
        if budget_ms <= 0:
            self.stats.on_expired(1)
            req.respond(wire.Result(sample_id=req.sample_id, status=wire.ResultStatus.EXPIRED,
                                    reason="deadline passed on the way up", cause="deadline"))
            return
        x = model_input([req.x])[0]
        msg = wire.Infer(sample_id=req.sample_id, dtype="float32", shape=tuple(x.shape),
                         data=x.tobytes(), deadline_ms=budget_ms)
        try:
            res = await self._post(msg)
        except (aiohttp.ClientError, TimeoutError, wire.ProtocolError, OSError) as exc:
            self.counts.failed_up += 1
            req.respond(wire.Result(sample_id=req.sample_id, status=wire.ResultStatus.FAILED,
                                    reason=f"parent {self.cfg.parent} failed: {exc}"[:200],
                                    cause="upstream"))
            return
        await asyncio.sleep(self.cfg.link_ms / 1e3)
        if res.status == wire.ResultStatus.OK:
            model = res.model.rsplit("/", 1)[-1]
            cost = (2 * self.path_ms + (self._loop.time() - t0) * 1e3
                    + self.idn.alpha_ms * (1 - self.accuracy.get(model, 0.0)))
            self.upstream_ms = cost if self.upstream_ms is None else \
                self.upstream_ms + EWMA * (cost - self.upstream_ms)
            self.seen.append(Seen(self.path_ms, cost))
        req.respond(dataclasses.replace(res, sample_id=req.sample_id))

    async def _post(self, msg: wire.Infer) -> wire.Result:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
                timeout=aiohttp.ClientTimeout(total=msg.deadline_ms / 1e3 + 5.0))
        async with self._session.post(f"{self.parent_url}/v1/infer",
                                      data=wire.encode(msg)) as resp:
            body = await resp.read()
        out = wire.decode(body)
        if isinstance(out, wire.Error):
            raise wire.ProtocolError(wire.ErrorCode(out.code), out.reason)
        if not isinstance(out, wire.Result):
            raise wire.ProtocolError(wire.ErrorCode.UNKNOWN_TYPE, f"parent sent {out.TYPE}")
        return out

    # --- allocation -------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the first allocation, then re-allocate every slot."""
        first = set(self.catalog) if self.is_root else self._initial()
        await self._apply(first)
        while True:
            await asyncio.sleep(self.idn.slot_s)
            seen, self.seen = self.seen, []
            counts, self.counts = self.counts, _Counts()
            gains: dict[str, float] = {}
            if self.is_root:
                target = set(self.catalog)
            else:
                target, gains = self._decide(Demand.of(seen, list(self.specs.values()),
                                                       self.idn.alpha_ms, self.idn.slot_s))
            await self._apply(target)
            self.events.emit("idn_slot", node=self.name, policy=self.idn.policy,
                             held=sorted(target), requests=len(seen),
                             local=counts.local, forwarded=counts.forwarded,
                             upstream_ms=None if self.upstream_ms is None
                             else round(self.upstream_ms, 1),
                             gains={m: round(g, 1) for m, g in gains.items()},
                             y=None if self.allocator is None else
                             {m: round(v, 4) for m, v in self.allocator.y.items()})

    def _initial(self) -> set[str]:
        if self.allocator is not None:
            return self.allocator.update({})
        return set()

    def _decide(self, demand: Demand) -> tuple[set[str], dict[str, float]]:
        """The models to hold next, and the gains behind the choice (for the event): INFIDA's
        subgradient at y, or each model's gain alone for the greedy ones."""
        policy = self.idn.policy
        if policy == "idn":
            assert self.allocator is not None
            grad = demand.subgradient(self.allocator.y)
            return self.allocator.update(grad), grad
        alone = {m: demand.gain({m}) for m in self.catalog}
        if policy == "cloud-only":
            return set(), alone
        if policy == "greedy-static":
            if self._frozen is None and any(g > 0 for g in alone.values()):
                self._frozen = greedy(demand, self.sizes, self.cfg.memory_kb)
            return self._frozen or set(), alone
        held = [m for m, h in self.held.items() if h.accepting]
        return greedy(demand, self.sizes, self.cfg.memory_kb, held), alone

    async def _apply(self, target: set[str]) -> None:
        for m in [m for m in self.held if m not in target and self.held[m].accepting]:
            self.held[m].accepting = False
            self._spawn(self._unload(m))
        for m in sorted(target):
            if m in self.held:
                self.held[m].accepting = True
                continue
            self._spawn(self._load(m))

    async def _load(self, name: str) -> None:
        model = await self._loop.run_in_executor(None, HeavyModel, self.zoo, name)
        await asyncio.sleep(self.idn.load_s)
        profile = self.profiles[name]
        batcher = Batcher(model, RequestQueue(self.server.max_queue_size),
                          BatchPolicy(self.server.max_batch_size,
                                      self.server.max_queue_delay_us / 1e6),
                          profile, self.stats, Admission("bound", self.server.max_queue_size))
        task = asyncio.create_task(batcher.run(), name=f"batcher-{name}")
        if name in self.held:  # loaded twice in a race: keep the first
            task.cancel()
            return
        self.held[name] = _Held(model, batcher, task, profile)
        self.events.emit("idn_load", node=self.name, model=name)

    async def _unload(self, name: str) -> None:
        held = self.held.get(name)
        while held is not None and not held.accepting and len(held.batcher.queue):
            await asyncio.sleep(0.05)
        if held is None or held.accepting:
            return  # wanted again before it drained
        await asyncio.sleep(0.5)  # its last batch finishes
        del self.held[name]
        await _stop(held)
        self.events.emit("idn_unload", node=self.name, model=name)

    def _guess_upstream_ms(self) -> float:
        """Before any reply: the repository's best option, seen from here."""
        up, node = 0.0, self.cfg
        while node.parent is not None:
            up += node.link_ms
            node = self.idn.node(node.parent)
        root_speed = node.speed
        return min(serving_cost_ms(self.path_ms + up, s.infer_ms * self.cfg.speed / root_speed,
                                   s.accuracy, self.idn.alpha_ms) for s in self.specs.values())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "tier": self.cfg.tier, "held": sorted(self.held),
                "upstream_ms": self.upstream_ms, "policy": self.idn.policy}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for held in list(self.held.values()):
            await _stop(held)
        self.held.clear()
        if self._session is not None:
            await self._session.close()
