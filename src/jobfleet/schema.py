"""The ledger's tables, its engine settings and ``db init`` (create or upgrade, idempotent).

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: a write never fails half-way because another process wrote first.
``postgresql://`` URLs use the psycopg (3) driver.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import make_url

from jobfleet.errors import UsageError
from jobfleet.jobrow import STATUSES, TERMINAL, utcnow
from jobfleet.ledger_sql import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_SQL,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_PRAGMAS,
    check_version,
)

__all__ = [
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATUSES",
    "TERMINAL",
    "current_version",
    "init_db",
    "jobs",
    "make_engine",
    "metadata",
    "queue_modes",
    "require_schema",
    "schema_version",
    "utcnow",
]

metadata = MetaData()

jobs = Table(
    "jobfleet_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("queue", String(128), nullable=False),
    Column("func", String(512), nullable=False),
    Column("args", Text, nullable=False, default="[]"),
    Column("kwargs", Text, nullable=False, default="{}"),
    Column("status", String(16), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("progress", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("worker", String(255)),
    Column("heartbeat_at", DateTime),
    Column("error", Text),
    Column("error_kind", String(64)),
    Column("created_at", DateTime, nullable=False),
    Column("first_started_at", DateTime),
    Column("last_started_at", DateTime),
    Column("finished_at", DateTime),
    Column("run_after", DateTime),
    Column("dispatched", Boolean, nullable=False, default=False),
    Index("ix_jobfleet_jobs_claim", "status", "mode", "queue", "created_at"),
    Index("ix_jobfleet_jobs_heartbeat", "status", "heartbeat_at"),
    Index("ix_jobfleet_jobs_finished", "status", "finished_at"),
)
"""One row per job. Every change of ``status`` goes through :mod:`jobfleet.ledger`."""

queue_modes = Table(
    "jobfleet_queue_modes",
    metadata,
    Column("queue", String(128), primary_key=True),
    Column("mode", String(16), nullable=False),
    Column("target", String(16)),
    Column("updated_at", DateTime, nullable=False),
)
"""The stored dispatch mode of each queue (v2); see :mod:`jobfleet.modes`."""

schema_version = Table(
    "jobfleet_schema",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime, nullable=False),
)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with this project's settings; safe across ``fork()``."""
    parsed = make_url(url)
    engine: Engine
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername in ("postgresql", "postgresql+psycopg"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        else:
            raise UsageError(
                f"unsupported PostgreSQL driver {parsed.drivername!r}; use postgresql://"
            )
        # No pre-ping (one round trip per transaction): a connection that died with the
        # server is invalidated on its first error, and every caller survives one failure.
        engine = create_engine(
            parsed, pool_size=2, pool_recycle=3600, connect_args={"connect_timeout": 5}
        )
    else:
        raise UsageError(f"unsupported database URL scheme {parsed.drivername!r}")
    ref = weakref.ref(engine)

    def _after_fork() -> None:
        live = ref()
        if live is not None:
            live.dispose(close=False)

    os.register_at_fork(after_in_child=_after_fork)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def current_version(engine: Engine) -> int | None:
    """The recorded schema version, or None when the ledger has never been initialised."""
    if not inspect(engine).has_table(schema_version.name):
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql(SCHEMA_VERSION_SQL).scalar()


def init_db(engine: Engine) -> bool:
    """Create or upgrade the schema; return whether anything changed. Idempotent.

    An upgrade only adds tables (v1 -> v2: ``jobfleet_queue_modes``), so it runs in place.
    """
    found = current_version(engine)
    if found is not None and found > SCHEMA_VERSION:
        raise UsageError(
            f"ledger schema version {found} is newer than this runtime ({SCHEMA_VERSION}); "
            "upgrade jobfleet"
        )
    if found == SCHEMA_VERSION:
        return False
    with engine.begin() as conn:
        metadata.create_all(conn, checkfirst=True)
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=utcnow()))
    return True


def require_schema(engine: Engine) -> None:
    """Fail with one line unless ``db init`` has run against this ledger."""
    check_version(current_version(engine))
