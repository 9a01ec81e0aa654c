"""The live view's I/O: poll the server's `/v1/status` (with the run's token) about twice a
second, turn each answer into a row (`testbed.dashboard.series`), and serve a page on
127.0.0.1 that draws the rows with the vendored uPlot and gets new ones over server-sent events.

The token stays here: the page talks only to this small server, which never sends it on.
Two ways to run it: `Dashboard`, a thread of the harness process for `testbed up/run
--dashboard` (its own event loop, so a browser never holds up the harness's loop), and
`watch`, in the foreground for `testbed watch URL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cascade_testbed.testbed.dashboard.series import CHARTS, Timeline, columns

HOST = "127.0.0.1"
"""Never another address: the page shows the run's device ids and load (docs/dashboard.md)."""
DEFAULT_PORT = 8089
POLL_S = 0.5
STATUS_TIMEOUT_S = 0.4
GONE_AFTER_S = 10.0
"""`watch` ends when the server it has seen stops answering for this long (the run ended)."""
SUBSCRIBER_BACKLOG = 120
"""Rows a page may fall behind before it is dropped (it reconnects and reloads)."""
STATIC = Path(__file__).with_name("static")
FILES = {"": ("index.html", "text/html"), "dashboard.js": ("dashboard.js", "text/javascript"),
         "uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript"),
         "uPlot.min.css": ("uPlot.min.css", "text/css")}
"""What the page may fetch, by fixed name: no request path ever becomes a file path."""


class WatchError(RuntimeError):
    """The view cannot start: the server does not answer or refuses the token."""


@dataclass
class Target:
    server_url: str
    token: str
    events_path: Path | None = None
    """The run's `events.harness.jsonl`, for fault markers (None: status changes only)."""


