"""Dynamic batching with Triton's semantics.

Requests (each one or more rows) wait in a bounded queue; a batch is dispatched when
it holds ``max_batch_size`` rows or the oldest request has waited ``max_queue_delay``.
A full queue refuses at once (RESOURCE_EXHAUSTED); a request whose deadline passes or
whose caller goes away leaves the queue and never costs model time. The model runs on
a worker thread so the event loop keeps accepting and batching while it computes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from services.runtime.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 64
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 1024
    enabled: bool = True
    # Batches that may run at once, each on its own thread (Triton's instance_group count). On a CPU,
    # two single-threaded instances beat one two-threaded one: neither waits on the other's barrier.
    instances: int = 1


@dataclass
class _Request:
    rows: Sequence[Any]
    future: asyncio.Future
    enqueued: float
    taken: bool = False
    counted_out: bool = False


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatcherStats:
    """What Triton's ModelStatistics reports, kept per model."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)


class DynamicBatcher:
    def __init__(self, model_name: str, run_batch: Callable[[Sequence[Any]], Sequence[Any]],
                 config: BatchingConfig, metrics: Metrics | None = None):
        self.model_name = model_name
        self.config = config
        self.stats = BatcherStats()
        self._run_batch = run_batch
        self._metrics = metrics
        # The per-request series, looked up once: a labels() call costs more than the observation itself.
        self._queue_time = metrics.queue_time.labels(model_name) if metrics else None
        self._queue_depth = metrics.queue_depth.labels(model_name) if metrics else None
        self._queue: collections.deque[_Request] = collections.deque()
        self._waiting = 0
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=config.instances, thread_name_prefix=f"model-{model_name}")
        self._worker: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._dispatch_forever(), name=f"batcher-{self.model_name}")

    @property
    def queue_depth(self) -> int:
        return self._waiting

    async def submit(self, rows: Sequence[Any], timeout: float | None = None) -> Sequence[Any]:
        """Queue ``rows`` as one request and wait for their results (one per row)."""
        if self._closed:
            raise Unavailable(f"model {self.model_name} is shutting down")
        if not rows:
            raise InvalidArgument(("rows", "a request needs at least one row"))
        if len(rows) > self.config.max_batch_size:
            raise InvalidArgument(("rows", f"{len(rows)} rows exceed the model's max batch size "
                                           f"{self.config.max_batch_size}"))
        if self._waiting >= self.config.max_queue_size:
            self._count_rejected("queue_full")
            raise ResourceExhausted(f"queue of model {self.model_name} is full "
                                    f"({self._waiting} requests waiting); retry with backoff")
        if timeout is not None and timeout <= 0:
            self._count_rejected("deadline")
            raise DeadlineExceeded(f"deadline expired before model {self.model_name} was queued")
        request = _Request(rows, asyncio.get_running_loop().create_future(), time.monotonic())
        self._queue.append(request)
        self._set_waiting(self._waiting + 1)
        self._arrival.set()
        try:
            return await asyncio.wait_for(request.future, timeout)
        except TimeoutError:
            self._count_rejected("deadline" if not request.taken else "deadline_in_compute")
            raise DeadlineExceeded(f"deadline expired while queued for model {self.model_name}") from None
        except asyncio.CancelledError:
            self._count_rejected("cancelled")   # its future is cancelled too: the worker skips it
            raise
        finally:
            self._leave_queue(request)

    async def close(self) -> None:
        """Finish what is queued, then stop the worker and its thread."""
        self._closed = True
        self._arrival.set()
        if self._worker:
            await self._worker
        self._executor.shutdown(wait=True)

    # -- dispatch --------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        """Form a batch whenever an instance is free; up to ``instances`` batches run at once."""
        free = asyncio.Semaphore(self.config.instances)
        answering: set[asyncio.Task] = set()
        while True:
            await free.acquire()
            batch = await self._next_batch()
            if batch is None:
                break
            if not batch:   # every request in it was abandoned meanwhile
                free.release()
                continue
            task = asyncio.ensure_future(self._answer(batch, self._start(batch), free))
            answering.add(task)
            task.add_done_callback(answering.discard)
        await asyncio.gather(*answering)

    async def _next_batch(self) -> list[_Request] | None:
        """Wait until a batch is due, then take it: full, or its oldest request waited long enough."""
        while True:
            self._drop_abandoned()
            if not self._queue:
                if self._closed:
                    return None
                self._arrival.clear()
                await self._arrival.wait()
                continue
            due = self._queue[0].enqueued + self.config.max_queue_delay_s
            if not self.config.enabled or self._closed or self._queued_rows() >= self.config.max_batch_size:
                return self._take()
            remaining = due - time.monotonic()
            if remaining <= 0:
                return self._take()
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                pass

    def _drop_abandoned(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    def _queued_rows(self) -> int:
        return sum(len(r.rows) for r in self._queue if not r.future.done())

    def _take(self) -> list[_Request]:
        """Requests in arrival order while their rows fit; with batching off, exactly one."""
        batch, rows = [], 0
        limit = self.config.max_batch_size if self.config.enabled else 0
        while self._queue:
            request = self._queue[0]
            if request.future.done():
                self._queue.popleft()
                continue
            if batch and rows + len(request.rows) > limit:
                break
            self._queue.popleft()
            request.taken = True
            self._leave_queue(request)
            batch.append(request)
            rows += len(request.rows)
        return batch

    def _start(self, batch: list[_Request]) -> tuple[asyncio.Future, list, float]:
        """Hand the batch to a model thread now, from the dispatcher, before anything else is scheduled."""
        rows = [row for request in batch for row in request.rows]
        started = time.monotonic()
        for request in batch:
            self.stats.queue.add(int((started - request.enqueued) * 1e9))
            if self._queue_time is not None:
                self._queue_time.observe(started - request.enqueued)
        compute = asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, rows)
        return compute, rows, started

    async def _answer(self, batch: list[_Request], running: tuple[asyncio.Future, list, float],
                      free: asyncio.Semaphore) -> None:
        compute, rows, started = running
        try:
            results = await compute
            if len(results) != len(rows):
                raise RuntimeError(f"model returned {len(results)} results for {len(rows)} rows")
        except Exception as error:  # a model failure fails its batch, never the server
            log.exception("model execution failed", extra={"model": self.model_name, "rows": len(rows)})
            self._finish_failed(batch, error, started)
            return
        finally:
            # Free the instance before waking the callers: the dispatcher then starts the next
            # batch ahead of this batch's response handlers.
            free.release()
        self._record_execution(batch, len(rows), started)
        offset = 0
        for request in batch:
            n = len(request.rows)
            if not request.future.done():
                request.future.set_result(results[offset:offset + n])
                self.stats.success.add(int((time.monotonic() - request.enqueued) * 1e9))
            offset += n

    def _finish_failed(self, batch: list[_Request], error: Exception, started: float) -> None:
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)
                self.stats.fail.add(int((time.monotonic() - request.enqueued) * 1e9))

    def _record_execution(self, batch: list[_Request], rows: int, started: float) -> None:
        elapsed = time.monotonic() - started
        self.stats.execution_count += 1
        self.stats.inference_count += rows
        self.stats.last_inference_ms = int(time.time() * 1000)
        # Triton's convention: each request of a batch is charged the batch's compute time.
        self.stats.compute_infer.add(int(elapsed * 1e9) * len(batch), count=len(batch))
        self.stats.batches.setdefault(rows, _Duration()).add(int(elapsed * 1e9))
        if self._metrics:
            self._metrics.batch_size.labels(self.model_name).observe(rows)
            self._metrics.compute_time.labels(self.model_name).observe(elapsed)

    # -- bookkeeping -----------------------------------------------------------------------

    def _leave_queue(self, request: _Request) -> None:
        """Count a request out of the queue once, whether the worker took it or its caller left."""
        if request.counted_out:
            return
        request.counted_out = True
        self._set_waiting(self._waiting - 1)

    def _set_waiting(self, n: int) -> None:
        self._waiting = n
        if self._queue_depth is not None:
            self._queue_depth.set(n)

    def _count_rejected(self, reason: str) -> None:
        if self._metrics:
            self._metrics.rejected.labels(self.model_name, reason).inc()
