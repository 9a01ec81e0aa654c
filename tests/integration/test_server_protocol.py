"""The real server refuses bad input with a reason and keeps serving everyone else."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import socket
import struct
import sys
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
from yarl import URL

from cascade_testbed.common import protocol as wire
from tests.integration.conftest import TOKEN

PIXELS = np.arange(64, dtype=np.uint8).tobytes()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def hello(device_id: str = "mid-t1", token: str = TOKEN, **kw: object) -> bytes:
    return wire.encode(wire.Hello(device_id=device_id, tier="mid", model="light-mid",
                                  token=token, **kw))  # type: ignore[arg-type]


def infer(sample_id: int = 1, **kw: object) -> bytes:
    fields = {"dtype": "uint8", "shape": (64,), "data": PIXELS, "deadline_ms": 2000.0, **kw}
    return wire.encode(wire.Infer(sample_id=sample_id, **fields))  # type: ignore[arg-type]


async def receive(ws: aiohttp.ClientWebSocketResponse) -> wire.Message:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    return wire.decode(msg.data)


async def connect(session: aiohttp.ClientSession, url: str, device_id: str = "mid-t1",
                  token: str = TOKEN, rate_sps: float = 0.0
                  ) -> tuple[aiohttp.ClientWebSocketResponse, wire.Message]:
    ws = await session.ws_connect(f"{url}/v1/devices/{device_id}")
    await ws.send_bytes(hello(device_id, token, rate_sps=rate_sps))
    return ws, await receive(ws)


class TestWebSocket:
    async def test_hello_infer_result(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            ws, welcome = await connect(s, server_url)
            assert isinstance(welcome, wire.Welcome) and 0 <= welcome.threshold <= 1
            await ws.send_bytes(infer(5))
            res = await receive(ws)
            assert isinstance(res, wire.Result) and res.sample_id == 5
            assert res.status == wire.ResultStatus.OK and 0 <= res.prediction < 10
            assert res.batch_size >= 1 and res.compute_us > 0
            await ws.close()

    @pytest.mark.parametrize("first,code", [
        (b"\x00garbage", wire.ErrorCode.MALFORMED),
        (infer(1), wire.ErrorCode.NOT_REGISTERED),
        (hello(token="wrong"), wire.ErrorCode.UNAUTHORIZED),
        (hello(device_id="other-id"), wire.ErrorCode.MALFORMED),
        (hello(version=99), wire.ErrorCode.BAD_VERSION),
    ])
    async def test_bad_handshakes_are_refused(self, server_url: str, first: bytes,
                                              code: wire.ErrorCode) -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{server_url}/v1/devices/mid-t1")
            await ws.send_bytes(first)
            err = await receive(ws)
            assert isinstance(err, wire.Error) and err.code == code and err.reason
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            # The server still serves a well-behaved device afterwards.
            ws2, welcome = await connect(s, server_url, "mid-t2")
            assert isinstance(welcome, wire.Welcome)
            await ws2.close()

    async def test_duplicate_device_id(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            ws1, _ = await connect(s, server_url, "dup")
            ws2, err = await connect(s, server_url, "dup")
            assert isinstance(err, wire.Error) and err.code == wire.ErrorCode.DUPLICATE_DEVICE
            await ws1.send_bytes(infer(1))
            assert isinstance(await receive(ws1), wire.Result)  # the first one is unaffected
            await ws1.close()
            await ws2.close()

    @pytest.mark.parametrize("frame,code", [
        (b"\xc1", wire.ErrorCode.MALFORMED),
        (msgpack.packb({"type": "launch"}), wire.ErrorCode.UNKNOWN_TYPE),
        (infer(9, dtype="float64"), wire.ErrorCode.BAD_TENSOR),
        (infer(9, shape=(1, 2, 3)), wire.ErrorCode.BAD_TENSOR),
        (infer(9, data=b"\x00" * 3), wire.ErrorCode.BAD_TENSOR),
        (wire.encode(wire.Threshold(0.5, 1)), wire.ErrorCode.UNKNOWN_TYPE),
    ])
    async def test_bad_messages_get_errors_and_the_session_survives(
            self, server_url: str, frame: bytes, code: wire.ErrorCode) -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, server_url)
            await ws.send_bytes(frame)
            err = await receive(ws)
            assert isinstance(err, wire.Error) and err.code == code and err.reason
            await ws.send_bytes(infer(2))
            res = await receive(ws)
            assert isinstance(res, wire.Result) and res.status == wire.ResultStatus.OK
            await ws.close()

    async def test_text_frame_is_refused(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, server_url)
            await ws.send_str("hello?")
            err = await receive(ws)
            assert isinstance(err, wire.Error) and "binary" in err.reason
            await ws.close()

    async def test_report_updates_status(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, server_url)
            await ws.send_bytes(wire.encode(wire.Report(
                window_s=0.5, generated=5, forwarded=2, answered=5, slo_met=5, slo_missed=0,
                fallback=0, threshold=0.8, mean_light_confidence=0.8, light_ms_mean=15.0)))
            await ws.send_bytes(infer(3))  # ordered after the report on the same socket
            await receive(ws)
            async with s.get(f"{server_url}/v1/status", headers=AUTH) as r:
                status = await r.json()
            assert status["devices"]["mid-t1"]["reports"] == 1
            await ws.close()

    async def test_held_messages_are_acted_on_when_their_link_delivers_them(
            self, server_url: str) -> None:
        """A sample and a report sent with `hold_ms` reach the batcher and the scheduler only
        when the emulated uplink delivers them; the sample's budget counts from then."""
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, server_url)
            loop = asyncio.get_running_loop()
            sent = loop.time()
            await ws.send_bytes(wire.encode(wire.Report(
                window_s=0.5, generated=5, forwarded=2, answered=5, slo_met=5, slo_missed=0,
                fallback=0, threshold=0.8, mean_light_confidence=0.8, light_ms_mean=15.0,
                hold_ms=300.0)))
            await ws.send_bytes(infer(3, hold_ms=300.0, deadline_ms=100.0))
            await asyncio.sleep(0.1)
            async with s.get(f"{server_url}/v1/status", headers=AUTH) as r:
                assert (await r.json())["devices"]["mid-t1"]["reports"] == 0  # still held
            res = await receive(ws)
            assert isinstance(res, wire.Result) and res.status == wire.ResultStatus.OK
            assert loop.time() - sent >= 0.3  # held for 300 ms, then served within 100
            async with s.get(f"{server_url}/v1/status", headers=AUTH) as r:
                assert (await r.json())["devices"]["mid-t1"]["reports"] == 1
            await ws.close()

    async def test_a_device_s_uplink_delay_is_kept_when_the_server_holds_its_samples(
            self, server_url: str, tmp_path: Path) -> None:
        """A device sends a forwarded sample at once with the rest of its uplink time; the
        answer still comes no earlier than light model + 80 ms of uplink + the downlink."""
        from cascade_testbed.common.config import LinkSpec, ScenarioConfig, device_specs
        from cascade_testbed.common.records import read_records
        from cascade_testbed.emulated_devices.device import Device

        cfg = ScenarioConfig()
        low = dataclasses.replace(cfg.tiers["low"], threshold=1.0,
                                  uplink=LinkSpec(delay_ms=80.0, jitter_ms=0.0))
        cfg = dataclasses.replace(cfg, duration_s=1.5, tiers={**cfg.tiers, "low": low},
                                  devices=dataclasses.replace(cfg.devices, count=1, rate_hz=10.0,
                                                              mix="1:0:0"))
        spec = device_specs(cfg)[0]
        device = Device(spec, server_url, token=TOKEN, out_dir=tmp_path)
        await device.wait_registered(10.0)
        outcome = await device.run()
        (path,) = (tmp_path / "samples").glob("*.csv")
        recs, _ = read_records(path)
        heavy = [r for r in recs if r.source == "heavy"]
        assert outcome.requests_sent == len(recs) and len(heavy) >= len(recs) - 1 >= 5
        floor_ms = 80.0 + low.downlink.delay_ms - 3 * low.downlink.jitter_ms
        assert all(r.latency_ms - r.light_ms >= floor_ms for r in heavy)
        assert all(r.latency_ms - r.light_ms < floor_ms + 100 for r in heavy)


