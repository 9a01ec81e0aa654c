"""Ray Serve peer: one replica, `@serve.batch(max_batch_size, batch_wait_timeout_s)`, the
request body is the raw uint8 pixels (binary), the client's send time in a header. Runs in
.peers/ray's python (bench_peers.py starts it with the config in the environment).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading

import numpy as np
import ray
from heavy_onnx import REPLY_FIELDS, Heavy, PeerConfig
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

CFG = PeerConfig.from_env()


@serve.deployment(num_replicas=1, max_ongoing_requests=8192, ray_actor_options={"num_cpus": 1})
class RayHeavy:
    """The model runs in a worker thread, so the replica's loop keeps taking requests while a
    batch computes (as our server's batcher runs it). `max_ongoing_requests` is our queue
    size: Ray's default (5) would cap every batch at 5."""

    def __init__(self) -> None:
        self.model = Heavy(CFG)

    async def __call__(self, request: Request) -> Response:
        pixels = np.frombuffer(await request.body(), dtype=np.uint8)
        row = await self.run_batch((pixels, float(request.headers["x-sent"])))
        return Response(json.dumps(dict(zip(REPLY_FIELDS, row.tolist(), strict=True))),
                        media_type="application/json")

    @serve.batch(max_batch_size=CFG.max_batch, batch_wait_timeout_s=CFG.window_us / 1e6)
    async def run_batch(self, items: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
        pixels = np.stack([p for p, _ in items])
        sent = np.array([s for _, s in items])
        return list(await asyncio.to_thread(self.model.run, pixels, sent))


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                                            if k.startswith("PEER_")}})
    serve.start(http_options={"host": "127.0.0.1", "port": CFG.port})
    serve.run(RayHeavy.bind(), name="bench", route_prefix="/",
              logging_config={"enable_access_log": False, "log_level": "WARNING"})
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
