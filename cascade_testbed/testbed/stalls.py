"""Did the server stop answering? The harness polls its status every second; a run of polls
that go unanswered (or answer late) for longer than a threshold is a stall. Pure: the poll
times and outcomes are passed in.

A server that is alive but does not answer (stopped by SIGSTOP, a blocked event loop, a
swapping host) turns every forwarded sample into a timeout while its process looks fine; the
run's verdict must say so rather than report the fallbacks as load.
"""

from __future__ import annotations

from dataclasses import dataclass

STALL_S = 2.5
"""Longest the server may go without answering a status poll in time before it counts as a
stall: a few polls, more than a busy loop's hiccup on a shared two-core machine."""
LATE_S = 0.25
"""A status poll answered later than this counts as unanswered (a loop too busy to answer)."""


@dataclass(frozen=True, slots=True)
class Stall:
    start_s: float
    """Run time of the last poll answered in time before it."""
    end_s: float
    """Run time of the first poll answered in time after it (or the run's end)."""
    polls: int
    """Polls unanswered or late in between."""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def as_event(self) -> dict[str, float | int]:
        return {"start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "duration_s": round(self.duration_s, 3), "polls": self.polls}


class StallWatch:
    def __init__(self, stall_s: float = STALL_S, late_s: float = LATE_S) -> None:
        self.stall_s = stall_s
        self.late_s = late_s
        self._last_ok: float | None = None
        self._missed = 0

    def poll(self, t: float, answered: bool, took_s: float) -> Stall | None:
        """A status poll that started at run time `t`: the stall it ends, if it ends one
        that lasted past the threshold."""
        if not answered or took_s > self.late_s:
            if self._last_ok is None:
                self._last_ok = t  # no good poll yet: count from the first one tried
            self._missed += 1
            return None
        stall = self._close(t)
        self._last_ok, self._missed = t, 0
        return stall

    def end(self, t: float) -> Stall | None:
        """The run ended at `t`, or the server was found dead then: a stall still going
        counts up to then, and the watch starts afresh (a restarted server's polls)."""
        stall = self._close(t)
        self._last_ok, self._missed = None, 0
        return stall

    def _close(self, t: float) -> Stall | None:
        if self._missed == 0 or self._last_ok is None or t - self._last_ok <= self.stall_s:
            return None
        return Stall(self._last_ok, t, self._missed)
