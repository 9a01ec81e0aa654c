"""The server's pure queue and batch-cut rule, driven with explicit times."""

from __future__ import annotations

import numpy as np
import pytest

from cascade_testbed.server.batch_policy import BatchPolicy, Cut, Idle, WaitUntil
from cascade_testbed.server.request_queue import QueueFull, Request, RequestQueue


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


def dreq(device: str, sample_id: int, arrival: float = 0.0, deadline: float = 10.0) -> Request:
    return Request(device, sample_id, np.zeros(1), arrival, deadline, lambda r: None)


class TestFairQueue:
    """Batches are cut round robin across devices; a full queue makes room from the device
    holding the most (docs/security.md, "Fair sharing")."""

    def test_round_robin_across_devices_oldest_first_within_one(self) -> None:
        q = RequestQueue(100)
        for i in range(6):
            q.push(dreq("flood", i, arrival=i))
        q.push(dreq("a", 100, arrival=10))
        q.push(dreq("b", 200, arrival=11))
        q.push(dreq("a", 101, arrival=12))
        got = [(r.device_id, r.sample_id) for r in q.pop(5)]
        assert got == [("flood", 0), ("a", 100), ("b", 200), ("flood", 1), ("a", 101)]
        # The next pop goes on from where this one stopped: the flood's turn came last.
        assert [(r.device_id, r.sample_id) for r in q.pop(10)] == [
            ("flood", 2), ("flood", 3), ("flood", 4), ("flood", 5)]
        assert len(q) == 0 and q.oldest_arrival() is None

    def test_the_turn_carries_over_between_pops(self) -> None:
        q = RequestQueue(100)
        for i in range(3):
            q.push(dreq("a", i))
            q.push(dreq("b", 10 + i))
        assert [r.device_id for r in q.pop(1)] == ["a"]
        assert [r.device_id for r in q.pop(1)] == ["b"]
        assert [r.device_id for r in q.pop(3)] == ["a", "b", "a"]

    @pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 50])
    def test_peek_shows_what_pop_takes(self, n: int) -> None:
        q = RequestQueue(100)
        rng = np.random.default_rng(n)
        for i in range(30):
            q.push(dreq(f"d{int(rng.integers(4))}", i))
        q.pop(3)
        seen = [r.sample_id for r in q.peek(n)]
        assert len(q) == 27
        assert seen == [r.sample_id for r in q.pop(n)]

    def test_a_full_queue_makes_room_from_the_device_holding_most(self) -> None:
        q = RequestQueue(4)
        for i in range(4):
            assert q.push(dreq("flood", i)) is None
        evicted = q.push(dreq("a", 100))
        assert evicted is not None and (evicted.device_id, evicted.sample_id) == ("flood", 3)
        assert q.queued_by("flood") == 3 and q.queued_by("a") == 1 and len(q) == 4
        # The evicted request is gone for good: never popped, never expired.
        assert 3 not in [r.sample_id for r in q.expire(100.0)]

    def test_a_device_holding_as_many_is_refused_itself(self) -> None:
        q = RequestQueue(4)
        for i in range(2):
            q.push(dreq("a", i))
            q.push(dreq("b", 10 + i))
        with pytest.raises(QueueFull):
            q.push(dreq("a", 2))  # a would hold 3, b holds 2: a is the longest
        q2 = RequestQueue(3)
        q2.push(dreq("a", 0))
        q2.push(dreq("b", 1))
        q2.push(dreq("b", 2))
        with pytest.raises(QueueFull):  # a would hold 2 = b's 2: the newcomer goes
            q2.push(dreq("a", 3))
        assert len(q2) == 3

    def test_expiry_takes_a_device_out_of_the_ring(self) -> None:
        q = RequestQueue(10)
        q.push(dreq("a", 0, deadline=1.0))
        q.push(dreq("b", 1, deadline=5.0))
        q.push(dreq("b", 2, deadline=5.0))
        assert [r.sample_id for r in q.expire(2.0)] == [0]
        assert q.queued_by("a") == 0
        assert [r.sample_id for r in q.pop(5)] == [1, 2]

    def test_every_request_leaves_exactly_once(self) -> None:
        """Random pushes, pops, expiries and evictions: each request pushed comes out once,
        by pop, expiry, eviction or drain, and the bound always holds."""
        rng = np.random.default_rng(7)
        q = RequestQueue(16)
        out: list[int] = []
        pushed = 0
        for step in range(3000):
            op = rng.integers(4)
            now = step * 0.01
            if op < 2:
                try:
                    ev = q.push(dreq(f"d{int(rng.integers(5))}", pushed, now,
                                     now + float(rng.uniform(0, 0.5))))
                    if ev is not None:
                        out.append(ev.sample_id)
                except QueueFull:
                    out.append(pushed)
                pushed += 1
            elif op == 2:
                out += [r.sample_id for r in q.pop(int(rng.integers(1, 6)))]
            else:
                out += [r.sample_id for r in q.expire(now)]
            assert len(q) <= 16
        out += [r.sample_id for r in q.drain()]
        assert sorted(out) == list(range(pushed))
