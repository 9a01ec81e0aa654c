"""PyTriton peer: Triton's dynamic batcher (`max_batch_size`, `max_queue_delay_microseconds`),
one model instance, requests in KServe v2 HTTP with binary tensors (`x` uint8 [64] and the
client's send time `sent` fp64 [1]). Runs in .peers/pytriton's python.
"""

from __future__ import annotations

import numpy as np
from heavy_onnx import REPLY_FIELDS, Heavy, PeerConfig
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

CFG = PeerConfig.from_env()
MODEL = Heavy(CFG)


@batch
def infer(x: np.ndarray, sent: np.ndarray) -> dict[str, np.ndarray]:
    return {"reply": MODEL.run(x, sent[:, 0])}


def main() -> None:
    config = TritonConfig(http_address="127.0.0.1", http_port=CFG.port, grpc_port=CFG.port + 1,
                          metrics_port=CFG.port + 2, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name="heavy", infer_func=infer,
                    inputs=[Tensor(name="x", dtype=np.uint8, shape=(64,)),
                            Tensor(name="sent", dtype=np.float64, shape=(1,))],
                    outputs=[Tensor(name="reply", dtype=np.float64,
                                    shape=(len(REPLY_FIELDS),))],
                    config=ModelConfig(max_batch_size=CFG.max_batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=CFG.window_us)),
                    strict=False)
        print("ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
