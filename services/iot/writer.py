"""The store's one writer thread, with group commit.

Batches queue here from every stream in arrival order. The thread takes what has piled up (up to
``max_group_rows``) and commits it in one transaction: one fsync for many batches, so small batches
from many streams cost little more than large ones. Each batch is still stored whole or not at all,
and a refused batch (its timestamps not after the asset's stored ones) leaves the others of its group
to commit. One thread keeps each asset's batches in order without locks between them; SQLite takes
one writer at a time anyway.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from services.iot.store import AppendRaced, NotAfterStored, StoredAsset, TelemetryStore

log = logging.getLogger(__name__)


class StreamState:
    """What the writer knows of the stream a batch came on."""

    def __init__(self):
        # Set on the first refused batch, or when the client left: what the stream queued after it is skipped.
        self.failed = False


@dataclass
class _Job:
    stream: StreamState
    asset_id: str
    timestamps_ms: np.ndarray
    values: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    outcome: object = field(default=None)   # StoredAsset, an exception, or None when skipped

    def settle(self) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, self.outcome)


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass
class GroupCommit:
    """What one transaction held, for metrics."""

    batches: int
    rows: int
    seconds: float


class StoreWriter:
    def __init__(self, store: TelemetryStore, on_commit=None, max_group_rows: int = 200_000):
        self.store = store
        self.max_group_rows = max_group_rows
        self._on_commit = on_commit or (lambda commit: None)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        # A daemon: at exit, batches still queued were never acknowledged, so dropping them breaks no promise.
        self._thread = threading.Thread(target=self._run, name="iot-store-writer", daemon=True)
        self._thread.start()

    def submit(self, stream: StreamState, asset_id: str, timestamps_ms: np.ndarray,
               values: np.ndarray) -> asyncio.Future:
        """A future of the asset as stored after this batch (None when skipped); from the event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(stream, asset_id, timestamps_ms, values, future, loop))
        return future

    def _run(self) -> None:
        while True:
            group = self._gather(self._jobs.get())
            try:
                self._commit(group)
            except Exception as error:   # noqa: BLE001 - the one writer must not die: its streams would wait forever
                log.exception("telemetry writer failed", extra={"batches": len(group)})
                for job in group:
                    job.outcome, job.stream.failed = error, True
                    job.settle()

    def _gather(self, first: _Job) -> list[_Job]:
        """The first job and what queued behind it, up to max_group_rows."""
        group, rows = [first], len(first.timestamps_ms)
        while rows < self.max_group_rows:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            group.append(job)
            rows += len(job.timestamps_ms)
        return group

    def _commit(self, group: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            self._append_together(group)
        except AppendRaced:
            # Another process appended to one of these assets: each batch alone, after a reload.
            for job in group:
                self._append_alone(job)
        except Exception as error:   # noqa: BLE001 - the store failed: every stream of the group hears of it
            log.exception("telemetry commit failed", extra={"batches": len(group)})
            for job in group:
                job.outcome, job.stream.failed = error, True
        stored = [job for job in group if isinstance(job.outcome, StoredAsset)]
        if stored:
            self._on_commit(GroupCommit(len(stored), sum(len(j.timestamps_ms) for j in stored),
                                        time.perf_counter() - started))
        for job in group:
            job.settle()

    def _append_together(self, group: list[_Job]) -> None:
        refused: set[StreamState] = set()   # marked failed only once this transaction commits
        for job in group:
            job.outcome = None
        with self.store.appending() as transaction:
            for job in group:
                if job.stream.failed or job.stream in refused:
                    continue
                try:
                    job.outcome = transaction.append(job.asset_id, job.timestamps_ms, job.values)
                except NotAfterStored as error:   # nothing of it was written: the others commit
                    job.outcome = error
                    refused.add(job.stream)
        for stream in refused:
            stream.failed = True

    def _append_alone(self, job: _Job) -> None:
        if job.stream.failed:
            job.outcome = None
            return
        try:
            job.outcome = self.store.append(job.asset_id, job.timestamps_ms, job.values)
        except Exception as error:   # noqa: BLE001 - NotAfterStored, or the store failed
            job.outcome, job.stream.failed = error, True
