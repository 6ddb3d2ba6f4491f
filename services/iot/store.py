"""Telemetry storage on SQLAlchemy Core: SQLite by default, PostgreSQL by URL.

Two tables. ``iot_assets`` holds each registration and a summary of what is stored for it.
``iot_telemetry_chunks`` holds the telemetry itself, apart from the registrations: one row per
ingested batch, its timestamps and values packed as little-endian arrays, indexed by the asset's
running row number and by time. Ingest then costs one INSERT and one UPDATE per batch, whatever
its length; a time range or the latest N rows of an asset is an index range scan over a few chunks.

A batch is stored whole in one transaction or not at all; when batches pile up, the writer commits
several in one transaction (group commit). On SQLite the database runs in WAL mode with
``synchronous=FULL``: a commit returns after the WAL is fsynced, so an acknowledged batch survives
kill -9 of the process and a power cut too (NORMAL would survive only the former). A commit costs
one fsync whatever it holds, so large batches and group commit make it cheap per row.

Several processes may share one database (PostgreSQL, or replicas of the service): the asset row's
``stored_rows`` is the append's precondition (compare-and-set), so a writer that raced another one
reloads the asset and checks the order again instead of storing rows out of order.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from services.iot.asset_types import AssetType
from services.runtime.database import open_engine

TIMESTAMP_DTYPE = np.dtype("<i8")
VALUE_DTYPE = np.dtype("<f4")

metadata = MetaData()

assets_table = Table(
    "iot_assets", metadata,
    Column("asset_id", String(128), primary_key=True),
    Column("asset_type", String(64), nullable=False),
    Column("registered_ms", BigInteger, nullable=False),
    Column("stored_rows", BigInteger, nullable=False),
    Column("first_timestamp_ms", BigInteger, nullable=False),
    Column("last_timestamp_ms", BigInteger, nullable=False),
)

chunks_table = Table(
    "iot_telemetry_chunks", metadata,
    Column("asset_id", String(128), primary_key=True),
    # The asset's running row number of the chunk's first row: latest-N reads select by it.
    Column("first_row", BigInteger, primary_key=True),
    Column("row_count", Integer, nullable=False),
    Column("sensor_count", Integer, nullable=False),
    Column("first_timestamp_ms", BigInteger, nullable=False),
    Column("last_timestamp_ms", BigInteger, nullable=False),
    Column("timestamps_blob", LargeBinary, nullable=False),   # int64 [row_count]
    Column("values_blob", LargeBinary, nullable=False),       # float32 [row_count, sensor_count]
    Index("ix_iot_telemetry_chunks_time", "asset_id", "first_timestamp_ms", unique=True),
)


@dataclass(frozen=True)
class StoredAsset:
    asset_id: str
    asset_type: AssetType
    stored_rows: int = 0
    first_timestamp_ms: int = 0
    last_timestamp_ms: int = 0   # 0 while nothing is stored


@dataclass(frozen=True)
class Telemetry:
    """Rows of one asset, oldest first."""

    timestamps_ms: np.ndarray   # int64 [rows]
    values: np.ndarray          # float32 [rows, sensors]

    def __len__(self) -> int:
        return len(self.timestamps_ms)


class UnknownAsset(LookupError):
    def __init__(self, asset_id: str):
        super().__init__(f"asset {asset_id!r} is not registered")
        self.asset_id = asset_id


class AssetTypeConflict(ValueError):
    def __init__(self, asset: StoredAsset, asked: str):
        super().__init__(f"asset {asset.asset_id!r} is registered as {asset.asset_type.name!r}, not {asked!r}")
        self.asset = asset


class NotAfterStored(ValueError):
    """A batch whose first timestamp is not after the asset's last stored one."""

    def __init__(self, asset: StoredAsset, first_timestamp_ms: int):
        super().__init__(f"timestamp {first_timestamp_ms} is not after the asset's last stored timestamp "
                         f"{asset.last_timestamp_ms}")
        self.last_timestamp_ms = asset.last_timestamp_ms


class AppendRaced(Exception):
    """Another process appended to an asset since this one last read it: reload, then check again."""


