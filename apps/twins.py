"""Digital twins: the common core of Eclipse Ditto and Azure Digital Twins, for every app.

A twin has an id, a definition (its model, e.g. "modalmesh:centrifugal-pump:1"), static
attributes, and features; each feature has reported ``properties`` (what the thing says it is)
and ``desiredProperties`` (what someone wants it to be). Every change is a JSON merge patch
(RFC 7396: a null removes a key) on ``{"attributes": ..., "features": ...}``; it raises the
twin's revision by one and appends one event to the twin's log, in the same transaction. The log
is append-only, so a twin's state at any revision or time is its patches replayed.

SQLAlchemy Core only, so the same statements run on SQLite (the embedded default) and
PostgreSQL (by URL). On SQLite the database is in WAL mode with synchronous=FULL: a change is
on disk before ``modify`` returns, so an acknowledged change survives a crash or a kill -9.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from services.runtime.database import is_sqlite, open_engine

metadata = sa.MetaData()

twins = sa.Table(
    "twins", metadata,
    sa.Column("twin_id", sa.String(128), primary_key=True),
    sa.Column("definition", sa.String(256), nullable=False),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("modified_ms", sa.BigInteger, nullable=False),
)

twin_events = sa.Table(
    "twin_events", metadata,
    sa.Column("twin_id", sa.String(128), sa.ForeignKey("twins.twin_id"), primary_key=True),
    sa.Column("revision", sa.BigInteger, primary_key=True),
    sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
    # What the change was, for people reading the history: "created", "reported", "maintenance" ...
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("patch", sa.JSON, nullable=False),
    sa.Index("twin_events_by_time", "twin_id", "timestamp_ms"),
)

READ_ONLY = "modalmesh_read_only"   # execution option of connections that only read

PATCH_KEYS = {"attributes", "features"}
FEATURE_KEYS = {"properties", "desiredProperties"}


class TwinError(Exception):
    pass


class TwinNotFound(TwinError, LookupError):
    pass


class TwinExists(TwinError):
    pass


class RevisionConflict(TwinError):
    """The twin moved on since the revision the caller based its change on."""


class InvalidPatch(TwinError, ValueError):
    pass


@dataclass(frozen=True)
class Twin:
    twin_id: str
    definition: str
    attributes: dict[str, Any]
    features: dict[str, dict[str, Any]]
    revision: int
    created_ms: int
    modified_ms: int

    def reported(self, feature: str) -> dict[str, Any]:
        return self.features.get(feature, {}).get("properties", {})

    def desired(self, feature: str) -> dict[str, Any]:
        return self.features.get(feature, {}).get("desiredProperties", {})

    def pending(self, feature: str) -> dict[str, Any]:
        """Desired values the thing has not reported yet (Azure Digital Twins' desired vs reported)."""
        reported = self.reported(feature)
        return {k: v for k, v in self.desired(feature).items() if reported.get(k) != v}

    def as_dict(self) -> dict[str, Any]:
        return {"twinId": self.twin_id, "definition": self.definition, "attributes": self.attributes,
                "features": self.features, "revision": self.revision, "created_ms": self.created_ms,
                "modified_ms": self.modified_ms}


@dataclass(frozen=True)
class TwinEvent:
    twin_id: str
    revision: int
    timestamp_ms: int
    kind: str
    patch: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"twinId": self.twin_id, "revision": self.revision, "timestamp_ms": self.timestamp_ms,
                "kind": self.kind, "patch": self.patch}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_patch(patch: Any) -> dict[str, Any]:
    """The patch as plain JSON, or InvalidPatch saying what is wrong with it."""
    if not isinstance(patch, dict) or not patch:
        raise InvalidPatch("a patch is a non-empty object")
    unknown = set(patch) - PATCH_KEYS
    if unknown:
        raise InvalidPatch(f"unknown top-level key(s) {sorted(unknown)}; a patch changes {sorted(PATCH_KEYS)}")
    features = patch.get("features") or {}
    if not isinstance(features, dict) or not isinstance(patch.get("attributes") or {}, dict):
        raise InvalidPatch("attributes and features are objects")
    for name, feature in features.items():
        if feature is not None and (not isinstance(feature, dict) or set(feature) - FEATURE_KEYS):
            raise InvalidPatch(f"feature {name!r} holds only {sorted(FEATURE_KEYS)}")
    try:   # the database stores JSON: no NaN, no infinity, nothing json cannot write
        return json.loads(json.dumps(patch, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidPatch(f"not JSON: {e}") from None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def open_database(url: str) -> Engine:
    """An engine for ``url`` (services/runtime/database.py); on SQLite, writers also queue for the lock."""
    engine = open_engine(url)
    if is_sqlite(url):
        _serialize_sqlite_writers(engine)
    return engine


def _serialize_sqlite_writers(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None   # SQLAlchemy's "begin" below opens transactions
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection):
        # A writer takes the write lock up front (IMMEDIATE): two writers queue instead of one
        # failing when it upgrades a read lock (PostgreSQL gets the same from SELECT ... FOR
        # UPDATE). Readers read a WAL snapshot and never wait for writers.
        reading = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


def reading(engine: Engine) -> sa.Connection:
    """A connection for reads only: on SQLite it reads a snapshot without taking the write lock."""
    return engine.connect().execution_options(**{READ_ONLY: True})


class TwinStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def create(self, twin_id: str, definition: str, attributes: dict | None = None,
               features: dict | None = None) -> Twin:
        document = check_patch({"attributes": attributes or {}, "features": features or {}})
        at = now_ms()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(twins.c.twin_id).where(twins.c.twin_id == twin_id)).first():
                raise TwinExists(twin_id)
            conn.execute(twins.insert().values(twin_id=twin_id, definition=definition, revision=1,
                                               created_ms=at, modified_ms=at, **document))
            conn.execute(twin_events.insert().values(twin_id=twin_id, revision=1, timestamp_ms=at,
                                                     kind="created", patch=document))
        return Twin(twin_id, definition, document["attributes"], document["features"], 1, at, at)

    def ensure(self, twin_id: str, definition: str, attributes: dict | None = None) -> Twin:
        """The twin, created with these attributes if it does not exist yet."""
        try:
            return self.get(twin_id)
        except TwinNotFound:
            pass
        try:
            return self.create(twin_id, definition, attributes)
        except (TwinExists, sa.exc.IntegrityError):   # created by another writer meanwhile
            return self.get(twin_id)

    def get(self, twin_id: str) -> Twin:
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(twins).where(twins.c.twin_id == twin_id)).first()
        if row is None:
            raise TwinNotFound(twin_id)
        return _twin(row)

    def list(self, definition: str | None = None) -> list[Twin]:
        query = sa.select(twins).order_by(twins.c.twin_id)
        if definition is not None:
            query = query.where(twins.c.definition == definition)
        with reading(self.engine) as conn:
            return [_twin(row) for row in conn.execute(query)]

    def modify(self, twin_id: str, patch: dict, *, kind: str = "modified",
               expected_revision: int | None = None) -> Twin:
        """Apply a merge patch as one new revision; returns the twin once the change is durable."""
        patch = check_patch(patch)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(twins).where(twins.c.twin_id == twin_id).with_for_update()).first()
            if row is None:
                raise TwinNotFound(twin_id)
            if expected_revision is not None and row.revision != expected_revision:
                raise RevisionConflict(f"{twin_id} is at revision {row.revision}, not {expected_revision}")
            document = merge_patch({"attributes": row.attributes, "features": row.features}, patch)
            revision, at = row.revision + 1, max(now_ms(), row.modified_ms)
            updated = conn.execute(twins.update()
                                   .where(twins.c.twin_id == twin_id, twins.c.revision == row.revision)
                                   .values(revision=revision, modified_ms=at, attributes=document["attributes"],
                                           features=document.get("features", {})))
            if updated.rowcount != 1:   # only when the database ignored the row lock
                raise RevisionConflict(f"{twin_id} changed during the update")
            conn.execute(twin_events.insert().values(twin_id=twin_id, revision=revision, timestamp_ms=at,
                                                     kind=kind, patch=patch))
        return Twin(twin_id, row.definition, document["attributes"], document.get("features", {}), revision,
                    row.created_ms, at)

    def report(self, twin_id: str, feature: str, properties: dict, *, kind: str = "reported") -> Twin:
        return self.modify(twin_id, {"features": {feature: {"properties": properties}}}, kind=kind)

    def desire(self, twin_id: str, feature: str, properties: dict, *, kind: str = "desired") -> Twin:
        return self.modify(twin_id, {"features": {feature: {"desiredProperties": properties}}}, kind=kind)

    def history(self, twin_id: str, *, from_revision: int | None = None, to_revision: int | None = None,
                since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000,
                newest_first: bool = False) -> list[TwinEvent]:
        """Events in a revision and/or time range (both inclusive), at most ``limit`` of them."""
        c = twin_events.c
        query = sa.select(twin_events).where(c.twin_id == twin_id)
        if from_revision is not None:
            query = query.where(c.revision >= from_revision)
        if to_revision is not None:
            query = query.where(c.revision <= to_revision)
        if since_ms is not None:
            query = query.where(c.timestamp_ms >= since_ms)
        if until_ms is not None:
            query = query.where(c.timestamp_ms <= until_ms)
        query = query.order_by(c.revision.desc() if newest_first else c.revision).limit(limit)
        with reading(self.engine) as conn:
            return [TwinEvent(r.twin_id, r.revision, r.timestamp_ms, r.kind, r.patch) for r in conn.execute(query)]

    def count_events(self, twin_id: str) -> int:
        with reading(self.engine) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(twin_events)
                                .where(twin_events.c.twin_id == twin_id)).scalar_one()

    def state_at(self, twin_id: str, *, revision: int | None = None, at_ms: int | None = None) -> Twin:
        """The twin as it was at ``revision``, or at time ``at_ms`` (its last revision by then)."""
        head = self.get(twin_id)
        events = self.history(twin_id, to_revision=revision, until_ms=at_ms, limit=2**62)
        if not events or (revision is not None and events[-1].revision != revision):
            raise TwinNotFound(f"{twin_id} has no revision {revision if revision is not None else f'at {at_ms}'}")
        document: dict[str, Any] = {}
        for event in events:
            document = merge_patch(document, event.patch)
        return Twin(twin_id, head.definition, document.get("attributes", {}), document.get("features", {}),
                    events[-1].revision, head.created_ms, events[-1].timestamp_ms)


def _twin(row) -> Twin:
    return Twin(row.twin_id, row.definition, row.attributes, row.features, row.revision, row.created_ms,
                row.modified_ms)


def finite(value: float | None, digits: int = 4) -> float | None:
    """A float fit for a twin property: rounded, and None instead of NaN or infinity."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)
