"""WebSocket and HTTP handlers: decode, validate, admit, reply. The one place that maps
errors to wire `Error` messages and HTTP statuses; a bad message never ends the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Callable

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cascade_testbed.common import eager
from cascade_testbed.common import protocol as wire
from cascade_testbed.common.names import RULE, is_name
from cascade_testbed.server.admission import AdmissionRefused
from cascade_testbed.server.control import DuplicateDevice
from cascade_testbed.server.fairness import frame_bucket
from cascade_testbed.server.held import MAX_HELD, Held
from cascade_testbed.server.request_queue import Request
from cascade_testbed.server.runtime import GUARD, RUNTIME, Runtime
from cascade_testbed.server.tensors import sample_from_infer, sample_view

log = logging.getLogger(__name__)

PREAUTH_FRAME_BYTES = 4 * 1024
"""Largest frame of a device socket whose upgrade request did not carry the token: enough for
a hello (and the embedded zoo's samples), so an unauthenticated peer costs a few KiB at most."""
HTTP_BODY_TIMEOUT_S = 10.0
"""A `POST /v1/infer` body must arrive within this long (a trickled body holds a socket)."""
MAX_REASON_CHARS = 200
"""Error replies carry at most this much text: never an echo of a large input."""
DEFAULT_DEADLINE_MS = 10_000.0
"""Budget of a request that names none, so nothing waits in the queue forever."""
MSGPACK = "application/msgpack"
PACE_SLEEP_S = 0.02
"""A socket over its frame rate is paused once it owes this much time, not at every frame:
one timer per 40 frames at the default pace, not one per frame."""


class Outbox:
    """Messages to one WebSocket, written by one task so replies never block the batcher.

    A burst of replies is fine; a client that stops reading is not: once the writer has been
    stuck on a full socket for `stall_s` with more than `limit` replies waiting, the connection
    is aborted rather than buffered without end. Aborted, not closed: a close frame would
    wait behind the very bytes the client is not reading.
    """

    def __init__(self, ws: web.WebSocketResponse, limit: int, stall_s: float,
                 abort: Callable[[], None]) -> None:
        self._ws = ws
        self._limit = limit
        self._stall_s = stall_s
        self._abort = abort
        self._items: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._blocked_since: float | None = None
        self._suspended: eager.Suspended | None = None
        """A send begun in `send` that waits for the socket: the writer task finishes it."""
        self._task = asyncio.create_task(self._drain())
        self.overflowed = False

    def send(self, data: bytes) -> None:
        if self._ws.closed or self.overflowed:
            return
        if len(self._items) >= self._limit and self._blocked_since is not None and \
                self._loop.time() - self._blocked_since > self._stall_s:
            self.overflowed = True
            self._items.clear()
            self._task.cancel()
            self._abort()
            return
        if not self._items and self._blocked_since is None and not self._task.done():
            # Nothing queued: write now (`common.eager`), without waking the writer task
            # (a future and a turn of the loop per reply were a fifth of the server's cost
            # per request). Only a send that has to wait for the socket goes to the task.
            try:
                suspended = eager.step(self._ws.send_bytes(data))
            except (ConnectionError, RuntimeError):
                return  # the socket is going; its handler ends
            if suspended is None:
                return
            self._blocked_since = self._loop.time()
            self._suspended = suspended
        else:
            self._items.append(data)
        self._wake.set()

    def respond(self, res: wire.Result) -> None:
        """A request's `respond`: the result, encoded, as any other message."""
        self.send(wire.encode(res))

    async def _drain(self) -> None:
        while True:
            if self._suspended is not None:
                suspended, self._suspended = self._suspended, None
                try:
                    await suspended.finish()
                except (ConnectionError, RuntimeError):
                    self._items.clear()
                    return
                finally:
                    self._blocked_since = None
            while self._items:
                data = self._items.popleft()
                self._blocked_since = self._loop.time()
                try:
                    await self._ws.send_bytes(data)
                except (ConnectionError, RuntimeError):
                    self._items.clear()
                    return
                finally:
                    self._blocked_since = None
            self._wake.clear()
            await self._wake.wait()

    async def close(self) -> None:
        # Let queued replies go out before the socket closes.
        for _ in range(100):
            if (not self._items and self._suspended is None) or self._ws.closed \
                    or self._task.done():
                break
            await asyncio.sleep(0.01)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def device_socket(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    path_id = request.match_info["device_id"]
    if not is_name(path_id):
        rt.stats.on_protocol_error("malformed")
        return _http_error(wire.ErrorCode.MALFORMED, f"the device id in the URL must be a name "
                                                     f"({RULE})")
    # With the token in the upgrade request, frames up to 4x the limit are read and refused
    # with an `error` (TOO_LARGE) by `decode`; beyond that aiohttp closes the socket with 1009
    # (message too big) without buffering it. Without it, a frame may hold a hello at most
    # until the hello has authenticated the device (and the session keeps that limit).
    token_ok = _authorized(request, rt.settings.token)
    ws = web.WebSocketResponse(max_msg_size=4 * wire.MAX_MESSAGE_BYTES if token_ok
                               else PREAUTH_FRAME_BYTES, autoping=True)
    try:
        await ws.prepare(request)
    except ConnectionError:  # gone before the upgrade (it gave up, or the guard evicted it)
        return web.Response(status=400, text="connection lost before the upgrade\n")
    rt.sockets.add(ws)
    cfg = rt.settings.server

    def abort() -> None:
        rt.stats.on_slow_client()
        log.warning("device %s: not reading its replies; connection aborted", path_id)
        if request.transport is not None:
            request.transport.abort()

    outbox = Outbox(ws, limit=cfg.slow_client_backlog, stall_s=cfg.slow_client_stall_s,
                    abort=abort)
    loop = asyncio.get_running_loop()
    held = Held(loop, budget=rt.held_budget)
    device_id: str | None = None
    try:
        hello = await _handshake(rt, ws, path_id, token_ok)
        if hello is None:
            return ws
        request.app[GUARD].started(request.transport)
        info = rt.device_info(hello)
        try:
            welcome = rt.controller.join(info, outbox.send, loop.time())
        except DuplicateDevice:
            await _refuse(rt, ws, wire.ErrorCode.DUPLICATE_DEVICE,
                          f"device {hello.device_id!r} is already connected")
            return ws
        device_id = hello.device_id
        rt.limits.join(device_id, hello.rate_sps)
        outbox.send(wire.encode(welcome))
        frames = frame_bucket(cfg.fairness)
        async for frame in ws:
            # Frames of any kind, valid or not, are read at a bounded pace: past it, this
            # socket is not read for a while and TCP pushes back on its sender, instead of
            # one socket's flood holding the event loop from every other.
            owed_s = frames.wait_s(loop.time())
            if owed_s > PACE_SLEEP_S:
                rt.stats.on_paced(owed_s)
                await asyncio.sleep(owed_s)
            if frame.type == aiohttp.WSMsgType.BINARY:
                _on_frame(rt, device_id, frame.data, outbox, loop, held)
            elif frame.type == aiohttp.WSMsgType.TEXT:
                _error(rt, outbox, wire.ErrorCode.MALFORMED, "binary msgpack frames only")
            elif frame.type == aiohttp.WSMsgType.ERROR:
                log.info("device %s: socket error %s", device_id, ws.exception())
    finally:
        held.drop()
        if device_id is not None:
            rt.limits.leave(device_id)
            rt.controller.leave(device_id, loop.time())
        await outbox.close()
        if not ws.closed:
            await ws.close()
        rt.sockets.discard(ws)
    return ws


async def close_sockets(app: web.Application) -> None:
    """On shutdown, close device sockets so their handlers finish and devices reconnect."""
    rt = app[RUNTIME]
    await asyncio.gather(*(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown")
                           for ws in list(rt.sockets)), return_exceptions=True)


async def _handshake(rt: Runtime, ws: web.WebSocketResponse, path_id: str,
                     token_ok: bool) -> wire.Hello | None:
    try:
        frame = await ws.receive(timeout=rt.settings.server.header_timeout_s)
    except TimeoutError:
        await _refuse(rt, ws, wire.ErrorCode.MALFORMED, "no hello within "
                      f"{rt.settings.server.header_timeout_s:g} s")
        return None
    if frame.type != aiohttp.WSMsgType.BINARY:
        if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                          aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            return None  # gone, or cut off by aiohttp (a frame over the limit: 1009)
        await _refuse(rt, ws, wire.ErrorCode.MALFORMED, "first frame must be a binary hello")
        return None
    try:
        msg = wire.decode(frame.data)
    except wire.ProtocolError as exc:
        await _refuse(rt, ws, exc.code, exc.reason)
        return None
    if not isinstance(msg, wire.Hello):
        await _refuse(rt, ws, wire.ErrorCode.NOT_REGISTERED,
                      f"expected hello, got {msg.TYPE}")
        return None
    if msg.version != wire.PROTOCOL_VERSION:
        await _refuse(rt, ws, wire.ErrorCode.BAD_VERSION,
                      f"protocol version {msg.version} unsupported (server speaks "
                      f"{wire.PROTOCOL_VERSION})")
        return None
    if msg.device_id != path_id:
        await _refuse(rt, ws, wire.ErrorCode.MALFORMED,
                      f"hello.device_id {msg.device_id!r} does not match the URL {path_id!r}")
        return None
    expected = rt.settings.token
    if expected and not token_ok and not hmac.compare_digest(msg.token.encode(),
                                                             expected.encode()):
        await _refuse(rt, ws, wire.ErrorCode.UNAUTHORIZED, "bad or missing token")
        return None
    return msg


def _on_frame(rt: Runtime, device_id: str, data: bytes, outbox: Outbox,
              loop: asyncio.AbstractEventLoop, held: Held) -> None:
    fields = wire.infer_fields(data)
    if fields is not None:  # a device's usual message, checked without building an `Infer`
        sample_id, dtype, shape, payload, deadline_ms, hold_ms = fields
        try:
            x = sample_view(dtype, shape, payload, rt.model)
        except wire.ProtocolError as exc:
            _error(rt, outbox, exc.code, exc.reason, sample_id)
            return
        _take_infer(rt, device_id, sample_id, deadline_ms, hold_ms, x, outbox, loop, held,
                    len(data))
        return
    try:
        msg = wire.decode(data)
    except wire.ProtocolError as exc:
        _error(rt, outbox, exc.code, exc.reason)
        return
    if isinstance(msg, wire.Infer):
        try:
            x = sample_from_infer(msg, rt.model)
        except wire.ProtocolError as exc:
            _error(rt, outbox, exc.code, exc.reason, msg.sample_id)
            return
        _take_infer(rt, device_id, msg.sample_id, msg.deadline_ms, msg.hold_ms, x, outbox,
                    loop, held, len(data))
    elif isinstance(msg, wire.Report):
        if msg.hold_ms <= 0:
            _on_report(rt, device_id, msg, outbox, loop)
        elif not held.hold(msg.hold_ms / 1e3, len(data), _on_report, rt, device_id, msg,
                           outbox, loop):
            rt.stats.on_protocol_error("link_backlog")
    else:
        _error(rt, outbox, wire.ErrorCode.UNKNOWN_TYPE,
               f"{msg.TYPE} is not a device message after hello")


def _take_infer(rt: Runtime, device_id: str, sample_id: int, deadline_ms: float,
                hold_ms: float, x: np.ndarray, outbox: Outbox,
                loop: asyncio.AbstractEventLoop, held: Held, nbytes: int) -> None:
    """A checked sample within its device's budget: queued now, or when its emulated uplink
    delivers it (`hold_ms`)."""
    if not rt.limits.admit(device_id, loop.time()):
        _error(rt, outbox, wire.ErrorCode.RATE_LIMITED,
               f"over this device's budget of {rt.limits.rate_of(device_id) or 0:.0f} "
               "requests/s (its declared rate with headroom)", sample_id)
        return
    if hold_ms <= 0:
        _on_infer(rt, device_id, sample_id, deadline_ms, x, outbox, loop)
    elif not held.hold(hold_ms / 1e3, nbytes, _on_infer, rt, device_id, sample_id,
                       deadline_ms, x, outbox, loop):
        rt.stats.on_rejected("link_backlog")
        outbox.send(wire.encode(wire.Result(
            sample_id=sample_id, status=wire.ResultStatus.REJECTED,
            reason=f"uplink backlog full ({MAX_HELD} messages on this device's link, or "
                   f"the server's {rt.settings.server.max_held_mb:g} MB for all links)",
            cause="link_backlog")))


def _on_infer(rt: Runtime, device_id: str, sample_id: int, deadline_ms: float, x: np.ndarray,
              outbox: Outbox, loop: asyncio.AbstractEventLoop) -> None:
    """A sample the device's uplink delivers now: its budget starts now."""
    now = loop.time()
    budget_ms = deadline_ms if deadline_ms > 0 else DEFAULT_DEADLINE_MS
    _admit(rt, Request(device_id, sample_id, x, now, now + budget_ms / 1e3, outbox.respond,
                       outbox.send))


def _on_report(rt: Runtime, device_id: str, msg: wire.Report, outbox: Outbox,
               loop: asyncio.AbstractEventLoop) -> None:
    problem = rt.controller.on_report(device_id, msg, loop.time())
    if problem is not None:
        _error(rt, outbox, wire.ErrorCode.MALFORMED, f"report refused: {problem}",
               counted_as="bad_report")


def _admit(rt: Runtime, req: Request) -> None:
    try:
        if rt.idn is not None:
            if not req.task and req.device_id != "http":  # a device's task: its tier's
                session = rt.controller.sessions.get(req.device_id)
                req.task = rt.idn.task_of_tier(session.info.tier if session else "")
            rt.idn.submit(req)
        else:
            rt.batcher.submit(req)
    except AdmissionRefused as exc:
        rt.stats.on_rejected(exc.cause)
        req.respond(wire.Result(sample_id=req.sample_id, status=wire.ResultStatus.REJECTED,
                                reason=exc.reason, cause=exc.cause))


def _error(rt: Runtime, outbox: Outbox, code: wire.ErrorCode, reason: str,
           sample_id: int | None = None, counted_as: str = "") -> None:
    rt.stats.on_protocol_error(counted_as or code.name.lower())
    outbox.send(wire.encode(wire.Error(code=int(code), reason=_short(reason),
                                       sample_id=sample_id)))


async def _refuse(rt: Runtime, ws: web.WebSocketResponse, code: wire.ErrorCode,
                  reason: str) -> None:
    rt.stats.on_protocol_error(code.name.lower())
    reason = _short(reason)
    with contextlib.suppress(ConnectionError):  # the peer may be gone already
        await ws.send_bytes(wire.encode(wire.Error(code=int(code), reason=reason)))
        await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION,
                       message=_close_message(reason))


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "..."


def _close_message(reason: str) -> bytes:
    """A close frame's payload is at most 125 bytes, 2 of them the code: cut the UTF-8
    reason to 123 bytes without splitting a character."""
    return reason.encode()[:123].decode(errors="ignore").encode()


# --- HTTP -----------------------------------------------------------------------------------


def _http_error(code: wire.ErrorCode, reason: str) -> web.Response:
    reason = _short(reason)
    return web.Response(status=wire.HTTP_STATUS[code], content_type=MSGPACK,
                        body=wire.encode(wire.Error(code=int(code), reason=reason)),
                        headers={"X-Error-Reason": reason[:200].encode("ascii", "replace")
                                 .decode()})


def _authorized(request: web.Request, token: str) -> bool:
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


async def http_infer(request: web.Request) -> web.Response:
    """One msgpack `infer` in, one `result` out. With a run token, the caller must send
    `Authorization: Bearer <token>`, as devices present it in `hello`."""
    rt = request.app[RUNTIME]
    if not _authorized(request, rt.settings.token):
        rt.stats.on_protocol_error("unauthorized")
        return _http_error(wire.ErrorCode.UNAUTHORIZED, "bad or missing bearer token")
    if request.content_length is not None and request.content_length > wire.MAX_MESSAGE_BYTES:
        rt.stats.on_protocol_error("too_large")
        return _http_error(wire.ErrorCode.TOO_LARGE, "request body too large")
    try:
        async with asyncio.timeout(HTTP_BODY_TIMEOUT_S):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        rt.stats.on_protocol_error("too_large")
        return _http_error(wire.ErrorCode.TOO_LARGE, "request body too large")
    except TimeoutError:
        rt.stats.on_protocol_error("body_timeout")
        return _http_error(wire.ErrorCode.MALFORMED,
                           f"request body not received within {HTTP_BODY_TIMEOUT_S:.0f} s")
    try:
        msg = wire.decode(body)
        if not isinstance(msg, wire.Infer):
            raise wire.ProtocolError(wire.ErrorCode.UNKNOWN_TYPE,
                                     f"POST /v1/infer takes an infer message, not {msg.TYPE}")
        x = sample_from_infer(msg, rt.model)
    except wire.ProtocolError as exc:
        rt.stats.on_protocol_error(exc.code.name.lower())
        return _http_error(exc.code, exc.reason)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[wire.Result] = loop.create_future()
    now = loop.time()
    budget_ms = msg.deadline_ms if msg.deadline_ms > 0 else DEFAULT_DEADLINE_MS

    def respond(res: wire.Result) -> None:
        if not fut.done():
            fut.set_result(res)

    task = request.query.get("task", "")
    if task and not is_name(task):
        rt.stats.on_protocol_error("malformed")
        return _http_error(wire.ErrorCode.MALFORMED, "task must be a name")
    req = Request("http", msg.sample_id, x, now, now + budget_ms / 1e3, respond, task=task)
    _admit(rt, req)
    result = await fut
    if result.status == wire.ResultStatus.REJECTED:
        return web.Response(status=503, content_type=MSGPACK, body=wire.encode(result),
                            headers={"Retry-After": "1"})
    return web.Response(content_type=MSGPACK, body=wire.encode(result))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _may_read(request: web.Request, rt: Runtime) -> bool:
    """`/v1/status` and `/metrics` list device ids and load: the token's holders only, unless
    the server was started with `--public-metrics`."""
    return rt.settings.public_metrics or _authorized(request, rt.settings.token)


async def status(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if not _may_read(request, rt):
        rt.stats.on_protocol_error("unauthorized")
        return web.json_response({"error": "bad or missing bearer token"}, status=401)
    body = {**rt.status(), "connections": request.app[GUARD].status()}
    return web.Response(text=json.dumps(body, indent=2), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if not _may_read(request, rt):
        rt.stats.on_protocol_error("unauthorized")
        return web.Response(status=401, text="bad or missing bearer token\n")
    return web.Response(body=generate_latest(rt.stats.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
