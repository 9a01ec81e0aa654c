"""BentoML peer: `@bentoml.api(batchable=True, max_batch_size, max_latency_ms)`, one worker.
Its HTTP API takes JSON (an ndarray as nested lists) or multipart files; its one binary
type (`application/vnd.bentoml+pickle`) is refused by the main server. A request is one row
of 65 floats: the client's send time, then the 64 pixels. Started by bench_peers.py as
`python -m bentoml serve bentoml_app:BentoHeavy` in .peers/bentoml's python.

BentoML has no batch window: its CorkDispatcher picks the wait from past batches; its
`max_latency_ms` cancels (HTTP 503) requests it expects to finish later than that, so it is
set to the client's timeout, as our server's per-request deadline is.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from heavy_onnx import Heavy, PeerConfig

CFG = PeerConfig.from_env()


@bentoml.service(workers=1)
class BentoHeavy:
    def __init__(self) -> None:
        self.model = Heavy(CFG)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=CFG.max_batch,
                 max_latency_ms=int(os.environ.get("PEER_MAX_LATENCY_MS", "10000")))
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x[:, 1:].astype(np.uint8), x[:, 0])
