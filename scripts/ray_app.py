"""The Ray Serve peer of our server for scripts/bench_ray.py: the same zoo model, opened the
same way (`server.heavy_model.HeavyModel`, 1 intra-op thread), behind the same
`POST /v1/infer` protocol (one msgpack `Infer` in, one msgpack `Result` out), batched by
`@serve.batch` with the server's batch cap and queue delay. Needs Ray, so it lives outside
the project's packages and only `.venv-ray` imports it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.server.heavy_model import HeavyModel
from cascade_testbed.server.ingress import MSGPACK
from cascade_testbed.server.tensors import tensor_from_infer

MAX_BATCH = 32
"""Same cap as the server in the benchmark (`max_batch_size = 32`)."""
BATCH_WAIT_S = 0.001
"""Same as the server's `max_queue_delay_us = 1000`."""
MAX_ONGOING = 8192
"""Same as the server's `max_queue_size`; Ray's default (5) would cap every batch at 5."""


@serve.deployment(num_replicas=1, max_ongoing_requests=MAX_ONGOING,
                  ray_actor_options={"num_cpus": 1})
class RayHeavy:
    """One replica; the model runs in a worker thread, as the server's batcher runs it, so
    the replica's event loop keeps taking requests while a batch computes."""

    def __init__(self, model: str) -> None:
        self.model = HeavyModel(open_zoo(), model, intra_op_threads=1)

    async def __call__(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path.rstrip("/") != "/v1/infer":
            return Response(status_code=404)
        arrival = time.perf_counter()
        try:
            msg = wire.decode(await request.body())
            if not isinstance(msg, wire.Infer):
                raise wire.ProtocolError(wire.ErrorCode.UNKNOWN_TYPE,
                                         f"POST /v1/infer takes an infer message, not {msg.TYPE}")
            x = tensor_from_infer(msg, self.model)
        except wire.ProtocolError as exc:
            body = wire.encode(wire.Error(int(exc.code), exc.reason))
            return Response(body, status_code=400, media_type=MSGPACK)
        probs, size, start, compute_us = await self.run_batch(x)
        res = wire.Result(sample_id=msg.sample_id, prediction=int(probs.argmax()),
                          confidence=float(probs.max()),
                          queue_us=int((start - arrival) * 1e6), compute_us=compute_us,
                          batch_size=size, model=self.model.name)
        return Response(wire.encode(res), media_type=MSGPACK)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def run_batch(self, xs: list[np.ndarray]) -> list[tuple[Any, int, float, int]]:
        """Stack, run once, split: each caller gets its row and the batch's timings."""
        start = time.perf_counter()
        probs = await asyncio.to_thread(self.model.infer, np.stack(xs))
        compute_us = int((time.perf_counter() - start) * 1e6)
        return [(row, len(xs), start, compute_us) for row in probs]


def app(model: str) -> Any:
    """The bound application `serve.run` takes."""
    return RayHeavy.bind(model)
