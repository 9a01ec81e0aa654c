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

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.batch_profiles import BatchProfile, on_accelerator, profile_for
from cascade_testbed.common.config import IdnConfig, ServerConfig
from cascade_testbed.common.events import EventLog
from cascade_testbed.common.modelzoo import Zoo
from cascade_testbed.server.admission import Admission, AdmissionRefused
from cascade_testbed.server.batch_policy import BatchPolicy
from cascade_testbed.server.batcher import Batcher
from cascade_testbed.server.heavy_model import ESCALATE, EdgeTier, HeavyModel, ServedModel
from cascade_testbed.server.idn.alloc import CatalogModel, Demand, MirrorAscent, Seen, greedy
from cascade_testbed.server.idn.routing import Option, choose, expected_infer_ms, serving_cost_ms
from cascade_testbed.server.request_queue import Request, RequestQueue
from cascade_testbed.server.stats import ServerStats
from cascade_testbed.server.tensors import model_input

log = logging.getLogger(__name__)
EWMA = 0.2
PROBE_S = 0.5
"""A node that has sent nothing up for this long sends the next request up (a probe)."""


@dataclass
class _Held:
    model: ServedModel
    batcher: Batcher
    task: asyncio.Task[None]
    profile: BatchProfile
    accepting: bool = True


@dataclass
class _Counts:
    local: dict[str, int] = field(default_factory=dict)
    forwarded: int = 0
    failed_up: int = 0


@dataclass
class UplinkWire:
    """The emulated link to the parent, one direction: messages cross it in order at
    `mbps` (0: no bandwidth limit) and arrive `delay_s` later; bytes are counted. Pure: time
    is passed in."""

    delay_s: float
    mbps: float
    free_at: float = 0.0
    bytes: int = 0
    messages: int = 0

    def send(self, now: float, nbytes: int) -> float:
        """When a message of `nbytes` handed over at `now` arrives at the other end."""
        start = max(now, self.free_at)
        tx = nbytes * 8 / (self.mbps * 1e6) if self.mbps > 0 else 0.0
        self.free_at = start + tx
        self.bytes += nbytes
        self.messages += 1
        return self.free_at + self.delay_s


async def _stop(held: _Held) -> None:
    """Stop its batcher's loop, then answer whatever is still queued."""
    held.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held.task
    await held.batcher.close()


