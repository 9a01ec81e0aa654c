"""What every peer app runs: the zoo's heavy model opened as our server opens it
(`cascade_testbed.common.modelzoo.open_session`: 1 intra-op and 1 inter-op thread, no spinning, CPU
provider), fed as our server feeds it (uint8 pixels stacked, then float32 * 1/255 once per
batch). Imports only numpy and onnxruntime: it runs in each peer's own venv, where the
project is not installed.

Each reply row carries what the benchmark reads about the batch that answered it:
prediction, confidence, batch size, the request's wait from its client-side send time to
the batch's start (one host, one CLOCK_MONOTONIC), the batch's wall time and its CPU time
in the model's thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

SCALE = np.float32(1 / 255)
REPLY_FIELDS = ("prediction", "confidence", "batch_size", "wait_us", "compute_us",
                "model_cpu_us")


@dataclass(frozen=True)
class PeerConfig:
    """Set by bench_peers.py in the environment: the same values for every peer."""

    model: str
    port: int
    max_batch: int
    window_us: int
    threads: int

    @classmethod
    def from_env(cls) -> PeerConfig:
        e = os.environ
        return cls(e["PEER_MODEL"], int(e["PEER_PORT"]), int(e["PEER_MAX_BATCH"]),
                   int(e["PEER_WINDOW_US"]), int(e.get("PEER_THREADS", "1")))


class Heavy:
    """One session; `run` is blocking and called with one whole batch."""

    def __init__(self, cfg: PeerConfig) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(cfg.model, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [self.session.get_outputs()[0].name]

    def run(self, pixels: np.ndarray, sent: np.ndarray) -> np.ndarray:
        """uint8 [b, 64] and send times [b] -> float64 [b, 6] rows of `REPLY_FIELDS`."""
        start = time.monotonic()
        cpu0 = time.thread_time()
        x = np.ascontiguousarray(pixels, dtype=np.uint8).astype(np.float32) * SCALE
        probs = self.session.run(self.outputs, {self.input: x})[0]
        cpu_us = (time.thread_time() - cpu0) * 1e6
        wall_us = (time.monotonic() - start) * 1e6
        b = len(probs)
        out = np.empty((b, len(REPLY_FIELDS)), dtype=np.float64)
        out[:, 0] = probs.argmax(axis=1)
        out[:, 1] = probs.max(axis=1)
        out[:, 2] = b
        out[:, 3] = (start - np.asarray(sent, dtype=np.float64).reshape(b)) * 1e6
        out[:, 4] = wall_us
        out[:, 5] = cpu_us
        return out
