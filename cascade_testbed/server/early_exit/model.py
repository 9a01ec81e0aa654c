"""An early-exit heavy model: one onnxruntime session per stage (zoo card `stages`), each
returning its exit's probabilities and, but for the last, the activation the next stage takes."""

from __future__ import annotations

import numpy as np

from cascade_testbed.common.batch_profiles import REFERENCE_BATCH, BatchProfile
from cascade_testbed.common.modelzoo import Zoo, ZooError, open_session
from cascade_testbed.server.early_exit.stages import StageCosts
from cascade_testbed.server.heavy_model import BatchOutput


class StagedModel:
    def __init__(self, zoo: Zoo, name: str, intra_op_threads: int = 1) -> None:
        self.name = name
        self.card = zoo.card(name)
        stages = self.card.get("stages")
        if not stages:
            raise ZooError(f"model {name!r} has no stages (not an early-exit model)")
        self._sessions = [open_session(zoo.file(st["file"], f"{name} stage"),
                                       intra_op_threads, 1)
                          for st in stages]
        self._inputs = [s.get_inputs()[0].name for s in self._sessions]
        self._outputs = [[o.name for o in s.get_outputs()] for s in self._sessions]
        self.stage_latency_ms = [float(st["latency_ms_p50"][REFERENCE_BATCH]) for st in stages]
        first = self._sessions[0].get_inputs()[0]
        self.sample_shape: tuple[int, ...] = tuple(int(d) for d in first.shape[1:])
        self.sample_size = int(np.prod(self.sample_shape))
        self.profile: BatchProfile | None = None
        self.stage_profiles: tuple[BatchProfile, ...] = ()

    @property
    def stages(self) -> int:
        return len(self._sessions)

    def pad_to(self, whole: BatchProfile) -> None:
        """Emulate `whole` for the full network, split over stages by their measured share."""
        total = sum(self.stage_latency_ms)
        self.profile = whole
        self.stage_profiles = tuple(whole.scaled(ms / total) for ms in self.stage_latency_ms)

    def run_stage(self, stage: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(exit probabilities, activation for the next stage or None after the last)."""
        out = dict(zip(self._outputs[stage],
                       self._sessions[stage].run(None, {self._inputs[stage]: x}), strict=True))
        probs = out.pop("probs")
        act = next(iter(out.values())) if out else None
        return probs, act

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Every stage in turn; the last exit's probabilities."""
        x: np.ndarray | None = batch
        for s in range(self.stages - 1):
            assert x is not None  # only the last stage has no activation to pass on
            _, x = self.run_stage(s, x)
        assert x is not None
        return self.run_stage(self.stages - 1, x)[0]

    def run(self, batch: np.ndarray) -> BatchOutput:
        """The whole network, no exits: the whole-network batching baseline."""
        return BatchOutput(self.infer(batch))

    def costs(self, exit_threshold: float) -> StageCosts:
        """Stage profiles and the conditional exit rates at `exit_threshold` (validation
        curve of the card; the nearest threshold listed)."""
        if not self.stage_profiles:
            raise ValueError("pad_to() first: stage costs need the emulated profile")
        curve = self.card.get("exit_curves_val") or []
        if not curve:
            return StageCosts(self.stage_profiles, (0.0,) * (self.stages - 1) + (1.0,))
        point = min(curve, key=lambda p: abs(float(p["threshold"]) - exit_threshold))
        rates, left, cond = [float(r) for r in point["exit_rates"]], 1.0, []
        for r in rates[:-1]:
            cond.append(min(r / left, 1.0) if left > 1e-9 else 1.0)
            left -= r
        return StageCosts(self.stage_profiles, (*cond, 1.0))
