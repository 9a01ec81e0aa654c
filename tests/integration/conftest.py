"""A real server on 127.0.0.1 with a random port, in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cascade_testbed.common.config import ServerConfig
from cascade_testbed.server.main import serve
from cascade_testbed.server.runtime import ServerSettings

TOKEN = "secret-token"


@pytest_asyncio.fixture
async def server_url() -> AsyncIterator[str]:
    settings = ServerSettings(server=ServerConfig(port=0, max_queue_size=64, max_batch_size=8,
                                                  batch_base_ms=1.0, batch_per_sample_ms=0.5),
                              token=TOKEN)
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, listening.set_result, stop))
    url = await asyncio.wait_for(listening, 30)
    yield url
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
