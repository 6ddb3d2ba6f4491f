"""One way to open a database for the workloads that store things (telemetry, twins): PostgreSQL by
URL as it is, or a SQLite file made durable, so a commit that returned is a write that is never lost."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def open_engine(url: str) -> Engine:
    """An engine for ``url``. A SQLite file (its folder made if missing) runs in WAL mode, so readers
    never block the writer nor it them, with synchronous=FULL, so a commit returns once it is on disk."""
    if not is_sqlite(url):
        return sa.create_engine(url, pool_pre_ping=True)
    database = sa.engine.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # Connections move between a writer thread and readers' threads, one thread at a time.
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _durable(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"