class EventTail:
    """New complete lines of a growing JSON-lines file, read from where the last call left."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1  # a torn last line waits for the next call
        self._offset += end
        out = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out


END_DRAIN_S = 1.0
"""How long the view waits for open pages to be sent the end of the run before it stops."""


class Hub:
    """The timeline and the pages listening to it. A page's queue holds rows, then either an
    `{"end": ...}` item (the run ended: the page keeps what it shows) or None (the stream
    stops without an end: the page was too slow and reloads)."""

    def __init__(self, timeline: Timeline | None = None) -> None:
        self.timeline = timeline or Timeline()
        self.title = "testbed"
        self.ended: dict[str, Any] | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def add(self, t: float, status: dict[str, Any] | None,
            events: list[dict[str, Any]]) -> dict[str, Any]:
        row = self.timeline.add(t, status, events)
        for queue in list(self._subscribers):
            if queue.qsize() >= SUBSCRIBER_BACKLOG:  # a page that stopped reading
                self._subscribers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(row)
        return row

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    def end(self, text: str) -> None:
        """The run ended: every page is told so (it shows `text` and keeps its last values
        instead of a broken connection) and the streams stop."""
        if self.ended is None:
            self.ended = {"t": time.time(), "text": text}
        for queue in self._subscribers:
            queue.put_nowait({"end": self.ended})

    async def drained(self, timeout_s: float = END_DRAIN_S) -> None:
        """Until every page's stream has stopped (sent what it was queued), or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._subscribers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling a set the stream handlers empty

    def close(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()


HUB = web.AppKey("hub", Hub)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _own_host_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer only requests addressed to this page (Host 127.0.0.1:<port> or
    localhost:<port>): a web page elsewhere that rebinds its own name to 127.0.0.1 (DNS
    rebinding) sends its own name as Host, and must not read the run's series and rows."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    port = sock[1] if isinstance(sock, tuple) and len(sock) >= 2 else None
    if port is None or request.host not in (f"{HOST}:{port}", f"localhost:{port}"):
        raise web.HTTPMisdirectedRequest(text="this page answers only to its own address "
                                              "(127.0.0.1 or localhost with its port)\n")
    return await handler(request)


def make_app(hub: Hub) -> web.Application:
    app = web.Application(middlewares=[_own_host_only])
    app[HUB] = hub
    app.router.add_get("/", _file)
    app.router.add_get("/static/{name}", _file)
    app.router.add_get("/series", _series)
    app.router.add_get("/rows", _rows)

    async def on_shutdown(app: web.Application) -> None:
        hub.close()  # ends the event streams, so the server stops at once

    app.on_shutdown.append(on_shutdown)
    return app


async def _file(request: web.Request) -> web.Response:
    entry = FILES.get(request.match_info.get("name", ""))
    if entry is None:
        raise web.HTTPNotFound()
    name, kind = entry
    return web.Response(body=(STATIC / name).read_bytes(), content_type=kind,
                        headers={"Cache-Control": "no-cache"})


async def _series(request: web.Request) -> web.Response:
    """Everything so far, in column form, with the charts' titles and units."""
    hub = request.app[HUB]
    rows = hub.timeline.rows
    body = {**columns(rows), "title": hub.title, "last": rows[-1] if rows else None,
            "last_up": hub.timeline.last_up, "tier_now": hub.timeline.tier_now,
            "ended": hub.ended,
            "layout": [{"name": c.name, "title": c.title, "unit": c.unit, "by": c.by}
                       for c in CHARTS]}
    return web.json_response(body, dumps=_dumps)


async def _rows(request: web.Request) -> web.StreamResponse:
    """Each new row as a server-sent event; the end of the run as an `end` event."""
    hub = request.app[HUB]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    queue = hub.subscribe()
    try:
        if hub.ended is not None:
            queue.put_nowait({"end": hub.ended})
        while (row := await queue.get()) is not None:
            if "end" in row:
                await resp.write(f"event: end\ndata: {_dumps(row['end'])}\n\n".encode())
                break
            await resp.write(f"data: {_dumps(row)}\n\n".encode())
    except (ConnectionError, RuntimeError):
        pass  # the page went away
    finally:
        hub.unsubscribe(queue)
    return resp


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def fetch_status(session: aiohttp.ClientSession, target: Target
                       ) -> tuple[dict[str, Any] | None, int | None]:
    """The server's status and the HTTP status code (None, None: no answer in time)."""
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    try:
        async with session.get(f"{target.server_url}/v1/status", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=STATUS_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return None, resp.status
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None, None
    return (body if isinstance(body, dict) else None), 200


class Poller:
    """Polls one server every `POLL_S` and feeds the hub; remembers when it last answered."""

    def __init__(self, hub: Hub, target: Target) -> None:
        self.hub = hub
        self.target = target
        self.tail = EventTail(target.events_path) if target.events_path else None
        self.last_ok: float | None = None
        self.last_code: int | None = None
        self.run_ended = False
        """The run folder (when known) says the run ended: its `run_end` event, or its
        summary.json written since the watch began (collecting it merges the events away).
        No need then to wait for the server's silence."""
        self._summary = target.events_path.with_name("summary.json") \
            if target.events_path else None
        self._summary_before = self._summary is not None and self._summary.exists()

    async def once(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        status, self.last_code = await fetch_status(session, self.target)
        now = time.time()
        if status is not None:
            self.last_ok = now
        events = self.tail.read_new() if self.tail else []
        self.run_ended = self.run_ended or any(e.get("kind") == "run_end" for e in events) or (
            self._summary is not None and not self._summary_before and self._summary.exists())
        self.hub.add(now, status, events)
        return status

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            began = loop.time()
            await self.once(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, POLL_S - (loop.time() - began)))


async def _serve(hub: Hub, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_app(hub), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    sockets = runner.addresses
    return runner, f"http://{HOST}:{sockets[0][1]}/"


class Dashboard:
    """The live view of `testbed up/run --dashboard`: a thread with its own event loop in the
    harness process. `start` binds the page's port; `follow` points it at the run's server
    once that listens; `close` stops it with the run."""

    def __init__(self, port: int = DEFAULT_PORT, title: str = "testbed") -> None:
        self.port = port
        self.hub = Hub()
        self.hub.title = title
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dashboard", daemon=True)

    def start(self) -> str:
        """The page's URL; OSError when the port cannot be bound."""
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if not self.url:
            raise OSError("the dashboard did not start within 30 s")
        return self.url

    def follow(self, target: Target) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._follow, target)

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)

    def _follow(self, target: Target) -> None:
        self._poll_task = asyncio.get_running_loop().create_task(self._poll(target))

    async def _poll(self, target: Target) -> None:
        assert self._stop is not None
        async with aiohttp.ClientSession() as session:
            await Poller(self.hub, target).run(session, self._stop)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            runner, self.url = await _serve(self.hub, self.port)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
            task = getattr(self, "_poll_task", None)
            if task is not None:
                await asyncio.wait_for(task, 5)
        finally:
            self.hub.end("run ended")
            await self.hub.drained()
            await runner.cleanup()


async def watch(target: Target, port: int, announce: Callable[[str], None],
                gone_after_s: float = GONE_AFTER_S) -> str:
    """`testbed watch`: serve the view of a run already going until the run's events say it
    ended (when their file is known) or its server has been silent for `gone_after_s`
    (returns why it ended). WatchError when the server does not answer at first or refuses
    the token."""
    hub = Hub()
    hub.title = target.server_url
    poller = Poller(hub, target)
    async with aiohttp.ClientSession() as session:
        if await poller.once(session) is None:
            if poller.last_code in (401, 403):
                raise WatchError(f"{target.server_url} refused the token (give the run's token: "
                                 "TESTBED_TOKEN, --token-file or --run-dir)")
            raise WatchError(f"no server answers at {target.server_url}"
                             + (f" (HTTP {poller.last_code})" if poller.last_code else ""))
        try:
            runner, url = await _serve(hub, port)
        except OSError as exc:
            raise WatchError(f"cannot serve the dashboard on {HOST}:{port}: "
                             f"{exc.strerror or exc}") from None
        announce(url)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(session, stop))
        try:
            while True:
                await asyncio.sleep(POLL_S)
                assert poller.last_ok is not None
                if poller.run_ended:
                    return "the run ended (its events say so)"
                if time.time() - poller.last_ok > gone_after_s:
                    return f"the server has not answered for {gone_after_s:.0f} s: the run ended"
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5)
            hub.end("run ended" if poller.run_ended else "run ended (the server stopped "
                    "answering)" if poller.last_ok is not None
                    and time.time() - poller.last_ok > gone_after_s else "live view stopped")
            await hub.drained()
            await runner.cleanup()
