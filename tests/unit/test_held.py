"""The server holds a device's messages for their emulated uplink time (`hold_ms`): in
delivery order, at most `limit` at once, and none after the connection is gone."""

from __future__ import annotations

import asyncio

from server.ingress import Held


async def test_held_messages_are_delivered_in_time_order_within_the_limit() -> None:
    loop = asyncio.get_running_loop()
    held = Held(loop, limit=3)
    got: list[tuple[str, float]] = []
    t0 = loop.time()
    for name, delay in (("b", 0.06), ("a", 0.02), ("c", 0.04)):
        assert held.hold(delay, lambda n: got.append((n, loop.time() - t0)), name)
    assert not held.hold(0.01, got.append, "over")  # full: the caller rejects and counts it
    assert len(held) == 3
    await asyncio.sleep(0.12)
    assert [n for n, _ in got] == ["a", "c", "b"] and got[0][1] >= 0.02
    assert len(held) == 0 and held.hold(0.01, got.append, "room again")


async def test_a_closed_connection_drops_what_it_held() -> None:
    loop = asyncio.get_running_loop()
    held = Held(loop)
    got: list[int] = []
    for i in range(5):
        held.hold(0.02, got.append, i)
    held.drop()
    await asyncio.sleep(0.05)
    assert got == [] and len(held) == 0
