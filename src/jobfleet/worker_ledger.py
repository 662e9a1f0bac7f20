"""The RQ worker's ledger: :mod:`jobfleet.ledger_sql`'s statements on a plain DBAPI connection.

A worker makes the same few writes for every job, and SQLAlchemy (about 12 MiB of a
worker's memory, and a layer of work per statement) adds nothing to them; nor does
psycopg (9-11 MiB). So the worker process runs them here, on :mod:`sqlite3` or on libpq
itself (:mod:`jobfleet.libpq`), and imports neither; ``db init``, the CLI, the reaper and
the poller use :class:`~jobfleet.ledger.Ledger`.

The rows on disk are exactly what SQLAlchemy writes and reads: on SQLite a time is the
text ``YYYY-MM-DD HH:MM:SS.ffffff`` (naive UTC) and a boolean is 0 or 1; on PostgreSQL
parameters are typed ``timestamp without time zone`` and ``boolean``, as psycopg types
them. SQLite connections get the same pragmas (WAL, busy timeout) and write under
``BEGIN IMMEDIATE``; PostgreSQL runs each single statement in autocommit.

Connections: a small stack of idle ones, shared by the worker's threads (one at a time
each); a connection that failed is closed, not reused, so the next statement reconnects.
A server that does not answer raises :class:`~jobfleet.errors.UnavailableError`. After
``fork()`` the child forgets the parent's connections without closing them.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from jobfleet import ledger_sql, libpq
from jobfleet.errors import UnavailableError, UsageError, first_line, redact
from jobfleet.jobrow import JobRow
from jobfleet.ledger_sql import COLUMNS, RowLedger, Statement

PG_CONNECT_TIMEOUT = 5
"""Seconds to wait for a PostgreSQL connection (as the CLI's engine)."""

SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLAlchemy's ``DateTime`` stores a time on SQLite (always with microseconds)."""

_TIME_COLUMNS = frozenset(
    {"heartbeat_at", "created_at", "first_started_at", "last_started_at", "finished_at"}
    | {"run_after"}
)


class WorkerLedger(RowLedger):
    """The transitions of :class:`~jobfleet.ledger_sql.RowLedger`, without SQLAlchemy."""

    def __init__(self, url: str) -> None:
        self.url = url
        scheme = urlsplit(url).scheme
        self.sqlite = scheme.split("+", 1)[0] == "sqlite"
        if self.sqlite:
            self._path = sqlite_path(url)
        elif scheme in ("postgresql", "postgresql+psycopg"):
            self._conninfo = "postgresql" + url[len(scheme) :]
        else:
            raise UsageError(f"unsupported database URL scheme {scheme!r}")
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._forked: list[Any] = []  # the parent's, kept (unused) by a forked child
        ref = weakref.ref(self)

        def _after_fork() -> None:
            live = ref()
            if live is not None:
                live._forked.extend(live._idle)
                live._idle = []
                live._lock = threading.Lock()

        os.register_at_fork(after_in_child=_after_fork)

    # -- connections ------------------------------------------------------------------
    def _connect(self) -> Any:
        if self.sqlite:
            import sqlite3

            conn = sqlite3.connect(
                self._path,
                timeout=ledger_sql.SQLITE_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # BEGIN IMMEDIATE is issued here
                check_same_thread=False,  # a connection is used by one thread at a time
            )
            for pragma in ledger_sql.SQLITE_PRAGMAS:
                conn.execute(pragma)
            return conn
        try:
            return libpq.Connection(self._conninfo, connect_timeout=PG_CONNECT_TIMEOUT)
        except libpq.MissingLibraryError as exc:
            raise UsageError(str(exc)) from exc

    def _errors(self) -> tuple[type[Exception], ...]:
        """The driver's "the server does not answer" errors."""
        if self.sqlite:
            import sqlite3

            return (sqlite3.OperationalError, sqlite3.InterfaceError)
        return (libpq.OperationalError,)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """An idle connection (or a new one), returned to the stack unless it failed."""
        unavailable = self._errors()
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
            yield conn
        except unavailable as exc:
            _close(conn)
            raise UnavailableError(f"database unreachable: {redact(first_line(str(exc)))}") from exc
        except BaseException:
            _close(conn)
            raise
        with self._lock:
            self._idle.append(conn)

    def dispose(self) -> None:
        """Close the idle connections (after an outage they point at a dead server)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    def _execute(self, statement: Statement) -> tuple[int, tuple[Any, ...] | None]:
        """Run one statement: (rows changed, the row it returned or None)."""
        params = statement.params
        with self._connection() as conn:
            if not self.sqlite:
                sql, names = _numbered(statement.sql)
                result = conn.execute(sql, [params[name] for name in names])
                return result.rowcount, result.fetchone() if statement.returns_row else None
            params = {k: _sqlite_value(v) for k, v in params.items()}
            if statement.sql.startswith("SELECT"):
                return -1, conn.execute(statement.sql, params).fetchone()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(statement.sql, params)
                row = cursor.fetchone() if statement.returns_row else None
                changed = cursor.rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return changed, row

    def _row(self, statement: Statement) -> JobRow | None:
        _, row = self._execute(statement)
        return None if row is None else self.job_row(row)

    def _won(self, statement: Statement) -> bool:
        changed, _ = self._execute(statement)
        return changed == 1

    def job_row(self, values: tuple[Any, ...]) -> JobRow:
        """A :class:`JobRow` from the driver's values (SQLite: text times, integer booleans)."""
        mapping = dict(zip(COLUMNS, values, strict=True))
        if self.sqlite:
            for name in _TIME_COLUMNS:
                if mapping[name] is not None:
                    mapping[name] = datetime.fromisoformat(mapping[name])
            mapping["dispatched"] = bool(mapping["dispatched"])
        return JobRow.from_mapping(mapping)

    # -- what the worker asks ---------------------------------------------------------
    def ping(self) -> None:
        """Raise :class:`UnavailableError` unless the database answers."""
        with self._connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def require_schema(self) -> None:
        """Fail with one line unless ``db init`` has run against this ledger."""
        with self._connection() as conn:
            try:
                found = conn.execute(ledger_sql.SCHEMA_VERSION_SQL).fetchone()
            except Exception as exc:
                if not _no_table(exc):
                    raise
                found = None
        ledger_sql.check_version(None if found is None else int(found[0]))


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL (as SQLAlchemy)."""
    rest = url.split("://", 1)[1]
    if "?" in rest:
        raise UsageError("the worker takes no query options in a sqlite:// URL")
    if not rest.startswith("/") or rest == "/":
        return ":memory:" if rest in ("", "/") else rest
    return unquote(rest[1:])


_numbered = functools.cache(ledger_sql.numbered)
"""``:name`` -> ``$N``, once per statement text (the worker runs a handful)."""


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime(SQLITE_TIME_FORMAT)
    if isinstance(value, bool):
        return int(value)
    return value


def _no_table(exc: Exception) -> bool:
    """Whether ``exc`` says the schema table does not exist (SQLite or PostgreSQL)."""
    return "no such table" in str(exc) or getattr(exc, "sqlstate", None) == "42P01"


def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # a connection to a dead server may fail to close; it is gone anyway
        return