class IdnNodeRuntime:
    def __init__(self, idn: IdnConfig, name: str, server: ServerConfig, zoo: Zoo,
                 stats: ServerStats, events: EventLog, token: str, parent_url: str,
                 seed: int = 0, tier_tasks: dict[str, str] | None = None) -> None:
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
            p = on_accelerator(profile_for(zoo, m, default, base, server.profiles)
                               .scaled(1 / self.cfg.speed), server.accelerator)
            self.profiles[m] = p
            card = zoo.card(m)
            self.specs[m] = CatalogModel(
                m, float(card["size_bytes"]) / 1024, float(card["accuracy"]["val"]),
                infer_ms=p.target_s(max(b // 4, 1)) * 1e3, capacity_sps=b / p.target_s(b),
                task=zoo.task_of(m))
        self.sizes = {m: s.size_kb for m, s in self.specs.items()}
        self.accuracy = {m: s.accuracy for m, s in self.specs.items()}
        self.tier_tasks = dict(tier_tasks or {})
        self.tasks = sorted({s.task for s in self.specs.values()})
        self.upstream_ms: dict[str, float] = {} if self.is_root else {
            t: self._guess_upstream_ms(t) for t in self.tasks}
        """Per task: what serving its requests upstream costs, learnt from replies."""
        self.held: dict[str, _Held] = {}
        self.seen: list[Seen] = []
        self.counts = _Counts()
        self.allocator = MirrorAscent(self.sizes, self.cfg.memory_kb, idn.eta, seed) \
            if idn.policy == "idn" else None
        self._frozen: set[str] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()
        self._sent_up = dict.fromkeys(self.tasks, self._loop.time())
        self.up = UplinkWire(self.cfg.link_ms / 1e3, self.cfg.link_mbps)
        self.down = UplinkWire(self.cfg.link_ms / 1e3, self.cfg.link_mbps)
        self.coe = idn.policy == "coe" and not self.is_root
        self.edge: _Held | None = None
        """policy "coe": the tier of `serve` models this node answers with."""

    # --- serving ----------------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Serve here or send up; `req.respond` is called exactly once either way."""
        req.task = req.task or self.zoo.canonical_task("")
        if self.coe:
            self._submit_edge(req)
            return
        task = req.task
        options = [Option(m, serving_cost_ms(self.path_ms, self._infer_ms(h), self.accuracy[m],
                                             self.idn.alpha_ms),
                          len(h.batcher.queue) < 2 * h.batcher.policy.max_batch_size)
                   for m, h in self.held.items() if h.accepting and self.specs[m].task == task]
        now = self._loop.time()
        up = None if self.is_root else self.upstream_ms.get(task, self._guess_upstream_ms(task))
        model = choose(options, up, probe=now - self._sent_up.get(task, now) >= PROBE_S)
        if model is not None:
            try:
                self._serve_here(req, model)
                return
            except AdmissionRefused:
                if self.is_root:
                    raise
        if self.is_root:
            raise AdmissionRefused("no_model", f"the repository holds no model for task "
                                               f"{task or '(the dataset labels)'} yet")
        self._sent_up[task] = now
        self._spawn(self._forward(req))

    def task_of_tier(self, tier: str) -> str:
        """The task of a device of `tier` (the scenario's tiers say; none: the dataset's own
        labels)."""
        return self.zoo.canonical_task(self.tier_tasks.get(tier, ""))

    def _submit_edge(self, req: Request) -> None:
        """A cascade-of-ensembles tier: the edge tier answers what it agrees on; the rest, and
        everything while it has no tier, goes up."""
        if self.edge is None:
            self._spawn(self._forward(req))
            return
        respond, label = req.respond, f"{self.name}/{self.edge.model.name}"

        def answered(res: wire.Result) -> None:
            if res.model == ESCALATE:
                self._spawn(self._forward(dataclasses.replace(req, respond=respond)))
                return
            respond(dataclasses.replace(res, model=label) if res.model else res)

        self.edge.batcher.submit(dataclasses.replace(req, respond=answered, send=None))
        self.counts.local[self.edge.model.name] = \
            self.counts.local.get(self.edge.model.name, 0) + 1

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
        if req.task in self.upstream_ms:
            self.seen.append(Seen(self.path_ms, self.upstream_ms[req.task], req.task))

    async def _forward(self, req: Request) -> None:
        t0 = self._loop.time()
        self.counts.forwarded += 1
        x = model_input([req.x])[0]
        msg = wire.Infer(sample_id=req.sample_id, dtype="float32", shape=tuple(x.shape),
                         data=x.tobytes(), deadline_ms=0.0)
        # A float64 packs to 9 bytes whatever its value: the size is known before the deadline.
        arrive = self.up.send(t0, len(wire.encode(msg)))
        await asyncio.sleep(max(arrive - self._loop.time(), 0.0))
        budget_ms = (req.deadline - self._loop.time()) * 1e3 - self.cfg.link_ms
        if budget_ms <= 0:
            self.stats.on_expired(1)
            req.respond(wire.Result(sample_id=req.sample_id, status=wire.ResultStatus.EXPIRED,
                                    reason="deadline passed on the way up", cause="deadline"))
            return
        msg = dataclasses.replace(msg, deadline_ms=budget_ms)
        try:
            res, size = await self._post(msg, req.task)
        except (aiohttp.ClientError, TimeoutError, wire.ProtocolError, OSError) as exc:
            self.counts.failed_up += 1
            req.respond(wire.Result(sample_id=req.sample_id, status=wire.ResultStatus.FAILED,
                                    reason=f"parent {self.cfg.parent} failed: {exc}"[:200],
                                    cause="upstream"))
            return
        back = self.down.send(self._loop.time(), size)
        await asyncio.sleep(max(back - self._loop.time(), 0.0))
        if res.status == wire.ResultStatus.OK:
            model = res.model.rsplit("/", 1)[-1]
            cost = (2 * self.path_ms + (self._loop.time() - t0) * 1e3
                    + self.idn.alpha_ms * (1 - self.accuracy.get(model, 0.0)))
            old = self.upstream_ms.get(req.task)
            self.upstream_ms[req.task] = cost if old is None else old + EWMA * (cost - old)
            self.seen.append(Seen(self.path_ms, cost, req.task))
        req.respond(dataclasses.replace(res, sample_id=req.sample_id))

    async def _post(self, msg: wire.Infer, task: str = "") -> tuple[wire.Result, int]:
        """The parent's answer and the size of the reply as it crossed the link."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
                timeout=aiohttp.ClientTimeout(total=msg.deadline_ms / 1e3 + 5.0))
        async with self._session.post(f"{self.parent_url}/v1/infer",
                                      params={"task": task} if task else None,
                                      data=wire.encode(msg)) as resp:
            body = await resp.read()
        out = wire.decode(body)
        if isinstance(out, wire.Error):
            raise wire.ProtocolError(wire.ErrorCode(out.code), out.reason)
        if not isinstance(out, wire.Result):
            raise wire.ProtocolError(wire.ErrorCode.UNKNOWN_TYPE, f"parent sent {out.TYPE}")
        return out, len(body)

    # --- allocation -------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the first allocation, then re-allocate every slot (a cascade-of-ensembles
        edge node loads its tier once and keeps it)."""
        if self.coe:
            await self._load_edge()
            return
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
                             upstream_ms={t: round(v, 1) for t, v in self.upstream_ms.items()},
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
        if not self.is_root:  # the repository holds its catalog from the start
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

    async def _load_edge(self) -> None:
        serve = self.idn.edge_serve
        if not serve:
            return
        members = [await self._loop.run_in_executor(None, HeavyModel, self.zoo, m)
                   for m in serve]
        default = self.server.heavy_model or self.zoo.heavy
        base = BatchProfile(self.server.batch_base_ms, self.server.batch_per_sample_ms)
        profiles: dict[str, BatchProfile | None] = {
            m: on_accelerator(profile_for(self.zoo, m, default, base, self.server.profiles)
                              .scaled(1 / self.cfg.speed), self.server.accelerator)
            for m in serve}
        tier = EdgeTier(list(members), self.idn.edge_rule, self.idn.edge_theta, profiles)
        profile = tier.profile or BatchProfile(0.0, 0.0)
        batcher = Batcher(tier, RequestQueue(self.server.max_queue_size),
                          BatchPolicy(self.server.max_batch_size,
                                      self.server.max_queue_delay_us / 1e6),
                          profile, self.stats, Admission("bound", self.server.max_queue_size))
        task = asyncio.create_task(batcher.run(), name=f"edge-{self.name}")
        self.edge = _Held(tier, batcher, task, profile)
        self.events.emit("idn_load", node=self.name, model=tier.name)

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

    def _guess_upstream_ms(self, task: str) -> float:
        """Before any reply: the repository's best option for the task, seen from here."""
        up, node = 0.0, self.cfg
        while node.parent is not None:
            up += node.link_ms
            node = self.idn.node(node.parent)
        root_speed = node.speed
        return min((serving_cost_ms(self.path_ms + up, s.infer_ms * self.cfg.speed / root_speed,
                                    s.accuracy, self.idn.alpha_ms)
                    for s in self.specs.values() if s.task == task), default=0.0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        held = sorted(self.held) + ([self.edge.model.name] if self.edge is not None else [])
        return {"node": self.name, "tier": self.cfg.tier, "held": held,
                "upstream_ms": self.upstream_ms, "policy": self.idn.policy,
                "link": {"bytes_up": self.up.bytes, "bytes_down": self.down.bytes,
                         "messages_up": self.up.messages}}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for held in list(self.held.values()):
            await _stop(held)
        self.held.clear()
        if self.edge is not None:
            await _stop(self.edge)
            self.edge = None
        if self._session is not None:
            await self._session.close()