class TelemetryStore:
    """Registrations and telemetry of assets. Thread-safe: one writer thread appends while others read."""

    def __init__(self, url: str, asset_types: Mapping[str, AssetType]):
        self.url = url
        self.asset_types = dict(asset_types)
        self.engine = open_engine(url)
        metadata.create_all(self.engine)
        self._lock = threading.Lock()
        # What is stored per asset, kept in step with each commit so ingest checks order without a read.
        self._assets: dict[str, StoredAsset] = {a.asset_id: a for a in self._load_assets()}

    def close(self) -> None:
        self.engine.dispose()

    # -- registrations -----------------------------------------------------------------------

    def register(self, asset_id: str, type_name: str) -> tuple[StoredAsset, bool]:
        """The asset, registered now (True) or already with this type (False)."""
        asset_type = self.asset_types[type_name]
        with self._lock:
            existing = self._assets.get(asset_id) or self._reload(asset_id)
            if existing is None:
                try:
                    with self.engine.begin() as connection:
                        connection.execute(assets_table.insert().values(
                            asset_id=asset_id, asset_type=type_name, registered_ms=int(time.time() * 1000),
                            stored_rows=0, first_timestamp_ms=0, last_timestamp_ms=0))
                except IntegrityError:   # another process registered it just now
                    existing = self._reload(asset_id)
                else:
                    existing = self._assets[asset_id] = StoredAsset(asset_id, asset_type)
                    return existing, True
        if existing.asset_type.name != type_name:
            raise AssetTypeConflict(existing, type_name)
        return existing, False

    def asset(self, asset_id: str) -> StoredAsset:
        """What this process knows of the asset; one that is not known yet is looked up (another process,
        a replica on the same database, may have registered it)."""
        asset = self._assets.get(asset_id) or self._reload(asset_id)
        if asset is None:
            raise UnknownAsset(asset_id)
        return asset

    def assets(self) -> list[StoredAsset]:
        """Every asset, read from the database: other processes may have registered or appended."""
        with self._lock:   # not while a commit of this process moves the cache on
            self._assets.update((a.asset_id, a) for a in self._load_assets())
        return sorted(self._assets.values(), key=lambda a: a.asset_id)

    # -- telemetry ---------------------------------------------------------------------------

    def append(self, asset_id: str, timestamps_ms: np.ndarray, values: np.ndarray) -> StoredAsset:
        """Store one batch in a transaction of its own (see ``appending`` for several)."""
        for _ in range(2):   # a second try after another process appended to the same asset
            try:
                with self.appending() as transaction:
                    return transaction.append(asset_id, timestamps_ms, values)
            except AppendRaced:
                self._reload(asset_id)
        raise RuntimeError(f"asset {asset_id!r} is being appended to by another writer; retry")

    @contextlib.contextmanager
    def appending(self) -> Iterator[AppendTransaction]:
        """One transaction for one or more batches (group commit: one fsync for all of them).

        Each batch is stored whole or not at all: ``append`` checks its order before writing
        anything, so a refused batch leaves the transaction as it was and the others commit.
        AppendRaced (another process appended meanwhile) rolls the whole transaction back.
        """
        with self._lock:   # one transaction at a time per process: the compare-and-set rarely fails
            with self.engine.begin() as connection:
                transaction = AppendTransaction(self, connection)
                yield transaction
                transaction.write()
            self._assets.update(transaction.stored)   # only once committed

    def read_range(self, asset_id: str, start_ms: int, end_ms: int) -> Telemetry:
        """Rows with start_ms <= timestamp <= end_ms."""
        asset = self.asset(asset_id)
        c = chunks_table.c
        with self.engine.connect() as connection:
            # Chunks do not overlap in time: the one holding start_ms is the last to begin at or before it.
            first = connection.execute(
                select(c.first_timestamp_ms).where(c.asset_id == asset_id, c.first_timestamp_ms <= start_ms)
                .order_by(c.first_timestamp_ms.desc()).limit(1)).scalar()
            query = (select(c.timestamps_blob, c.values_blob, c.sensor_count)
                     .where(c.asset_id == asset_id, c.first_timestamp_ms >= (start_ms if first is None else first),
                            c.first_timestamp_ms <= end_ms)
                     .order_by(c.first_timestamp_ms))
            telemetry = _concatenate(connection.execute(query), asset)
        keep = (telemetry.timestamps_ms >= start_ms) & (telemetry.timestamps_ms <= end_ms)
        return Telemetry(telemetry.timestamps_ms[keep], telemetry.values[keep])

    def read_latest(self, asset_id: str, rows: int) -> Telemetry:
        """The asset's last ``rows`` rows (fewer when fewer are stored), oldest first."""
        asset = self.asset(asset_id)
        if rows <= 0 or not asset.stored_rows:
            return _empty(asset)
        wanted_from = max(0, asset.stored_rows - rows)
        c = chunks_table.c
        with self.engine.connect() as connection:
            start_chunk = connection.execute(
                select(c.first_row).where(c.asset_id == asset_id, c.first_row <= wanted_from)
                .order_by(c.first_row.desc()).limit(1)).scalar() or 0
            query = (select(c.timestamps_blob, c.values_blob, c.sensor_count)
                     .where(c.asset_id == asset_id, c.first_row >= start_chunk, c.first_row < asset.stored_rows)
                     .order_by(c.first_row))
            telemetry = _concatenate(connection.execute(query), asset)
        return Telemetry(telemetry.timestamps_ms[-rows:], telemetry.values[-rows:])

    # -- loading -----------------------------------------------------------------------------

    def _load_assets(self) -> Iterable[StoredAsset]:
        with self.engine.connect() as connection:
            for row in connection.execute(select(assets_table)):
                yield self._stored_asset(row)

    def _reload(self, asset_id: str) -> StoredAsset | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(assets_table).where(assets_table.c.asset_id == asset_id)).first()
        if row is None:
            return None
        self._assets[asset_id] = asset = self._stored_asset(row)
        return asset

    def _stored_asset(self, row) -> StoredAsset:
        if row.asset_type not in self.asset_types:
            raise RuntimeError(f"asset {row.asset_id!r} is of type {row.asset_type!r}, which this service does not "
                               f"know (known: {sorted(self.asset_types)})")
        return StoredAsset(row.asset_id, self.asset_types[row.asset_type], row.stored_rows,
                           row.first_timestamp_ms, row.last_timestamp_ms)


