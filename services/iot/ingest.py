"""Streaming ingest: check each batch, store it on one writer thread, acknowledge it once committed.

A stream's batches are checked as they arrive (everything that does not depend on what is stored)
and queued for the writer thread (services/iot/writer.py), which commits them in arrival order, each
whole, several in one transaction when they pile up. Up to ``per_stream`` batches of a stream wait
for their commit: past that the stream stops reading, and gRPC's flow control slows the client.
Past ``total`` batches waiting across all streams, a new batch is refused with RESOURCE_EXHAUSTED,
so a crowd of clients cannot hold unbounded memory.

A bad batch ends its stream: the acknowledgements of the batches before it are sent first, then
INVALID_ARGUMENT naming it; none of its rows, and nothing the stream sent after it, is stored.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from modalmesh.v1 import common_pb2, iot_pb2
from services.iot.store import NotAfterStored, StoredAsset, TelemetryStore, UnknownAsset
from services.iot.writer import GroupCommit, StoreWriter, StreamState
from services.runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from services.runtime.metrics import Metrics
from services.runtime.tensors import tensor_array, tensor_dtype

ASSET_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
TIMESTAMP_DTYPES = (common_pb2.DATA_TYPE_INT64,)
VALUE_DTYPES = (common_pb2.DATA_TYPE_FP32, common_pb2.DATA_TYPE_FP64)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class IngestLimits:
    max_rows_per_batch: int = 10_000
    per_stream: int = 8    # batches of one stream waiting for their commit
    total: int = 256       # batches of all streams together


@dataclass(frozen=True)
class TelemetryBatch:
    sequence: int
    asset_id: str
    timestamps_ms: np.ndarray   # int64 [rows], strictly increasing
    values: np.ndarray          # float32 [rows, sensors], finite


class IngestMetrics:
    """Registered in the process's own registry, beside the runtime's metrics."""

    def __init__(self, metrics: Metrics):
        registry = metrics.registry
        self.rows = Counter("modalmesh_iot_ingested_rows", "Telemetry rows committed", registry=registry)
        self.batches = Counter("modalmesh_iot_ingested_batches", "Telemetry batches committed", registry=registry)
        self.refused = Counter("modalmesh_iot_refused_batches", "Batches not stored, by reason", ["reason"],
                               registry=registry)
        self.commit_time = Histogram("modalmesh_iot_store_commit_seconds",
                                     "Time of one store transaction (one or more batches, group commit)",
                                     buckets=_COMMIT_BUCKETS, registry=registry)
        self.commit_batches = Histogram("modalmesh_iot_store_commit_batches", "Batches per store transaction",
                                        buckets=_GROUP_BUCKETS, registry=registry)
        self.in_flight = Gauge("modalmesh_iot_in_flight_batches", "Batches waiting for their commit",
                               multiprocess_mode="livesum", registry=registry)

    def committed(self, commit: GroupCommit) -> None:
        """On the writer thread, after each transaction (prometheus_client is thread-safe)."""
        self.rows.inc(commit.rows)
        self.batches.inc(commit.batches)
        self.commit_time.observe(commit.seconds)
        self.commit_batches.observe(commit.batches)


# -- checks of one batch ---------------------------------------------------------------------------


def check_asset_id(asset_id: str, field: str = "asset_id", where: str = "") -> None:
    if not ASSET_ID.fullmatch(asset_id):
        raise InvalidArgument((field, f"{where}must be 1 to 128 characters: letters, digits, '-', '_', '.', ':'"))


def check_batch(request: iot_pb2.IngestRequest, asset: StoredAsset, max_rows: int) -> TelemetryBatch:
    """The batch as arrays, or InvalidArgument naming every problem (its sequence in each description)."""
    where = f"batch sequence {request.sequence}: "
    sensors = asset.asset_type.sensors
    if tuple(request.sensors) != sensors:
        raise InvalidArgument(("sensors", f"{where}sensors {list(request.sensors)} are not the "
                                          f"{asset.asset_type.name} sensors {list(sensors)}, in that order"))
    timestamps = _timestamps(request.timestamps_ms, max_rows, where)
    values = _values(request.values, len(timestamps), len(sensors), where)
    return TelemetryBatch(request.sequence, request.asset_id, timestamps, values)


def _timestamps(tensor: common_pb2.Tensor, max_rows: int, where: str) -> np.ndarray:
    dtype = tensor_dtype(tensor, TIMESTAMP_DTYPES, "timestamps_ms", where)
    if len(tensor.shape) != 1 or not 1 <= tensor.shape[0] <= max_rows:
        raise InvalidArgument(("timestamps_ms.shape", f"{where}shape {list(tensor.shape)} must be [rows] with "
                                                      f"1 to {max_rows} rows; split larger batches"))
    timestamps = tensor_array(tensor, dtype, "timestamps_ms", where)
    if timestamps[0] < 0:
        raise InvalidArgument(("timestamps_ms[0]", f"{where}{timestamps[0]} is before the Unix epoch"))
    not_increasing = np.flatnonzero(np.diff(timestamps) <= 0)
    if len(not_increasing):
        row = int(not_increasing[0]) + 1
        kind = "repeats" if timestamps[row] == timestamps[row - 1] else "is before"
        raise InvalidArgument((f"timestamps_ms[{row}]", f"{where}row {row}'s timestamp {timestamps[row]} {kind} "
                                                        f"row {row - 1}'s {timestamps[row - 1]}; timestamps "
                                                        "must strictly increase"))
    return timestamps


def _values(tensor: common_pb2.Tensor, rows: int, sensors: int, where: str) -> np.ndarray:
    dtype = tensor_dtype(tensor, VALUE_DTYPES, "values", where)
    if list(tensor.shape) != [rows, sensors]:
        raise InvalidArgument(("values.shape", f"{where}shape {list(tensor.shape)} must be [{rows}, {sensors}] "
                                               "(one row per timestamp, one column per sensor)"))
    values = tensor_array(tensor, dtype, "values", where)
    bad = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)   # stored as float32: FP64 must fit
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidArgument((f"values[{row}][{column}]", f"{where}{values[row, column]} is not a finite float32 "
                                                           f"value ({int(bad.sum())} such values in the batch)"))
    return values.astype(np.float32, copy=False)


# -- the streams ------------------------------------------------------------------------------------


class TelemetryIngest:
    def __init__(self, store: TelemetryStore, limits: IngestLimits, metrics: IngestMetrics):
        self.store = store
        self.limits = limits
        self.metrics = metrics
        self.writer = StoreWriter(store, on_commit=metrics.committed)
        self._in_flight = 0

    async def ingest(self, requests: AsyncIterator[iot_pb2.IngestRequest]) -> AsyncIterator[iot_pb2.IngestResponse]:
        stream = StreamState()
        # Commits waiting to be acknowledged, in order; an exception ends the stream after those before it.
        pending: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.limits.per_stream)
        reader = asyncio.ensure_future(self._read(requests, stream, pending, slots))
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                batch, commit = item
                asset = await self._committed(batch, commit)
                slots.release()
                yield iot_pb2.IngestResponse(sequence=batch.sequence, asset_id=batch.asset_id,
                                             stored_rows=len(batch.timestamps_ms),
                                             last_timestamp_ms=asset.last_timestamp_ms)
        finally:
            stream.failed = stream.failed or not reader.done()   # the client left: store nothing more
            reader.cancel()

    async def _read(self, requests, stream: StreamState, pending: asyncio.Queue, slots: asyncio.Semaphore) -> None:
        """Check and queue each batch; then None, or the error that ends the stream."""
        previous: int | None = None
        try:
            async for request in requests:
                batch = self._check(request, previous)
                previous = batch.sequence
                await slots.acquire()   # the stream's own bound: stop reading, let flow control slow the client
                if self._in_flight >= self.limits.total:
                    self.metrics.refused.labels("in_flight_limit").inc()
                    raise ResourceExhausted(f"batch sequence {batch.sequence}: {self._in_flight} batches are "
                                            f"waiting to be stored (limit {self.limits.total}); retry with backoff")
                pending.put_nowait((batch, self._submit(stream, batch)))
            if previous is None:
                raise InvalidArgument(("stream", "carried no batch; send at least one IngestRequest"))
            pending.put_nowait(None)
        except Exception as error:   # noqa: BLE001 - handed to the response side, which raises it in order
            pending.put_nowait(error)

    def _check(self, request: iot_pb2.IngestRequest, previous: int | None) -> TelemetryBatch:
        where = f"batch sequence {request.sequence}: "
        if previous is not None and request.sequence <= previous:
            self.metrics.refused.labels("invalid").inc()
            raise InvalidArgument(("sequence", f"{where}must be greater than the previous batch's {previous}"))
        check_asset_id(request.asset_id, where=where)
        try:
            asset = self.store.asset(request.asset_id)
        except UnknownAsset:
            self.metrics.refused.labels("unknown_asset").inc()
            raise NotFound(f"{where}asset {request.asset_id!r} is not registered; call RegisterAsset first") from None
        try:
            return check_batch(request, asset, self.limits.max_rows_per_batch)
        except InvalidArgument:
            self.metrics.refused.labels("invalid").inc()
            raise

    def _submit(self, stream: StreamState, batch: TelemetryBatch) -> asyncio.Future:
        self._in_flight += 1
        self.metrics.in_flight.inc()
        commit = self.writer.submit(stream, batch.asset_id, batch.timestamps_ms, batch.values)
        commit.add_done_callback(self._landed)
        return commit

    def _landed(self, commit: asyncio.Future) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.dec()
        if not commit.cancelled():
            commit.exception()   # retrieved: a stream that ended early never awaits its later commits

    async def _committed(self, batch: TelemetryBatch, commit: asyncio.Future) -> StoredAsset:
        try:
            asset = await commit
        except NotAfterStored as error:
            self.metrics.refused.labels("not_after_stored").inc()
            raise InvalidArgument(("timestamps_ms[0]", f"batch sequence {batch.sequence}: row 0's timestamp "
                                                       f"{batch.timestamps_ms[0]} is not after the asset's last "
                                                       f"stored timestamp {error.last_timestamp_ms}")) from None
        if asset is None:   # skipped: only after a refused batch, whose error this stream raised first
            raise RuntimeError("batch skipped after a refused one")
        return asset
