"""A device against a stand-in server (aiohttp, in this process): a threshold the server sends
outside [0, 1] is refused where it is decoded, not clamped by the device: a `threshold`
message is skipped and the session goes on, a `welcome` fails the connection attempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgpack
import pytest
from aiohttp import web

from cascade_testbed.common import protocol as wire
from cascade_testbed.emulated_devices.device import Device
from tests.unit.test_device_pipeline import low_tier_spec

StandIn = Callable[[list[bytes]], Awaitable[str]]


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    """Starts a server that answers each device's hello with the given frames, then keeps
    the connection open; gives its URL."""
    runners: list[web.AppRunner] = []

    async def start(frames: list[bytes]) -> str:
        async def session(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.receive()  # the hello
            for frame in frames:
                await ws.send_bytes(frame)
            async for _ in ws:  # until the device closes
                pass
            return ws

        app = web.Application()
        app.router.add_get("/v1/devices/{device_id}", session)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def threshold(value: float, epoch: int) -> bytes:
    """A `threshold` frame as any server could send it, whatever its value."""
    packed: bytes = msgpack.packb({"type": "threshold", "value": value, "epoch": epoch})
    return packed


async def test_a_threshold_outside_0_1_is_skipped_and_the_session_goes_on(
        stand_in: StandIn) -> None:
    # Clamped and applied, the bad one (a later epoch) would keep out the good one.
    url = await stand_in([wire.encode(wire.Welcome(threshold=0.4, epoch=0)),
                          threshold(1.5, 2), threshold(0.6, 1)])
    device = Device(low_tier_spec(rate_hz=10.0, duration_s=1.0), url)
    try:
        await device.wait_registered(5.0)
        for _ in range(200):
            if device.epoch >= 1:
                break
            await asyncio.sleep(0.01)
        assert (device.threshold, device.epoch) == (0.6, 1)
    finally:
        await device._close()


async def test_a_welcome_outside_0_1_does_not_register_the_device(stand_in: StandIn) -> None:
    url = await stand_in([msgpack.packb({"type": "welcome", "threshold": 2.0, "epoch": 0})])
    device = Device(low_tier_spec(rate_hz=10.0, duration_s=1.0), url)
    try:
        with pytest.raises(ConnectionError, match=r"welcome\.threshold must be within 0 and 1"):
            await device.wait_registered(5.0, fail_fast=True)
    finally:
        await device._close()  # closed already when registering failed; again is harmless
