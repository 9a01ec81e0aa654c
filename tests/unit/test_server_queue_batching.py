"""The server's pure queue and batch-cut rule, driven with explicit times."""

from __future__ import annotations

import numpy as np
import pytest

from server.batch_policy import BatchPolicy, Cut, Idle, WaitUntil
from server.request_queue import QueueFull, Request, RequestQueue


def req(sample_id: int, arrival: float = 0.0, deadline: float = 10.0) -> Request:
    return Request("dev", sample_id, np.zeros(1), arrival, deadline, lambda r: None)


class TestRequestQueue:
    def test_fifo_pop(self) -> None:
        q = RequestQueue(10)
        for i in range(5):
            q.push(req(i, arrival=i))
        assert [r.sample_id for r in q.pop(3)] == [0, 1, 2]
        assert q.oldest_arrival() == 3 and len(q) == 2
        assert [r.sample_id for r in q.pop(10)] == [3, 4]
        assert q.oldest_arrival() is None

    def test_bound(self) -> None:
        q = RequestQueue(2)
        q.push(req(0))
        q.push(req(1))
        with pytest.raises(QueueFull) as err:
            q.push(req(2))
        assert err.value.queued == 2 and err.value.limit == 2

    def test_expire_takes_only_due_requests(self) -> None:
        q = RequestQueue(10)
        q.push(req(0, deadline=5.0))
        q.push(req(1, deadline=1.0))
        q.push(req(2, deadline=3.0))
        assert q.next_deadline() == 1.0
        assert [r.sample_id for r in q.expire(3.0)] == [1, 2]
        assert [r.sample_id for r in q.pop(5)] == [0]
        assert q.expire(100.0) == []

    def test_popped_requests_never_expire(self) -> None:
        """Each request leaves the queue exactly once: by pop or by expiry."""
        q = RequestQueue(10)
        q.push(req(0, deadline=1.0))
        q.push(req(1, deadline=2.0))
        q.pop(1)
        assert q.next_deadline() == 2.0
        assert [r.sample_id for r in q.expire(5.0)] == [1]

    def test_heap_stays_bounded(self) -> None:
        """Stale deadline entries of popped requests are compacted away."""
        q = RequestQueue(10)
        for i in range(10_000):
            q.push(req(i, deadline=float(i)))
            q.pop(1)
        assert len(q._deadlines) < 200

    def test_drain(self) -> None:
        q = RequestQueue(10)
        q.push(req(0))
        assert [r.sample_id for r in q.drain()] == [0] and len(q) == 0

    def test_invalid_bound(self) -> None:
        with pytest.raises(ValueError):
            RequestQueue(0)


class TestBatchPolicy:
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.002)

    def test_idle_when_empty(self) -> None:
        assert self.policy.decide(0, None, 1.0) == Idle()

    def test_full_batch_cuts_at_once(self) -> None:
        assert self.policy.decide(9, 1.0, 1.0) == Cut(4)

    def test_waits_for_more_until_oldest_is_due(self) -> None:
        """The wait starts at the first request's arrival, not at the last batch."""
        assert self.policy.decide(2, 1.0, 1.001) == WaitUntil(pytest.approx(1.002))

    def test_cuts_partial_batch_when_due(self) -> None:
        assert self.policy.decide(2, 1.0, 1.002) == Cut(2)

    def test_zero_delay_never_waits(self) -> None:
        assert BatchPolicy(8, 0.0).decide(1, 5.0, 5.0) == Cut(1)
