"""The batcher with the real heavy model: under saturation the next full batch is handed to
the model's thread before the current one's answers go out, and as soon as the queue holds
one while a batch runs; with padding it never is."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from cascade_testbed.common import protocol as wire
from cascade_testbed.common.batch_profiles import BatchProfile
from cascade_testbed.common.modelzoo import open_zoo
from cascade_testbed.server.batch_policy import BatchPolicy
from cascade_testbed.server.batcher import Batcher
from cascade_testbed.server.heavy_model import BatchOutput, HeavyModel
from cascade_testbed.server.request_queue import Request, RequestQueue
from cascade_testbed.server.stats import ServerStats

pytestmark = pytest.mark.integration


async def until_true(tries: int, cond: Callable[[], bool]) -> None:
    """Wait for `cond`, polling every 2 ms, at most `tries` times."""
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out")


async def _three_full_batches(profile: BatchProfile | None) -> tuple[list[int], dict[int, int]]:
    """Queue 3 x 32 requests at once; return the queue length each answer saw and the
    number of answers per sample."""
    zoo = open_zoo()
    model = HeavyModel(zoo, "heavy-cnn")
    queue = RequestQueue(1024)
    stats = ServerStats()
    batcher = Batcher(model, queue, BatchPolicy(32, 0.001), profile, stats)
    pixels = zoo.dataset("test").x[:96]
    seen: list[int] = []
    answers: dict[int, int] = {}
    done = asyncio.Event()

    def respond(res: wire.Result) -> None:
        assert res.status == wire.ResultStatus.OK and res.batch_size == 32
        seen.append(len(queue))
        answers[res.sample_id] = answers.get(res.sample_id, 0) + 1
        if len(answers) == 96:
            done.set()

    now = asyncio.get_running_loop().time()
    for i in range(96):
        batcher.submit(Request("dev", i, np.asarray(pixels[i], dtype=np.uint8), now, now + 30,
                               respond))
    task = asyncio.create_task(batcher.run())
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await batcher.close()
    assert stats.totals.batches == 3 and stats.totals.model_cpu_s > 0
    return seen, answers


async def test_the_next_full_batch_is_started_before_the_answers_go_out() -> None:
    seen, answers = await _three_full_batches(None)
    assert sorted(answers) == list(range(96)) and set(answers.values()) == {1}
    # The first batch's answers run after the second and third were cut: both were handed
    # to the model's thread while the first one ran.
    assert seen[0] == 0


async def test_a_padded_batcher_runs_one_batch_at_a_time() -> None:
    seen, answers = await _three_full_batches(BatchProfile(base_ms=1.0, per_sample_ms=0.01))
    assert set(answers.values()) == {1} and len(answers) == 96
    assert seen[0] == 32  # only the next batch was cut when the first one's answers went out


class _GatedModel(HeavyModel):
    """The real heavy model, held at a gate so that a batch runs as long as the test says."""

    def __init__(self) -> None:
        super().__init__(open_zoo(), "heavy-cnn")
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def run(self, batch: np.ndarray) -> BatchOutput:
        self.sizes.append(len(batch))
        self.gate.wait(10)
        return super().run(batch)


async def test_a_batch_that_fills_up_while_one_runs_is_handed_over_at_once() -> None:
    model = _GatedModel()
    queue = RequestQueue(1024)
    batcher = Batcher(model, queue, BatchPolicy(32, 0.001), None, ServerStats())
    pixels = open_zoo().dataset("test").x[:74]
    answers: dict[int, int] = {}

    def respond(res: wire.Result) -> None:
        assert res.status == wire.ResultStatus.OK
        answers[res.sample_id] = answers.get(res.sample_id, 0) + 1

    def submit(ids: range) -> None:
        now = asyncio.get_running_loop().time()
        for i in ids:
            batcher.submit(Request("dev", i, np.asarray(pixels[i], dtype=np.uint8), now,
                                   now + 30, respond))

    task = asyncio.create_task(batcher.run())
    try:
        submit(range(32))
        await until_true(500, lambda: model.sizes == [32])  # the first batch runs, held at the gate
        submit(range(32, 42))
        # Not a full batch: the submission does not wake the batcher, which waits for the
        # running batch's end or a full queue.
        assert batcher.shell.waiting_for == 32 and len(queue) == 10
        submit(range(42, 64))
        # full: cut and handed over while the first runs
        await until_true(500, lambda: len(queue) == 0)
        assert not answers
        submit(range(64, 74))
        model.gate.set()
        await until_true(500, lambda: len(answers) == 74)
    finally:
        model.gate.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await batcher.close()
    assert model.sizes == [32, 32, 10] and set(answers.values()) == {1}


async def test_a_socket_request_gets_its_result_as_bytes_and_others_a_result() -> None:
    """A request with `send` (a device socket) is answered with the encoded result and never
    through `respond`; one without gets the `Result`; both carry the same fields."""
    zoo = open_zoo()
    model = HeavyModel(zoo, "heavy-cnn")
    queue = RequestQueue(64)
    batcher = Batcher(model, queue, BatchPolicy(8, 0.001), None, ServerStats())
    pixels = zoo.dataset("test").x[:8]
    expected = model.infer(pixels.astype(np.float32) / 255)
    sent: dict[int, bytes] = {}
    results: dict[int, wire.Result] = {}
    done = asyncio.Event()

    def count() -> None:
        if len(sent) + len(results) == 8:
            done.set()

    def respond(res: wire.Result) -> None:
        results[res.sample_id] = res
        count()

    def send(data: bytes) -> None:
        res = wire.decode(data)
        assert isinstance(res, wire.Result)
        sent[res.sample_id] = data
        count()

    now = asyncio.get_running_loop().time()
    for i in range(8):
        batcher.submit(Request("dev", i, np.asarray(pixels[i], dtype=np.uint8), now, now + 30,
                               respond, send if i % 2 else None))
    task = asyncio.create_task(batcher.run())
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await batcher.close()
    assert sorted(sent) == [1, 3, 5, 7] and sorted(results) == [0, 2, 4, 6]
    for i in range(8):
        res = wire.decode(sent[i]) if i % 2 else results[i]
        assert isinstance(res, wire.Result)
        assert (res.status, res.batch_size, res.model) == (wire.ResultStatus.OK, 8, model.name)
        assert res.prediction == int(expected[i].argmax())
        assert res.confidence == pytest.approx(float(expected[i].max()), rel=1e-5)
        assert res.queue_us >= 0 and res.compute_us > 0


async def test_the_model_thread_runs_jobs_in_order_and_hands_back_results_and_errors() -> None:
    """Jobs run one at a time, in order, off the event loop's thread; an exception reaches the
    awaiting coroutine; a job whose awaiter gave up does not break the next ones."""
    from cascade_testbed.server.batcher import ModelThread

    worker = ModelThread(asyncio.get_running_loop(), name="test-model")
    ran: list[tuple[int, str]] = []

    def job(i: int) -> int:
        ran.append((i, threading.current_thread().name))
        if i == 2:
            raise ValueError("broken batch")
        return i * 10

    futures = [worker.run(job, i) for i in range(5)]
    futures[3].cancel()
    assert await futures[0] == 0 and await futures[1] == 10
    with pytest.raises(ValueError, match="broken batch"):
        await futures[2]
    assert await futures[4] == 40
    worker.shutdown()
    assert ran == [(i, "test-model") for i in range(5)]


class _CountingModel(HeavyModel):
    """The real heavy model, held at a gate, counting how many batches run at once."""

    def __init__(self) -> None:
        super().__init__(open_zoo(), "heavy-cnn")
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def run(self, batch: np.ndarray) -> BatchOutput:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.gate.wait(10)
        with self.lock:
            self.running -= 1
        return super().run(batch)


async def test_replicas_run_batches_side_by_side_and_scale_with_every_sample_answered() -> None:
    """Three replicas take three full batches at once from the one queue; scaled down to one,
    the next batches run one at a time; every request is answered once; the ledger counts the
    replicas provisioned."""
    model = _CountingModel()
    queue = RequestQueue(1024)
    stats = ServerStats()
    batcher = Batcher(model, queue, BatchPolicy(8, 0.001), BatchProfile(1.0, 0.01), stats,
                      replicas=3)
    pixels = open_zoo().dataset("test").x[:48]
    answers: dict[int, int] = {}

    def respond(res: wire.Result) -> None:
        assert res.status == wire.ResultStatus.OK and res.batch_size == 8
        answers[res.sample_id] = answers.get(res.sample_id, 0) + 1

    def submit(ids: range) -> None:
        now = asyncio.get_running_loop().time()
        for i in ids:
            batcher.submit(Request("dev", i, np.asarray(pixels[i], dtype=np.uint8), now,
                                   now + 30, respond))

    task = asyncio.create_task(batcher.run())
    try:
        submit(range(24))
        await until_true(2500, lambda: model.running == 3)  # three batches held at the gate at once
        model.gate.set()
        await until_true(2500, lambda: len(answers) == 24)
        batcher.set_replicas(1)
        assert batcher.active == 1 and stats.replicas._value.get() == 1
        model.gate.clear()
        model.most = 0
        submit(range(24, 48))
        await until_true(2500, lambda: model.running == 1)
        await asyncio.sleep(0.05)  # the other replicas are released: nobody takes a batch
        assert model.most == 1 and len(queue) == 16
        model.gate.set()
        await until_true(2500, lambda: len(answers) == 48)
    finally:
        model.gate.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await batcher.close()
    assert set(answers.values()) == {1} and model.most == 1
    assert batcher.ledger.peak == 3 and batcher.ledger.total(batcher.now()) > 0
