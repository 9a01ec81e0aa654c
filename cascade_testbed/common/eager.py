"""Run a coroutine's first step now, from a callback, and finish it in a task only if it has
to wait.

aiohttp writes an uncompressed WebSocket frame synchronously unless the socket is paused, yet
`send_bytes` is a coroutine: awaiting it from a task costs a wake-up of that task (a future,
a turn of the event loop) per frame. Stepping the coroutine by hand finishes it in place in
the usual case, as Python 3.12's eager tasks would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Suspended:
    """A coroutine that yielded on its first step, and what it waits for."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    async def finish(self) -> None:
        """Go on as a task would: wait for what it yields, step it again, until it returns.
        Its exception, if any, is raised here."""
        coro, waiting = self.coro, self.waiting
        try:
            while True:
                if waiting is None:  # a bare yield: one turn of the loop
                    await asyncio.sleep(0)
                else:
                    await asyncio.wait([waiting])
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    return
        finally:
            coro.close()


def step(coro: Coroutine[Any, Any, Any]) -> Suspended | None:
    """Run `coro` up to its first suspension: None if it finished (its exception, if any,
    raised here), else the `Suspended` coroutine to `finish` later."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    return Suspended(coro, waiting)
