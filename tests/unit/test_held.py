"""The server holds a device's messages for their emulated uplink time (`hold_ms`): in
delivery order, at most `limit` at once, and none after the connection is gone."""

from __future__ import annotations

import asyncio

from cascade_testbed.server.held import HELD_OVERHEAD_BYTES, TRIM_AFTER_BYTES, Held, HeldBudget


async def test_held_messages_are_delivered_in_time_order_within_the_limit() -> None:
    loop = asyncio.get_running_loop()
    held = Held(loop, limit=3)
    got: list[tuple[str, float]] = []
    t0 = loop.time()
    for name, delay in (("b", 0.06), ("a", 0.02), ("c", 0.04)):
        assert held.hold(delay, 10, lambda n: got.append((n, loop.time() - t0)), name)
    assert not held.hold(0.01, 10, got.append, "over")  # full: the caller rejects and counts it
    assert len(held) == 3
    await asyncio.sleep(0.12)
    assert [n for n, _ in got] == ["a", "c", "b"] and got[0][1] >= 0.02
    assert len(held) == 0 and held.hold(0.01, 10, got.append, "room again")


async def test_a_closed_connection_drops_what_it_held() -> None:
    loop = asyncio.get_running_loop()
    held = Held(loop)
    got: list[int] = []
    for i in range(5):
        held.hold(0.02, 10, got.append, i)
    held.drop()
    await asyncio.sleep(0.05)
    assert got == [] and len(held) == 0


async def test_the_server_wide_budget_counts_bytes_over_every_connection() -> None:
    """Two connections share one budget: what one holds, the other cannot; delivered and
    dropped messages give their bytes back."""
    loop = asyncio.get_running_loop()
    each = HELD_OVERHEAD_BYTES  # what holding costs beyond the frame's bytes
    budget = HeldBudget(limit_bytes=100 + 2 * each)
    a, b = Held(loop, budget=budget), Held(loop, budget=budget)
    got: list[str] = []
    assert a.hold(0.01, 60, got.append, "a1")
    assert not b.hold(0.01, 50, got.append, "b1")  # 110 > 100: refused, nothing scheduled
    assert b.hold(0.01, 40, got.append, "b2") and budget.held_bytes == 100 + 2 * each
    assert budget.refused == 1
    await asyncio.sleep(0.03)
    assert sorted(got) == ["a1", "b2"] and budget.held_bytes == 0
    assert b.hold(10.0, 100, got.append, "late")
    b.drop()
    assert budget.held_bytes == 0 and len(b) == 0


def test_a_trim_is_due_once_per_block_released_or_when_all_is_released() -> None:
    budget = HeldBudget(limit_bytes=2**30)
    assert budget.charge(2**24)
    budget.release(2**20)
    assert not budget.trim_due()  # 1 MiB back, 15 still held
    budget.release(TRIM_AFTER_BYTES)
    assert budget.trim_due() and not budget.trim_due()  # once per block
    budget.release(2**24 - 2**20 - TRIM_AFTER_BYTES)
    assert budget.held_bytes == 0 and budget.trim_due()  # all of it back: worth a trim
    assert not budget.trim_due()


async def test_the_server_counts_how_late_it_acted_on_held_messages() -> None:
    """Each delivery adds its lateness to the budget's histogram: the server's own part of
    the link timing error, in its status and the run's summary (`server.held_late_ms`)."""
    loop = asyncio.get_running_loop()
    budget = HeldBudget(1 << 20)
    held = Held(loop, budget=budget)
    for delay in (0.01, 0.02):
        assert held.hold(delay, 10, lambda: None)
    await asyncio.sleep(0.05)
    assert budget.late.n == 2 and budget.late.max_s < 0.04
