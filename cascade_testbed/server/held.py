"""Messages a device sent with `hold_ms` (its emulated uplink), held on the server's loop until
the link delivers them: at most `MAX_HELD` per connection and, together over every
connection, at most the server's `max_held_mb` (a budget in bytes, not per connection, so
many connections cannot multiply it). What a closed connection held is released at once, and
the memory returns to the system (`trim`), not only to the allocator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from cascade_testbed.common.looplag import LagHistogram

MAX_HELD = 4096
"""Messages one device may have on its emulated uplink at once; an hour-long cut at 1 Hz.
Beyond it a sample is rejected (`link_backlog`) and a report dropped, both counted."""
HELD_OVERHEAD_BYTES = 1024
"""What holding one message costs beyond its frame (its timer handle, the arguments, the
array view and the bookkeeping): charged with the frame's bytes, so the budget is close to
the memory it bounds (about 1 KiB each, measured: 4,096 held per connection took ~4 MB)."""
TRIM_AFTER_BYTES = 4 * 2**20
"""Released held bytes after which the allocator is asked to give free memory back."""
TRIM_DELAY_S = 1.0
"""How long after the release: once the loop has dropped the cancelled timers."""


@dataclass
class HeldBudget:
    """Bytes held over all connections. Pure bookkeeping: who charges must release."""

    limit_bytes: int
    held_bytes: int = 0
    refused: int = 0
    released_since_trim: int = 0
    late: LagHistogram = field(default_factory=LagHistogram)
    """How late the server's loop acted on held messages after their links delivered them:
    the server's own part of the link timing error (docs/emulation.md)."""

    def charge(self, nbytes: int) -> bool:
        if self.held_bytes + nbytes > self.limit_bytes:
            self.refused += 1
            return False
        self.held_bytes += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.held_bytes -= nbytes
        self.released_since_trim += nbytes

    def trim_due(self) -> bool:
        """True (once) when enough was released since the last trim to be worth one, or
        when nothing is held any more after anything was released."""
        if self.released_since_trim < TRIM_AFTER_BYTES and (
                self.held_bytes or not self.released_since_trim):
            return False
        self.released_since_trim = 0
        return True


class Held:
    """One connection's held messages. Held here, on the server's loop, which wakes up
    anyway, so each device process wakes once less per message. Dropped with the
    connection, as a dead TCP connection drops what it carried."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = MAX_HELD,
                 budget: HeldBudget | None = None) -> None:
        self._loop = loop
        self._limit = limit
        self._budget = budget or HeldBudget(sys.maxsize)
        self._handles: dict[int, tuple[asyncio.TimerHandle, int]] = {}
        self._next = 0

    def hold(self, delay_s: float, nbytes: int, deliver: Callable[..., None],
             *args: object) -> bool:
        """Call `deliver(*args)` in `delay_s`; False (nothing scheduled) when this
        connection's count or the server's bytes are full."""
        nbytes += HELD_OVERHEAD_BYTES
        if len(self._handles) >= self._limit or not self._budget.charge(nbytes):
            return False
        key = self._next = self._next + 1
        due = self._loop.time() + delay_s
        self._handles[key] = (self._loop.call_at(due, self._deliver, key, due, deliver,
                                                 args), nbytes)
        return True

    def _deliver(self, key: int, due: float, deliver: Callable[..., None],
                 args: tuple[object, ...]) -> None:
        _, nbytes = self._handles.pop(key)
        self._budget.release(nbytes)
        self._budget.late.add(self._loop.time() - due)
        deliver(*args)

    def __len__(self) -> int:
        return len(self._handles)

    def drop(self) -> None:
        for handle, nbytes in self._handles.values():
            handle.cancel()  # drops its arguments, the held message with them
            self._budget.release(nbytes)
        self._handles.clear()
        if self._budget.trim_due():
            # Soon, not now: when the loop has let go of the cancelled timers, and once for
            # many connections closing together.
            self._loop.call_later(TRIM_DELAY_S, trim)


def trim() -> None:
    """Ask glibc to return free heap pages to the system: without it, the memory of messages
    released by closed connections stays in the process (RSS) though nothing uses it."""
    gc.collect()  # what the closed connections left in reference cycles
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to ask
        ctypes.CDLL(None).malloc_trim(0)
