"""DynamicBatcher semantics, in-process: batch formation, bounded queue, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.runtime.batcher import BatchingConfig, DynamicBatcher
from services.runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable


class RecordingModel:
    """A real function of its rows (doubles them) that records every batch it runs."""

    def __init__(self, seconds_per_batch: float = 0.0, gate: threading.Event | None = None):
        self.batches: list[list[int]] = []
        self.seconds = seconds_per_batch
        self.gate = gate

    def __call__(self, rows):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.seconds)
        self.batches.append(list(rows))
        return [2 * r for r in rows]

    @property
    def rows_run(self) -> list[int]:
        return [r for batch in self.batches for r in batch]


def run(coro):
    return asyncio.run(coro)


async def started(model, **config) -> DynamicBatcher:
    batcher = DynamicBatcher("m", model, BatchingConfig(**config))
    batcher.start()
    return batcher


async def busy(**config):
    """A batcher whose model is running row 0 and holds it until the returned gate is set."""
    gate = threading.Event()
    model = RecordingModel(gate=gate)
    batcher = await started(model, max_batch_size=1, **config)
    running = asyncio.ensure_future(batcher.submit([0]))
    await asyncio.sleep(0.05)   # the worker has taken it: the queue is empty again
    return batcher, model, gate, running


def test_concurrent_requests_share_batches_and_get_their_own_results():
    async def scenario():
        model = RecordingModel()
        batcher = await started(model, max_batch_size=8, max_queue_delay_s=0.05)
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(8)))
        await batcher.close()
        return model, results

    model, results = run(scenario())
    assert [list(r) for r in results] == [[2 * i] for i in range(8)]
    assert len(model.batches) == 1 and sorted(model.batches[0]) == list(range(8))


def test_full_batch_dispatches_without_waiting_for_the_delay():
    async def scenario():
        batcher = await started(RecordingModel(), max_batch_size=4, max_queue_delay_s=5.0)
        t0 = time.monotonic()
        await asyncio.gather(*(batcher.submit([i]) for i in range(4)))
        elapsed = time.monotonic() - t0
        await batcher.close()
        return elapsed

    assert run(scenario()) < 1.0


def test_partial_batch_waits_at_most_the_queue_delay():
    async def scenario():
        model = RecordingModel()
        batcher = await started(model, max_batch_size=64, max_queue_delay_s=0.1)
        t0 = time.monotonic()
        await batcher.submit([1, 2])
        elapsed = time.monotonic() - t0
        await batcher.close()
        return elapsed, model

    elapsed, model = run(scenario())
    assert 0.09 <= elapsed < 2.0
    assert model.batches == [[1, 2]]


def test_multi_row_requests_are_never_split_and_batches_respect_max_size():
    async def scenario():
        model = RecordingModel()
        batcher = await started(model, max_batch_size=5, max_queue_delay_s=0.05)
        await asyncio.gather(*(batcher.submit([10 * i + j for j in range(3)]) for i in range(4)))
        await batcher.close()
        return model

    model = run(scenario())
    assert all(len(b) <= 5 for b in model.batches)
    for i in range(4):   # each request's rows sit together in one batch
        assert any(b[k:k + 3] == [10 * i, 10 * i + 1, 10 * i + 2] for b in model.batches for k in range(len(b)))


def test_batching_off_runs_each_request_alone():
    async def scenario():
        model = RecordingModel()
        batcher = await started(model, max_batch_size=8, enabled=False)
        await asyncio.gather(*(batcher.submit([i]) for i in range(6)))
        await batcher.close()
        return model

    assert all(len(b) == 1 for b in run(scenario()).batches)


def test_full_queue_refuses_at_once():
    async def scenario():
        batcher, model, gate, running = await busy(max_queue_size=3)
        queued = [asyncio.ensure_future(batcher.submit([i])) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(ResourceExhausted):
            await batcher.submit([4])
        refused_in = time.monotonic() - t0
        gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close()
        return refused_in, model

    refused_in, model = run(scenario())
    assert refused_in < 0.05
    assert 4 not in model.rows_run


def test_expired_request_leaves_the_queue_and_costs_no_model_time():
    async def scenario():
        batcher, model, gate, blocker = await busy()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit([99], timeout=0.1)
        depth_after = batcher.queue_depth
        gate.set()
        await blocker
        await batcher.submit([1])
        await batcher.close()
        return model, depth_after

    model, depth_after = run(scenario())
    assert 99 not in model.rows_run
    assert model.rows_run == [0, 1]
    assert depth_after == 0


def test_cancelled_request_is_skipped():
    async def scenario():
        batcher, model, gate, blocker = await busy()
        abandoned = asyncio.ensure_future(batcher.submit([42]))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        await batcher.close()
        return model

    assert 42 not in run(scenario()).rows_run


def test_model_failure_fails_only_its_batch():
    async def scenario():
        calls = []

        def flaky(rows):
            calls.append(list(rows))
            if len(calls) == 1:
                raise RuntimeError("boom")
            return rows

        batcher = await started(flaky, max_batch_size=1)
        with pytest.raises(RuntimeError):
            await batcher.submit([1])
        second = await batcher.submit([2])
        await batcher.close()
        return second

    assert list(run(scenario())) == [2]


def test_bad_requests_and_closed_batcher():
    async def scenario():
        batcher = await started(RecordingModel(), max_batch_size=2)
        with pytest.raises(InvalidArgument):
            await batcher.submit([])
        with pytest.raises(InvalidArgument):
            await batcher.submit([1, 2, 3])
        with pytest.raises(DeadlineExceeded):
            await batcher.submit([1], timeout=0)
        await batcher.close()
        with pytest.raises(Unavailable):
            await batcher.submit([1])

    run(scenario())


def test_close_finishes_queued_work():
    async def scenario():
        model = RecordingModel(seconds_per_batch=0.02)
        batcher = await started(model, max_batch_size=1)
        pending = [asyncio.ensure_future(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        return [list(await p) for p in pending]

    assert run(scenario()) == [[2 * i] for i in range(5)]


def test_instances_run_batches_concurrently():
    async def scenario():
        both_running = threading.Barrier(2, timeout=5)

        def model(rows):
            both_running.wait()   # returns only when two batches are on the model at once
            return rows

        batcher = await started(model, max_batch_size=1, instances=2)
        results = await asyncio.gather(batcher.submit([1]), batcher.submit([2]))
        await batcher.close()
        return results

    assert [list(r) for r in run(scenario())] == [[1], [2]]
