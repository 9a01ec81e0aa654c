"""Admission control: may a request join the queue? Pure: sizes, times and costs are passed in.

Two ways to shed overload before it turns into queueing delay: the queue's hard bound, and
(mode "deadline") refusing a request that the work ahead of it would make miss its deadline,
so that its device keeps its light answer at once instead of after a timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cascade_testbed.common.config import AdmissionMode


class AdmissionRefused(Exception):
    """A request the server will not queue; `cause` is the short code the reply carries."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause
        self.reason = reason


def estimated_finish(queued: int, max_batch_size: int, busy_until: float, now: float,
                     batch_s: Callable[[int], float], replicas: int = 1) -> float:
    """When a request joining now would be answered at the latest, if the batcher keeps
    cutting full batches: after the running batch, the full batches queued ahead of it, and
    its own batch, counted as full too (under load, requests behind it fill it; counting it
    by its size now was optimistic by up to L(max) - L(1) and let admitted requests expire).
    `replicas` run batches side by side: the queue ahead drains that many times faster."""
    ahead = queued // (max_batch_size * max(replicas, 1))
    return max(now, busy_until) + (ahead + 1) * batch_s(max_batch_size)


SLACK = 0.05
"""The estimate leaves out the gaps between batches (encoding replies, stacking inputs, the
hand-off to the model thread: about 1% of a batch here); a request admitted right at its
deadline would then miss it by a little, which is as bad as missing it by a lot. Admit only
what the estimate says finishes with this fraction of its wait to spare."""


@dataclass(frozen=True, slots=True)
class Admission:
    mode: AdmissionMode
    max_queue_size: int

    def check(self, *, queued: int, max_batch_size: int, busy_until: float, now: float,
              deadline: float, batch_s: Callable[[int], float], replicas: int = 1,
              bound: bool = True) -> None:
        """Raise `AdmissionRefused` if the request must be shed. `bound=False` leaves the
        queue's bound to the queue (which makes room by its share rule)."""
        if bound and queued >= self.max_queue_size:
            raise AdmissionRefused("queue_full", f"queue full ({queued}/{self.max_queue_size})")
        if self.mode == "deadline":
            finish = estimated_finish(queued, max_batch_size, busy_until, now, batch_s,
                                      replicas)
            if finish + SLACK * (finish - now) > deadline:
                raise AdmissionRefused(
                    "admission", f"would finish {1e3 * (finish - deadline):.0f} ms after its "
                    f"deadline ({queued} queued)")