class TestHttp:
    async def test_infer_round_trip(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s, \
                s.post(f"{server_url}/v1/infer", data=infer(11), headers=AUTH) as r:
            assert r.status == 200 and r.content_type == "application/msgpack"
            res = wire.decode(await r.read())
            assert isinstance(res, wire.Result) and res.sample_id == 11

    @pytest.mark.parametrize("body,status", [
        (b"not msgpack at all \xc1", 400),
        (msgpack.packb({"type": "infer"}), 400),
        (wire.encode(wire.Threshold(0.1, 1)), 400),
        (infer(1, dtype="int64"), 422),
        (infer(1, shape=(63,), data=bytes(63)), 422),
        (b"\x00" * (wire.MAX_MESSAGE_BYTES + 10), 413),
    ])
    async def test_bad_requests(self, server_url: str, body: bytes, status: int) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{server_url}/v1/infer", data=io.BytesIO(body),
                              headers=AUTH) as r:
                assert r.status == status
                assert r.headers.get("X-Error-Reason")
            async with s.get(f"{server_url}/healthz") as r:
                assert r.status == 200  # still alive

    async def test_metrics_and_status(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{server_url}/v1/infer", data=infer(1), headers=AUTH) as r:
                assert r.status == 200
            async with s.post(f"{server_url}/v1/infer", data=b"\xc1", headers=AUTH) as r:
                assert r.status == 400
            async with s.get(f"{server_url}/metrics", headers=AUTH) as r:
                text = await r.text()
            async with s.get(f"{server_url}/v1/status", headers=AUTH) as r:
                status = await r.json()
        assert 'testbed_server_requests_total{outcome="ok"} 1.0' in text
        assert 'testbed_server_protocol_errors_total{code="malformed"} 1.0' in text
        assert "testbed_server_batch_size_bucket" in text
        assert status["policy"] == "multitasc" and status["totals"]["completed"] == 1

    @pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                         {"Authorization": TOKEN}])
    async def test_infer_needs_the_run_token(self, server_url: str,
                                             headers: dict[str, str]) -> None:
        async with aiohttp.ClientSession() as s, \
                s.post(f"{server_url}/v1/infer", data=infer(1), headers=headers) as r:
            assert r.status == 401 and "token" in r.headers["X-Error-Reason"]
            err = wire.decode(await r.read())
            assert isinstance(err, wire.Error) and err.code == wire.ErrorCode.UNAUTHORIZED

    async def test_read_only_endpoints(self, server_url: str) -> None:
        async with aiohttp.ClientSession() as s:
            for path in ("/metrics", "/v1/status", "/healthz"):
                async with s.post(f"{server_url}{path}", data=b"x") as r:
                    assert r.status == 405


