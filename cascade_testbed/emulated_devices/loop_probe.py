"""The device's timers, and how late its event loop runs them.

Every device timing that shapes a sample (its arrival, its reply timeout) is a timer callback;
when the loop runs one late, the emulation is off by as much. (What follows from an arrival,
the padded computation's end and the uplink's delivery, is computed then; waits that time no
sample, such as draining at the run's end, are not counted.)
`TimerLag.call_at` schedules a timer and records that lateness, so the lag measured is exactly
the emulation's timing error, at no extra wake-up (wake-ups are most of a device's CPU; a
separate periodic probe in 200 processes cost about a tenth of a core).

`precise_loop` gives the device an event loop whose timers fire on time: asyncio's default
epoll selector rounds every wait up to a whole millisecond (epoll_wait takes ms), so every
timer was 0-1 ms late by construction; select() takes microseconds, and a device watches only
a handful of descriptors.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any

from cascade_testbed.common.looplag import LagHistogram


class TimerLag:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.hist = LagHistogram()

    def call_at(self, when: float, callback: Callable[..., object], *args: Any
                ) -> asyncio.TimerHandle:
        """`loop.call_at` that records how late the callback runs (a deadline already past
        counts from now)."""
        due = max(when, self._loop.time())
        return self._loop.call_at(when, self._run, due, callback, args)

    def _run(self, due: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.hist.add(self._loop.time() - due)
        callback(*args)


def precise_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop on select(): microsecond timer resolution instead of epoll's ms."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())
