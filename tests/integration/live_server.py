"""A real server running in a background thread, for tests that are not coroutines
(hypothesis drives plain functions) and for tests that must outlive one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from cascade_testbed.server.main import serve
from cascade_testbed.server.runtime import ServerSettings


@contextlib.contextmanager
def server_in_thread(settings: ServerSettings, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Yield the URL of a server serving `settings` until the block ends."""
    ready = threading.Event()
    url: list[str] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def on_listening(u: str) -> None:
        url.append(u)
        ready.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(settings, on_listening, stop))
        loop.close()

    thread = threading.Thread(target=main, name="test-server", daemon=True)
    thread.start()
    if not ready.wait(start_timeout_s):
        raise RuntimeError("server did not start")
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
