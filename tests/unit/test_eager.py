"""`common.eager`: a coroutine that does not wait finishes in `step`; one that waits is
finished later, in order, with its exception."""

from __future__ import annotations

import asyncio

import pytest

from cascade_testbed.common import eager


def test_a_coroutine_that_does_not_wait_finishes_in_step() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    async def go() -> None:
        assert eager.step(quick()) is None
        assert done == [1]  # before any turn of the loop

    asyncio.run(go())


def test_a_coroutine_that_waits_is_finished_later() -> None:
    events: list[str] = []

    async def slow(fut: asyncio.Future[int]) -> None:
        events.append("start")
        events.append(f"got {await fut}")
        await asyncio.sleep(0)  # a bare yield, too
        events.append("end")

    async def go() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        suspended = eager.step(slow(fut))
        assert suspended is not None and events == ["start"]
        task = asyncio.create_task(suspended.finish())
        await asyncio.sleep(0.01)
        assert events == ["start"]
        fut.set_result(7)
        await task
        assert events == ["start", "got 7", "end"]

    asyncio.run(go())


def test_exceptions_reach_the_caller() -> None:
    async def fails_now() -> None:
        raise ConnectionError("now")

    async def fails_later(fut: asyncio.Future[None]) -> None:
        await fut
        raise ConnectionError("later")

    async def go() -> None:
        with pytest.raises(ConnectionError, match="now"):
            eager.step(fails_now())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        suspended = eager.step(fails_later(fut))
        assert suspended is not None
        asyncio.get_running_loop().call_later(0.01, fut.set_result, None)
        with pytest.raises(ConnectionError, match="later"):
            await suspended.finish()

    asyncio.run(go())
