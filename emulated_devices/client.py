"""WebSocket client of one device: handshake, sending, and a stream of decoded server messages."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

import aiohttp

from common import eager
from common import protocol as wire

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0


class HandshakeRefused(ConnectionError):
    """The server answered `hello` with an error (bad token, duplicate id, bad version)."""

    def __init__(self, code: int, reason: str) -> None:
        try:
            name = wire.ErrorCode(code).name.lower()
        except ValueError:
            name = f"code {code}"
        super().__init__(f"server refused hello: {reason} ({name})")
        self.code = code


class ServerConnection:
    """One WebSocket session with the server. Not reconnecting by itself: the device decides."""

    def __init__(self, base_url: str, hello: wire.Hello) -> None:
        self._url = f"{base_url.rstrip('/')}/v1/devices/{hello.device_id}"
        self._hello = hello
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._backlog: deque[bytes] | None = None
        """Frames behind a send that is waiting for the socket to drain (None: no such send)."""
        self._draining: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def open(self) -> wire.Welcome:
        """Connect and say hello; return the server's welcome."""
        self._stop_draining()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        # The token goes in the upgrade request too: the server authenticates it before it
        # reads a frame, and only then accepts frames larger than a hello.
        headers = {"Authorization": f"Bearer {self._hello.token}"} if self._hello.token else {}
        ws = await self._session.ws_connect(self._url, max_msg_size=wire.MAX_MESSAGE_BYTES,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                                            heartbeat=None, autoping=True, headers=headers)
        try:
            await ws.send_bytes(wire.encode(self._hello))
            msg = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise ConnectionError(f"handshake: unexpected {msg.type.name} frame")
            reply = wire.decode(msg.data)
            if isinstance(reply, wire.Error):
                raise HandshakeRefused(reply.code, reply.reason)
            if not isinstance(reply, wire.Welcome):
                raise ConnectionError(f"handshake: expected welcome, got {reply.TYPE}")
        except BaseException:
            await ws.close()
            raise
        self._ws = ws
        return reply

    async def send(self, data: bytes) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("not connected")
        await self._ws.send_bytes(data)

    def send_nowait(self, data: bytes) -> None:
        """Send from a callback, without a turn of the event loop: an unpaused socket takes
        a frame at once, so the send coroutine is stepped here and normally finishes
        (`common.eager`). One that has to wait for the socket to drain goes on in a task, and
        later frames queue behind it in order."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionError("not connected")
        if self._backlog is not None:
            self._backlog.append(data)
            return
        suspended = eager.step(ws.send_bytes(data))
        if suspended is not None:
            self._backlog = deque()
            self._draining = asyncio.ensure_future(self._drain(ws, suspended))

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse,
                     suspended: eager.Suspended) -> None:
        try:
            await suspended.finish()
            while self._backlog:
                await ws.send_bytes(self._backlog.popleft())
        except (ConnectionError, RuntimeError, OSError) as exc:
            # The connection is going; its end fails the pending samples (`Device`).
            log.debug("send failed while draining: %r", exc)
        finally:
            if self._draining is asyncio.current_task():  # not a later connection's
                self._backlog = None
                self._draining = None

    def _stop_draining(self) -> None:
        """Frames still waiting for an old socket go nowhere (their samples time out)."""
        if self._draining is not None and not self._draining.done():
            self._draining.cancel()
        self._draining = None
        self._backlog = None

    async def messages(self) -> AsyncIterator[tuple[wire.Message, int]]:
        """Decoded server messages and their sizes until the connection closes. A malformed
        frame from the server is logged and skipped rather than ending the session."""
        ws = self._ws
        if ws is None:
            return
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    yield wire.decode(msg.data), len(msg.data)
                except wire.ProtocolError as exc:
                    log.warning("bad message from server: %s", exc.reason)
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break
        self._ws = None

    async def close(self) -> None:
        self._stop_draining()
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def drop(self) -> None:
        """Close the socket but keep the HTTP session for a reconnect."""
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await asyncio.shield(ws.close())
