"""The server's door: connection caps and the header timeout of `connection_limits`, applied to
real sockets, below aiohttp (which has neither: a client that trickles its headers holds a
socket forever).

`GuardedSite` listens like aiohttp's `TCPSite`, but wraps each connection's protocol: a refused
connection gets a short 503 and is closed before aiohttp sees a byte; an admitted one is
forwarded untouched. `mark_started` (from a middleware, or from the WebSocket handler once a
device has said hello) takes a connection off the pending list.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from aiohttp import web

from cascade_testbed.common.logsetup import RateLimit
from cascade_testbed.server.connection_limits import Admit, ConnectionLimits, Limits

log = logging.getLogger(__name__)
FD_RESERVE = 64
"""File descriptors kept for the server itself (models, logs, pipes, the listening socket)."""
_refusals = RateLimit(per_key=5, window_s=10.0)
"""At most 5 warnings per peer and reason every 10 s: a flood must not become a log flood."""


class ConnectionGuard:
    """The shell around `ConnectionLimits`: a timer for the header deadline, and transports."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = ConnectionLimits[asyncio.BaseTransport](limits or Limits())
        self._timer: asyncio.TimerHandle | None = None

    def open(self, transport: asyncio.BaseTransport) -> bool:
        loop = asyncio.get_running_loop()
        peer = _peer(transport)
        decision = self.limits.open(transport, peer, loop.time())
        if not isinstance(decision, Admit):
            if _refusals.allow((peer, decision.reason), loop.time()):
                log.warning("refused a connection from %s: %s", peer, decision.reason)
            body = f"{decision.reason}\n".encode()
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                b"Content-Type: text/plain\r\nRetry-After: 1\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            transport.close()
            return False
        if decision.evict is not None:
            _abort(decision.evict)
        self._arm(loop)
        return True

    def started(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self.limits.started(transport)

    def close(self, transport: asyncio.BaseTransport) -> None:
        self.limits.close(transport)

    def status(self) -> dict[str, Any]:
        lim = self.limits
        return {"open": lim.open_count, "pending": lim.pending_count,
                "refused": dict(lim.refused), "evicted_pending": lim.evicted,
                "header_timeouts": lim.timed_out}

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = self.limits.next_deadline()
        if self._timer is None and deadline is not None:
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        for transport in self.limits.overdue(loop.time()):
            _abort(transport)
        self._arm(loop)


class _Guarded(asyncio.Protocol):
    """One connection: admitted by the guard, then everything goes to aiohttp's handler."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.open(transport):
            self._transport = transport
            self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.close(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._transport is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """`TCPSite`, with every connection passed through a `ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        handler = self._runner.server
        assert handler is not None
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(handler(), guard), self._host, self._port,
            backlog=self._backlog, reuse_address=True)


def host_limits(limits: Limits | None = None) -> Limits:
    """`limits`, with the connection cap lowered to what the process's open-file limit leaves
    after a reserve for models, logs and the harness's pipes: past the cap a client is told
    503 at once, instead of every socket (healthz included) timing out in accept."""
    import resource

    limits = limits or Limits()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY
                                                           or hard > soft):
        # Raise our own soft limit as far as the hard one allows (as nginx does), so that a
        # laptop's default of 1024 does not cap a run of many devices.
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits
    room = max(int(soft) - FD_RESERVE, 8)
    if room >= limits.max_connections:
        return limits
    return dataclasses.replace(limits, max_connections=room,
                               max_per_peer=min(limits.max_per_peer, room),
                               max_pending=min(limits.max_pending, max(room // 4, 1)))


def _peer(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    return str(peername[0]) if isinstance(peername, tuple) and peername else "unknown"


def _abort(transport: asyncio.BaseTransport) -> None:
    abort = getattr(transport, "abort", None)
    (abort or transport.close)()
