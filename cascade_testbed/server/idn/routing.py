"""Where an IDN node serves a request: here, with which model, or further up. Pure.

The cost of serving a request is what the IDN papers weigh: the network latency to the node
and back, the inference latency there, and alpha times the model's inaccuracy. A node serves
with its cheapest loaded model that has room if that is no costlier than what the nodes above
it have recently charged for requests it sent up (learnt from their replies: the limited
exchange with neighbours); otherwise the request moves up. The repository serves all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Option:
    model: str
    cost_ms: float
    has_room: bool


def serving_cost_ms(path_ms: float, infer_ms: float, accuracy: float, alpha_ms: float) -> float:
    """Round trip from the device's access node to here, inference, and inaccuracy."""
    return 2.0 * path_ms + infer_ms + alpha_ms * (1.0 - accuracy)


def choose(options: Sequence[Option], upstream_cost_ms: float | None,
           probe: bool = False) -> str | None:
    """The model to serve with here, or None to send the request up. `upstream_cost_ms` is
    None at the repository, which serves with its cheapest model even when all are busy.
    `probe`: nothing went up for a while, so this request does, whatever the costs: a node
    learns what upstream costs only from replies, and an estimate nobody refreshes would
    keep it serving locally after the nodes above have become cheaper."""
    usable = [o for o in options if o.has_room]
    if upstream_cost_ms is None:
        pool = usable or list(options)
        return min(pool, key=lambda o: o.cost_ms).model if pool else None
    if probe or not usable:
        return None
    best = min(usable, key=lambda o: o.cost_ms)
    return best.model if best.cost_ms <= upstream_cost_ms else None


def expected_infer_ms(queued: int, max_batch_size: int, batch_ms: Callable[[int], float],
                      queue_delay_ms: float) -> float:
    """A new request's wait plus its batch: the full batches ahead of it, then its own with
    the rest of the queue."""
    b = max(max_batch_size, 1)
    ahead, rest = divmod(queued, b)
    return queue_delay_ms + ahead * batch_ms(b) + batch_ms(rest + 1)
