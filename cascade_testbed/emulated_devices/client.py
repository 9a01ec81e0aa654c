"""A device's connection to the server: `ServerSession` (connect, reconnect with back-off,
registration, counting what crosses the socket) over `ServerConnection` (one WebSocket
session: handshake, sending, and a stream of decoded server messages)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import numpy as np

from cascade_testbed.common import eager
from cascade_testbed.common import protocol as wire

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
RECONNECT_BACKOFF_S = (0.05, 2.0)
"""The first and the longest wait between connection attempts (before their jitter)."""
FATAL_REFUSALS = frozenset({wire.ErrorCode.UNAUTHORIZED, wire.ErrorCode.BAD_VERSION,
                            wire.ErrorCode.MALFORMED})
"""Refusals that retrying cannot fix; a duplicate id may clear once the old session closes."""


class RegistrationFailed(ConnectionError):
    """The server will not accept this device (bad token, version, or hello)."""


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


@dataclass(slots=True)
class Backoff:
    """Waits between connection attempts: doubling from the first to the last of
    `RECONNECT_BACKOFF_S`, each up to half longer at random, so that devices a server dropped
    together do not all come back at once. `rng` is for this alone (the device's
    `STREAM_RECONNECT`): a reconnect must not shift any other random draw."""

    rng: np.random.Generator
    base_s: float = RECONNECT_BACKOFF_S[0]

    def reset(self) -> None:
        """A connection succeeded: the next wait is the first again."""
        self.base_s = RECONNECT_BACKOFF_S[0]

    def next_s(self) -> float:
        """The wait before the next attempt; the one after it is twice as long (capped)."""
        wait = self.base_s * (1 + 0.5 * float(self.rng.random()))
        self.base_s = min(self.base_s * 2, RECONNECT_BACKOFF_S[1])
        return wait


class ServerSession:
    """A device's connection to the server for its whole run: connects in the background and
    reconnects with back-off until closed, and counts what crosses the socket.

    What the server's messages mean is the device's business: it hears of each welcome
    (`on_welcome`, before the new connection counts as `connected`), each message
    (`on_message`, with its size in bytes) and each connection that ended or failed to start
    (`on_lost`)."""

    def __init__(self, base_url: str, hello: wire.Hello, backoff_rng: np.random.Generator, *,
                 on_welcome: Callable[[wire.Welcome], None],
                 on_message: Callable[[wire.Message, int], None],
                 on_lost: Callable[[], None]) -> None:
        self._conn = ServerConnection(base_url, hello)
        self._device_id = hello.device_id
        self._backoff = Backoff(backoff_rng)
        self._on_welcome = on_welcome
        self._on_message = on_message
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._welcomed = asyncio.Event()
        self._attempt_failed = asyncio.Event()
        self._closing = False
        self.last_connect_error = ""
        """Why the last connection attempt failed (said when registering times out)."""
        self.reconnects = -1
        """Connections the server welcomed, less the first (-1: none yet)."""
        self.requests_sent = 0
        """Samples handed to the socket (device -> server requests)."""
        self.bytes_sent = 0
        """Payload bytes of those requests."""
        self.bytes_received = 0
        """Payload bytes of the replies (`result` frames)."""

    @property
    def connected(self) -> bool:
        """Welcomed, and the connection not known to have ended."""
        return self._connected.is_set()

    def connect(self) -> asyncio.Task[None]:
        """Start connecting (and reconnecting, with backoff) in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return self._task

    async def wait_registered(self, timeout_s: float, fail_fast: bool,
                              on_failure: Callable[[], Awaitable[None]]) -> None:
        """Start connecting and return once the server has welcomed this device; raise
        `RegistrationFailed` at once on a refusal that retrying cannot fix, TimeoutError if
        the server stays unreachable. `fail_fast` (a device started by hand): the first
        failed connection attempt raises ConnectionError with its reason. Before raising,
        `on_failure` is awaited (the device closes, and so this session)."""
        task = self.connect()
        welcomed = asyncio.create_task(self._welcomed.wait())
        failed = asyncio.create_task(self._attempt_failed.wait())
        waits = {welcomed, task} | ({failed} if fail_fast else set())
        done, _ = await asyncio.wait(waits, timeout=timeout_s,
                                    return_when=asyncio.FIRST_COMPLETED)
        failed.cancel()
        if welcomed in done:
            return
        welcomed.cancel()
        if failed in done and task not in done:
            await on_failure()
            raise ConnectionError(f"cannot connect: {self.last_connect_error}")
        if task in done:
            await on_failure()
            task.result()  # re-raises RegistrationFailed (or a bug) as it is
            raise RegistrationFailed("the connection ended before the server welcomed us")
        await on_failure()
        raise TimeoutError(f"no welcome from the server within {timeout_s:.0f} s"
                           + (f" (last try: {self.last_connect_error})"
                              if self.last_connect_error else ""))

    def send_nowait(self, data: bytes, *, request: bool) -> bool:
        """Hand a frame to the socket now (`ServerConnection.send_nowait`); False if there is
        no connection to take it. `request`: a sample, counted in `requests_sent` and
        `bytes_sent`."""
        try:
            self._conn.send_nowait(data)
        except (ConnectionError, RuntimeError, OSError):
            return False
        if request:
            self.requests_sent += 1
            self.bytes_sent += len(data)
        return True

    async def send(self, data: bytes) -> None:
        """Send a frame and wait for the socket to take it; nothing if not connected."""
        if self._connected.is_set():
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                await self._conn.send(data)

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        self._closing = True
        task = self._task
        await self._conn.close()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._closing:
            try:
                welcome = await self._conn.open()
                self.reconnects += 1
                self._backoff.reset()
                self._on_welcome(welcome)
                self._connected.set()
                self._welcomed.set()
                async for msg, nbytes in self._conn.messages():
                    if isinstance(msg, wire.Result):
                        self.bytes_received += nbytes
                    self._on_message(msg, nbytes)
            except HandshakeRefused as exc:
                log.error("%s: %s", self._device_id, exc)
                if exc.code in FATAL_REFUSALS:
                    raise RegistrationFailed(str(exc)) from exc
            except (TimeoutError, OSError, ConnectionError, wire.ProtocolError,
                    RuntimeError) as exc:
                log.debug("%s: connection failed: %r", self._device_id, exc)
                self.last_connect_error = str(exc) or type(exc).__name__
                self._attempt_failed.set()
            self._connected.clear()
            self._on_lost()
            if self._closing:
                break
            await asyncio.sleep(self._backoff.next_s())