class TestOverload:
    async def test_full_queue_rejects_and_deadlines_expire(self, server_url: str) -> None:
        """A burst beyond the queue bound is shed at once with `rejected`; requests whose
        budget is shorter than the wait expire from the timer; every request gets one answer."""
        async with aiohttp.ClientSession() as s:
            ws, _ = await connect(s, server_url, rate_sps=100.0)  # a budget of 400 at once
            n = 400
            for i in range(n):
                await ws.send_bytes(infer(i, deadline_ms=5.0 if i % 2 else 5000.0))
            seen: dict[int, int] = {}
            while len(seen) < n:
                res = await receive(ws)
                assert isinstance(res, wire.Result) and res.sample_id not in seen
                seen[res.sample_id] = res.status
            statuses = set(seen.values())
            assert wire.ResultStatus.REJECTED in statuses
            assert wire.ResultStatus.OK in statuses
            assert wire.ResultStatus.EXPIRED in statuses
            await ws.close()


    async def test_a_device_over_its_declared_rate_is_rate_limited(self, server_url: str
                                                                  ) -> None:
        """A device that declared 10 samples/s gets a burst of 40 (20/s for 2 s) queued; the
        rest of a burst of 100 gets `error` RATE_LIMITED with its sample id, counted for that
        device in /v1/status and /metrics, while another device is served as before."""
        async with aiohttp.ClientSession(headers=AUTH) as s:
            ws, _ = await connect(s, server_url, device_id="greedy-1", rate_sps=10.0)
            other, _ = await connect(s, server_url, device_id="mid-t2", rate_sps=10.0)
            for i in range(100):
                await ws.send_bytes(infer(i))
            await other.send_bytes(infer(7))
            limited, served = set(), set()
            while len(limited) + len(served) < 100:
                msg = await receive(ws)
                if isinstance(msg, wire.Error):
                    assert msg.code == wire.ErrorCode.RATE_LIMITED and "budget" in msg.reason
                    assert msg.sample_id is not None
                    limited.add(msg.sample_id)
                else:
                    assert isinstance(msg, wire.Result) and msg.status == wire.ResultStatus.OK
                    served.add(msg.sample_id)
            assert 40 <= len(served) <= 42 and limited == set(range(100)) - served
            res = await receive(other)
            assert isinstance(res, wire.Result) and res.status == wire.ResultStatus.OK
            async with s.get(f"{server_url}/v1/status") as r:
                assert (await r.json())["rate_limited"] == {"greedy-1": len(limited)}
            async with s.get(f"{server_url}/metrics") as r:
                assert f'testbed_server_rate_limited_total{{device="greedy-1"}} ' \
                       f'{len(limited)}.0' in await r.text()
            await ws.close()
            await other.close()


