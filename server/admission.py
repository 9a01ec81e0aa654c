"""Admission control: may a request join the queue? Pure: sizes, times and costs are passed in.

Two ways to shed overload before it turns into queueing delay: the queue's hard bound, and
(mode "deadline") refusing a request that the work ahead of it would make miss its deadline,
so that its device keeps its light answer at once instead of after a timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from testbed.config import AdmissionMode


class AdmissionRefused(Exception):
    """A request the server will not queue; `cause` is the short code the reply carries."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


def estimated_finish(queued: int, max_batch_size: int, busy_until: float, now: float,
                     batch_s: Callable[[int], float]) -> float:
    """When a request joining now would be answered if the batcher keeps cutting full batches:
    after the running batch, the full batches queued ahead of it, and then its own batch."""
    full, rest = divmod(queued, max_batch_size)
    return max(now, busy_until) + full * batch_s(max_batch_size) + batch_s(rest + 1)


@dataclass(frozen=True, slots=True)
class Admission:
    mode: AdmissionMode
    max_queue_size: int

    def check(self, *, queued: int, max_batch_size: int, busy_until: float, now: float,
              deadline: float, batch_s: Callable[[int], float]) -> None:
        """Raise `AdmissionRefused` if the request must be shed."""
        if queued >= self.max_queue_size:
            raise AdmissionRefused("queue_full", f"queue full ({queued}/{self.max_queue_size})")
        if self.mode == "deadline":
            finish = estimated_finish(queued, max_batch_size, busy_until, now, batch_s)
            if finish > deadline:
                raise AdmissionRefused(
                    "admission", f"would finish {1e3 * (finish - deadline):.0f} ms after its "
                    f"deadline ({queued} queued)")
