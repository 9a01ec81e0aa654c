"""LitServe peer: `LitAPI(max_batch_size, batch_timeout)`, one worker, one API server.
LitServe's endpoint takes JSON (or a form), not a raw body: the pixels travel base64 in a
JSON object with the client's send time. Runs in .peers/litserve's python.
"""

from __future__ import annotations

import base64

import litserve as ls
import numpy as np
from heavy_onnx import REPLY_FIELDS, Heavy, PeerConfig

CFG = PeerConfig.from_env()


class LitHeavy(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Heavy(CFG)

    def decode_request(self, request: dict) -> tuple[np.ndarray, float]:
        return np.frombuffer(base64.b64decode(request["x"]), np.uint8), float(request["sent"])

    def batch(self, inputs: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([p for p, _ in inputs]), np.array([s for _, s in inputs])

    def predict(self, x: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return self.model.run(*x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, row: np.ndarray) -> dict[str, float]:
        return dict(zip(REPLY_FIELDS, row.tolist(), strict=True))


def main() -> None:
    api = LitHeavy(max_batch_size=CFG.max_batch, batch_timeout=CFG.window_us / 1e6)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=CFG.port, num_api_servers=1, log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()
