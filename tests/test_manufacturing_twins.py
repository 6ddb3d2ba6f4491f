"""The twin store (apps/twins.py): revisions, the append-only history, reported vs desired properties,
concurrent writers, durability across kill -9, and SQL that PostgreSQL accepts as well as SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from apps import twins as twin_module
from apps.manufacturing import pictures, workorders
from apps.twins import InvalidPatch, RevisionConflict, TwinExists, TwinNotFound, TwinStore, open_database
from tests.support import ROOT


@pytest.fixture
def store(tmp_path) -> TwinStore:
    store = TwinStore(open_database(f"sqlite:///{tmp_path / 'twins.sqlite3'}"))
    store.create_schema()
    return store


def test_each_change_is_one_revision_and_one_event(store):
    twin = store.create("pump-1", "modalmesh:centrifugal-pump:1", {"assetType": "centrifugal-pump"})
    assert twin.revision == 1
    twin = store.report("pump-1", "health", {"index": 0.9})
    twin = store.report("pump-1", "health", {"index": 0.8, "basis": "estimate"})
    assert twin.revision == 3 and twin.reported("health") == {"index": 0.8, "basis": "estimate"}
    assert store.get("pump-1") == twin
    assert [e.revision for e in store.history("pump-1")] == [1, 2, 3]
    assert [e.kind for e in store.history("pump-1")] == ["created", "reported", "reported"]
    assert store.count_events("pump-1") == 3


def test_merge_patch_removes_keys_with_null_and_keeps_the_rest(store):
    store.create("pump-1", "d", {"assetType": "pump", "site": "hall 2"})
    store.report("pump-1", "remainingLife", {"cycles": 50.0, "lowerCycles": 30.0})
    twin = store.modify("pump-1", {"attributes": {"site": None},
                                   "features": {"remainingLife": {"properties": {"lowerCycles": None}}}})
    assert twin.attributes == {"assetType": "pump"}
    assert twin.reported("remainingLife") == {"cycles": 50.0}
    twin = store.modify("pump-1", {"features": {"remainingLife": None}})
    assert "remainingLife" not in twin.features


def test_desired_and_reported_properties_are_apart(store):
    store.create("pump-1", "d")
    store.desire("pump-1", "maintenance", {"windowStartMs": 1000, "windowEndMs": 2000})
    twin = store.report("pump-1", "maintenance", {"windowStartMs": 1000})
    assert twin.desired("maintenance") == {"windowStartMs": 1000, "windowEndMs": 2000}
    assert twin.reported("maintenance") == {"windowStartMs": 1000}
    assert twin.pending("maintenance") == {"windowEndMs": 2000}


def test_history_by_revision_and_time_and_state_at_a_revision(store):
    store.create("pump-1", "d")
    stamps = []
    for cycles in (300.0, 200.0, 100.0):
        time.sleep(0.01)
        stamps.append(store.report("pump-1", "remainingLife", {"cycles": cycles}).modified_ms)
    assert [e.revision for e in store.history("pump-1", from_revision=2, to_revision=3)] == [2, 3]
    assert [e.revision for e in store.history("pump-1", since_ms=stamps[1])] == [3, 4]
    assert [e.revision for e in store.history("pump-1", until_ms=stamps[0])] == [1, 2]
    assert [e.revision for e in store.history("pump-1", newest_first=True, limit=2)] == [4, 3]
    assert store.state_at("pump-1", revision=3).reported("remainingLife") == {"cycles": 200.0}
    assert store.state_at("pump-1", at_ms=stamps[0]).reported("remainingLife") == {"cycles": 300.0}
    assert store.state_at("pump-1", revision=4).features == store.get("pump-1").features
    with pytest.raises(TwinNotFound):
        store.state_at("pump-1", revision=9)


def test_errors_leave_nothing_behind(store):
    store.create("pump-1", "d")
    with pytest.raises(TwinExists):
        store.create("pump-1", "d")
    with pytest.raises(TwinNotFound):
        store.report("pump-2", "health", {"index": 1.0})
    for bad in ({"features": {"health": {"properties": {"index": float("nan")}}}},
                {"features": {"health": {"reported": {}}}}, {"revision": 5}, {}, {"attributes": "text"}):
        with pytest.raises(InvalidPatch):
            store.modify("pump-1", bad)
    with pytest.raises(RevisionConflict):
        store.modify("pump-1", {"attributes": {"a": 1}}, expected_revision=7)
    assert store.get("pump-1").revision == 1 and store.count_events("pump-1") == 1


def test_concurrent_writers_lose_no_change(store):
    store.create("pump-1", "d")
    writers, changes = 4, 40

    def write(writer: int):
        for i in range(changes):
            store.report("pump-1", f"writer{writer}", {"count": i + 1})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    twin = store.get("pump-1")
    assert twin.revision == 1 + writers * changes
    assert all(twin.reported(f"writer{w}") == {"count": changes} for w in range(writers))
    assert [e.revision for e in store.history("pump-1", limit=10_000)] == list(range(1, twin.revision + 1))


def test_ensure_creates_once(store):
    first = store.ensure("pump-1", "d", {"assetType": "pump"})
    again = store.ensure("pump-1", "d", {"assetType": "other"})
    assert first == again and again.attributes == {"assetType": "pump"}


def test_sqlite_runs_in_wal_mode_with_full_sync(store):
    with twin_module.reading(store.engine) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2   # FULL


WRITER = textwrap.dedent("""
    import sys, time
    from apps.twins import TwinStore, open_database
    store = TwinStore(open_database(sys.argv[1]))
    store.create_schema()
    store.ensure("pump-1", "d")
    while True:
        twin = store.report("pump-1", "counter", {"at": time.time()})
        print(twin.revision, flush=True)   # acknowledged: modify() returned
