"""The thread a heavy model runs in, one per emulated accelerator replica."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """The one thread the heavy model runs in: a job goes in through a queue and its outcome
    comes back to the event loop with one `call_soon_threadsafe`.

    `run_in_executor` on a `ThreadPoolExecutor` did the same through a concurrent future, its
    condition lock and callbacks, and an asyncio future chained to it: Python work on both
    threads per batch, and each time the model's thread needs the GIL the event loop waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "heavy-model") -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[..., Any],
                                            tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` in the thread, after the jobs before it; its result or exception."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fut, fn, args))
        return fut

    def shutdown(self) -> None:
        """Finish the jobs queued, then end the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            try:
                outcome, failed = fn(*args), False
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome, failed = exc, True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_settle, fut, outcome, failed)


def _settle(fut: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if fut.done():  # cancelled while the model ran
        return
    if failed:
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
