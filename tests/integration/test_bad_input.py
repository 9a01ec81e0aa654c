"""Hostile and broken clients against the real server: property-based and raw-byte fuzzing of
the WebSocket and HTTP endpoints, oversized frames, slow readers. Each gets a clear error;
nothing crashes; a well-behaved device on the same server keeps being served."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.config import FairnessConfig, PolicyConfig, ServerConfig
from cascade_testbed.server.ingress import PREAUTH_FRAME_BYTES
from cascade_testbed.server.runtime import ServerSettings
from tests.integration.live_server import server_in_thread

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PIXELS = np.arange(64, dtype=np.uint8).tobytes()
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    # Frames read at up to 50,000/s (not the default 2,000): these tests are about what a bad
    # frame gets, and the slow client must fill its socket quickly.
    cfg = ServerConfig(max_queue_size=64, max_batch_size=8, batch_base_ms=1.0,
                       batch_per_sample_ms=0.2, slow_client_stall_s=1.0, slow_client_backlog=64,
                       fairness=FairnessConfig(max_frames_per_s=50_000.0))
    # static: no threshold messages interleave with the replies these tests wait for
    with server_in_thread(ServerSettings(server=cfg, policy=PolicyConfig("static"),
                                         token=TOKEN)) as u:
        yield u


def hello(device_id: str) -> bytes:
    return wire.encode(wire.Hello(device_id=device_id, tier="mid", model="light-mid",
                                  token=TOKEN))


def infer(sample_id: int = 1) -> bytes:
    return wire.encode(wire.Infer(sample_id=sample_id, dtype="uint8", shape=(64,), data=PIXELS,
                                  deadline_ms=5000.0))


async def receive(ws: aiohttp.ClientWebSocketResponse) -> wire.Message:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    return wire.decode(msg.data)


async def served(session: aiohttp.ClientSession, url: str, device_id: str) -> None:
    """A well-behaved device connects and gets a heavy answer."""
    ws = await session.ws_connect(f"{url}/v1/devices/{device_id}")
    await ws.send_bytes(hello(device_id))
    assert isinstance(await receive(ws), wire.Welcome)
    await ws.send_bytes(infer(1))
    res = await receive(ws)
    assert isinstance(res, wire.Result) and res.status == wire.ResultStatus.OK
    await ws.close()


_counter = iter(range(10**9))


def fresh_id() -> str:
    return f"fuzz-{next(_counter)}"


async def _after_hello(url: str, frames: list[bytes]) -> list[wire.Message]:
    """Send `frames` after a good hello; return one reply per frame, then check the session
    still answers a valid infer."""
    device_id = fresh_id()
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{url}/v1/devices/{device_id}")
        await ws.send_bytes(hello(device_id))
        assert isinstance(await receive(ws), wire.Welcome)
        replies = []
        for frame in frames:
            await ws.send_bytes(frame)
            replies.append(await receive(ws))
        await ws.send_bytes(infer(10**6))
        last = await receive(ws)
        assert isinstance(last, wire.Result) and last.sample_id == 10**6
        await ws.close()
        return replies


def check_reply(reply: wire.Message) -> None:
    """Either the frame happened to be valid, or the reply is an error with a reason."""
    if isinstance(reply, wire.Error):
        assert reply.reason and reply.code in set(wire.ErrorCode)
    else:
        assert isinstance(reply, wire.Result)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=300))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)
maps = st.dictionaries(
    st.sampled_from(["type", "sample_id", "dtype", "shape", "data", "deadline_ms", "value",
                     "epoch", "device_id", "token", "window_s", "generated", "x"]),
    values, max_size=7).map(lambda d: {"type": "infer", **d} if len(d) % 2 else d)
shapes = st.lists(st.integers(-5, 2**40), max_size=10)


class TestWebSocketFuzz:
    @FUZZ
    @given(st.lists(st.binary(max_size=600), min_size=1, max_size=4))
    def test_random_bytes_after_hello(self, url: str, frames: list[bytes]) -> None:
        replies = asyncio.run(_after_hello(url, frames))
        assert len(replies) == len(frames)
        for reply in replies:
            check_reply(reply)

    @FUZZ
    @given(st.lists(maps, min_size=1, max_size=4))
    def test_random_msgpack_maps_after_hello(self, url: str,
                                             bodies: list[dict[str, Any]]) -> None:
        frames = [msgpack.packb(b, use_bin_type=True) for b in bodies]
        for reply in asyncio.run(_after_hello(url, frames)):
            check_reply(reply)

    @FUZZ
    @given(shapes, st.sampled_from(["uint8", "float32", "float64", "int8", "", "<f4"]),
           st.binary(max_size=600))
    def test_wrong_tensors(self, url: str, shape: list[int], dtype: str, data: bytes) -> None:
        body = {"type": "infer", "sample_id": 3, "dtype": dtype, "shape": shape, "data": data,
                "deadline_ms": 1000.0}
        reply, = asyncio.run(_after_hello(url, [msgpack.packb(body, use_bin_type=True)]))
        valid = dtype in ("uint8", "float32") and int(np.prod(shape or [0])) == 64 and \
            len(data) == 64 * np.dtype(dtype).itemsize and all(d > 0 for d in shape)
        if not valid:
            assert isinstance(reply, wire.Error) and reply.reason
            assert reply.sample_id in (None, 3)
        else:
            check_reply(reply)

    @FUZZ
    @given(st.one_of(st.binary(max_size=300), maps.map(
        lambda b: msgpack.packb(b, use_bin_type=True))))
    def test_random_first_frame_is_refused(self, url: str, first: bytes) -> None:
        """Anything but a valid hello as the first frame: an error, then the socket closes."""

        async def go() -> None:
            async with aiohttp.ClientSession() as s:
                ws = await s.ws_connect(f"{url}/v1/devices/{fresh_id()}")
                await ws.send_bytes(first)
                reply = await receive(ws)
                assert isinstance(reply, wire.Error) and reply.reason
                closing = await ws.receive(timeout=5)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                await served(s, url, fresh_id())

        asyncio.run(go())


class TestHttpFuzz:
    @FUZZ
    @given(st.one_of(st.binary(max_size=600), maps.map(
        lambda b: msgpack.packb(b, use_bin_type=True))))
    def test_random_bodies_get_4xx_with_a_reason(self, url: str, body: bytes) -> None:
        async def go() -> None:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{url}/v1/infer", data=body, headers=AUTH) as r:
                    if r.status != 200:
                        assert 400 <= r.status < 500, r.status
                        assert r.headers["X-Error-Reason"]
                        err = wire.decode(await r.read())
                        assert isinstance(err, wire.Error)
                async with s.get(f"{url}/healthz") as r:
                    assert r.status == 200

        asyncio.run(go())


class TestLimits:
    async def test_frames_over_the_limit(self, url: str) -> None:
        """With the token in the upgrade request, a frame over MAX_MESSAGE_BYTES gets TOO_LARGE
        and the session goes on; one so big that reading it would be a risk is cut off with
        close code 1009 (message too big)."""
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{url}/v1/devices/big-1", headers=AUTH)
            await ws.send_bytes(hello("big-1"))
            await receive(ws)
            await ws.send_bytes(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))
            err = await receive(ws)
            assert isinstance(err, wire.Error) and err.code == wire.ErrorCode.TOO_LARGE
            await ws.send_bytes(infer(2))
            assert isinstance(await receive(ws), wire.Result)
            try:
                await ws.send_bytes(b"\x00" * (4 * wire.MAX_MESSAGE_BYTES + 1))
            except ConnectionError:
                pass  # the server may cut the connection while the frame is still going out
            else:
                closing = await ws.receive(timeout=10)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR,
                                        aiohttp.WSMsgType.CLOSED)
                if closing.type == aiohttp.WSMsgType.CLOSE:
                    assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            await ws.close()
            await served(s, url, "after-big")

    async def test_without_the_token_in_the_upgrade_frames_stay_hello_sized(
            self, url: str) -> None:
        """Authenticated by its hello only, a session never gets frames over a few KiB: a
        larger one is refused by its declared length, before any of it is buffered."""
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{url}/v1/devices/small-1")
            await ws.send_bytes(hello("small-1"))
            assert isinstance(await receive(ws), wire.Welcome)
            await ws.send_bytes(infer(2))  # a sample of the embedded zoo fits
            assert isinstance(await receive(ws), wire.Result)
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(b"\x00" * (PREAUTH_FRAME_BYTES + 1))
            closing = await ws.receive(timeout=10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR)
            if closing.type == aiohttp.WSMsgType.CLOSE:
                assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            await served(s, url, "after-small")

    async def test_huge_declared_shape_is_refused_cheaply(self, url: str) -> None:
        body = {"type": "infer", "sample_id": 4, "dtype": "float32",
                "shape": [2**31, 2**31, 2**31], "data": b"\x00" * 16}
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{url}/v1/devices/huge")
            await ws.send_bytes(hello("huge"))
            await receive(ws)
            await ws.send_bytes(msgpack.packb(body))
            err = await receive(ws)
            assert isinstance(err, wire.Error) and err.code == wire.ErrorCode.BAD_TENSOR
            await ws.close()

    @pytest.mark.slow

    async def test_slow_client_is_cut_off_and_others_are_served(self, url: str) -> None:
        """A client that sends but never reads fills its socket; once replies have been stuck
        for `slow_client_stall_s` the server aborts it, while another device is served."""

        def small_receive_buffer(addr: Any) -> socket.socket:
            family, type_, proto, _, _ = addr
            sock = socket.socket(family, type_, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            return sock

        bad = wire.encode(wire.Infer(1, "float64", (64,), b"\x00" * 512, 10.0))
        connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
        async with aiohttp.ClientSession(connector=connector) as slow, \
                aiohttp.ClientSession() as good:
            ws = await slow.ws_connect(f"{url}/v1/devices/slow")
            await ws.send_bytes(hello("slow"))
            await receive(ws)
            t0 = time.monotonic()
            cut_off = False
            while time.monotonic() - t0 < 40:
                try:
                    # Well above the server's 1 s stall: on a busy host a shorter wait ended
                    # the loop before the server had cut the client off.
                    await asyncio.wait_for(ws.send_bytes(bad), 10)
                except (ConnectionError, TimeoutError, aiohttp.ClientError):
                    cut_off = True
                    break
                if ws.closed:
                    cut_off = True
                    break
            await ws.close()
            await served(good, url, "good-neighbour")
            async with good.get(f"{url}/metrics", headers=AUTH) as r:
                metrics = await r.text()
            assert cut_off, "the slow client was never cut off"
            assert "testbed_server_slow_client_aborts_total 1.0" in metrics