class TestDeviceByHand:
    """`python -m cascade_testbed.emulated_devices` (what `testbed device` runs) against the
    real server."""

    async def _run_device(self, url: str, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cascade_testbed.emulated_devices", "--server", url, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    @pytest.mark.slow

    async def test_runs_and_accounts_for_its_samples(self, server_url: str,
                                                     tmp_path: Path) -> None:
        code, out = await self._run_device(server_url, "--token", TOKEN, "--duration", "2",
                                           "--out", str(tmp_path))
        assert code == 0, out
        outcome = json.loads((tmp_path / "devices" / "mid-manual-0.json").read_text())
        assert outcome["generated"] > 0 and outcome["recorded"] == outcome["generated"]

    async def test_wrong_token_exits_at_once_with_the_reason(self, server_url: str) -> None:
        """A refusal that retrying cannot fix ends the device after one attempt, not at a
        timeout after many."""
        code, out = await self._run_device(server_url, "--token", "wrong")
        assert code != 0 and "unauthorized" in out.lower()
        async with aiohttp.ClientSession() as s, \
                s.get(f"{server_url}/metrics", headers=AUTH) as resp:
            metrics = await resp.text()
        assert 'testbed_server_protocol_errors_total{code="unauthorized"} 1.0' in metrics


class TestPeerErrorsInTheLog:
    async def test_malformed_requests_and_resets_are_counted_and_logged_once(
            self, server_url: str, caplog: pytest.LogCaptureFixture) -> None:
        """Five malformed HTTP requests and three devices that reset their connection while
        replies are due: one WARNING line per cause, no traceback, no ERROR, counted in
        /metrics; the server answers as before."""
        u = URL(server_url)
        caplog.set_level(logging.INFO)

        async def raw(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(u.host, u.port)
            writer.write(data)
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.read(64), 5)
            finally:
                writer.close()

        for i in range(5):
            head = await raw(f"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x{i}\r\n\r\n".encode())
            assert head.startswith(b"HTTP/1.") and b" 400 " in head
        async with aiohttp.ClientSession() as s:
            for k in range(3):
                ws, _ = await connect(s, server_url, device_id=f"rst-{k}", rate_sps=1000.0)
                for i in range(200):
                    await ws.send_bytes(infer(i))
                transport = ws._response.connection.transport  # type: ignore[union-attr]
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()  # RST with replies still to come
            await asyncio.sleep(0.5)
            async with s.get(f"{server_url}/metrics", headers=AUTH) as r:
                metrics = await r.text()
            ws, _ = await connect(s, server_url, device_id="after")
            await ws.send_bytes(infer(1))
            assert isinstance(await receive(ws), wire.Result)
            await ws.close()
        assert 'testbed_server_protocol_errors_total{code="bad_http"} 5.0' in metrics
        records = [r for r in caplog.records
                   if r.name.startswith(("aiohttp", "cascade_testbed.server", "asyncio"))]
        assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], \
            [r.getMessage()[:200] for r in records if r.levelno >= logging.ERROR]
        bad = [r for r in records if "bad http from a peer" in r.getMessage()]
        assert len(bad) == 1 and bad[0].levelno == logging.WARNING
        assert len([r for r in records if "client reset" in r.getMessage()]) <= 1