""")


def test_kill_9_loses_no_acknowledged_change(tmp_path):
    """A writer prints each revision once modify() returned; kill -9 it mid-write, then count."""
    url = f"sqlite:///{tmp_path / 'twins.sqlite3'}"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    acknowledged = 0
    try:
        while acknowledged < 150:
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            acknowledged = int(line)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    store = TwinStore(open_database(url))
    twin = store.get("pump-1")
    assert twin.revision >= acknowledged
    assert store.count_events("pump-1") == twin.revision   # every revision has its event, no more, no less
    assert store.state_at("pump-1", revision=twin.revision).features == twin.features


def test_the_schema_and_statements_compile_for_postgresql():
    dialect = postgresql.dialect()
    for metadata in (twin_module.metadata, workorders.metadata, pictures.metadata):
        for table in metadata.sorted_tables:
            ddl = str(CreateTable(table).compile(dialect=dialect))
            assert "JSON" in ddl or "BYTEA" in ddl or "INTEGER" in ddl or "BIGINT" in ddl
            for index in table.indexes:
                str(CreateIndex(index).compile(dialect=dialect))
    partial = str(CreateIndex(next(iter(workorders.work_orders.indexes))).compile(dialect=dialect))
    assert "WHERE" in partial and "UNIQUE" in partial
    locked = sa.select(twin_module.twins).where(twin_module.twins.c.twin_id == "x").with_for_update()
    assert "FOR UPDATE" in str(locked.compile(dialect=dialect))


@pytest.mark.slow
def test_the_same_store_runs_on_postgresql(postgres_url):
    store = TwinStore(open_database(postgres_url))
    store.create_schema()
    workorders.WorkOrderBook(store.engine).create_schema()
    store.create("pump-1", "d", {"assetType": "pump"})
    threads = [threading.Thread(target=lambda: [store.report("pump-1", "h", {"i": i}) for i in range(20)])
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("pump-1").revision == 61 and store.count_events("pump-1") == 61
    assert store.state_at("pump-1", revision=2).reported("h") == {"i": 0}
    book = workorders.WorkOrderBook(store.engine)
    order, created = book.open("pump-1", workorders.ANOMALY, {})
    assert created and not book.open("pump-1", workorders.ANOMALY, {})[1]
    store.engine.dispose()