class AppendTransaction:
    """Batches appended in one open transaction, written together when it commits: one INSERT of all
    their chunks and one compare-and-set UPDATE per asset, whatever the number of batches."""

    def __init__(self, store: TelemetryStore, connection: Connection):
        self.store = store
        self.connection = connection
        self.stored: dict[str, StoredAsset] = {}   # assets as this transaction leaves them
        self._chunks: list[dict] = []

    def append(self, asset_id: str, timestamps_ms: np.ndarray, values: np.ndarray) -> StoredAsset:
        """Add one batch that starts after the asset's last stored row, else NotAfterStored (nothing added).

        The batch itself was checked (strictly increasing timestamps, finite values of the asset's
        sensor count) before it came here; this checks only what depends on what is stored.
        """
        asset = self.stored.get(asset_id) or self.store.asset(asset_id)
        timestamps_ms = np.ascontiguousarray(timestamps_ms, dtype=TIMESTAMP_DTYPE)
        values = np.ascontiguousarray(values, dtype=VALUE_DTYPE)
        first_ts, last_ts = int(timestamps_ms[0]), int(timestamps_ms[-1])
        if asset.stored_rows and first_ts <= asset.last_timestamp_ms:
            raise NotAfterStored(asset, first_ts)
        self._chunks.append(dict(
            asset_id=asset_id, first_row=asset.stored_rows, row_count=len(timestamps_ms),
            sensor_count=values.shape[1], first_timestamp_ms=first_ts, last_timestamp_ms=last_ts,
            timestamps_blob=timestamps_ms.tobytes(), values_blob=values.tobytes()))
        self.stored[asset_id] = after = replace(
            asset, stored_rows=asset.stored_rows + len(timestamps_ms), last_timestamp_ms=last_ts,
            first_timestamp_ms=asset.first_timestamp_ms if asset.stored_rows else first_ts)
        return after

    def write(self) -> None:
        """Just before the commit: claim each asset at the row count this process knows, then insert."""
        for asset_id, after in self.stored.items():
            before = self.store.asset(asset_id)
            claimed = self.connection.execute(
                update(assets_table)
                .where(assets_table.c.asset_id == asset_id, assets_table.c.stored_rows == before.stored_rows)
                .values(stored_rows=after.stored_rows, first_timestamp_ms=after.first_timestamp_ms,
                        last_timestamp_ms=after.last_timestamp_ms))
            if claimed.rowcount != 1:
                raise AppendRaced(asset_id)
        if self._chunks:
            self.connection.execute(chunks_table.insert(), self._chunks)


def _concatenate(result, asset: StoredAsset) -> Telemetry:
    timestamps, values = [], []
    for timestamps_blob, values_blob, sensor_count in result:
        timestamps.append(np.frombuffer(timestamps_blob, dtype=TIMESTAMP_DTYPE))
        values.append(np.frombuffer(values_blob, dtype=VALUE_DTYPE).reshape(-1, sensor_count))
    if not timestamps:
        return _empty(asset)
    return Telemetry(np.concatenate(timestamps), np.concatenate(values))


def _empty(asset: StoredAsset) -> Telemetry:
    return Telemetry(np.empty(0, TIMESTAMP_DTYPE), np.empty((0, len(asset.asset_type.sensors)), VALUE_DTYPE))
