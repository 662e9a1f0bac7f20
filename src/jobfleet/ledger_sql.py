"""The SQL of a job's transitions: the one source both ledgers run.

A worker writes the same few statements for every job (claim, heartbeat, progress,
complete, fail, retry later, release). They are written here once, as SQL text with
``:name`` parameters that SQLite and PostgreSQL both accept, together with the values
they bind. Two executors run them:

* :class:`jobfleet.ledger.Ledger` (SQLAlchemy; the CLI, the reaper and the poller), as
  ``text()`` with typed parameters, so SQLAlchemy stores and reads its usual formats;
* :class:`jobfleet.worker_ledger.WorkerLedger` (the RQ worker process), on a plain
  connection (:mod:`sqlite3`, or libpq through :mod:`jobfleet.libpq`), so a worker
  imports neither SQLAlchemy nor psycopg.

Each statement names the state it expects in its WHERE clause, so it either wins or
changes nothing (see :mod:`jobfleet.ledger`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from jobfleet.errors import UsageError
from jobfleet.jobrow import JobRow, cut, utcnow

SCHEMA_VERSION = 2
"""The ledger schema this runtime writes; ``db init`` records it (v2 adds queue modes)."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the lock before giving up."""

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
)
"""Run on every new SQLite connection, by either ledger."""

TABLE = "jobfleet_jobs"
COLUMNS = tuple(f.name for f in fields(JobRow))
"""The columns of :data:`TABLE`, in :class:`JobRow` order (a test pins them to the schema)."""

TIME_PARAMS = frozenset({"b_now", "b_run_after", "b_stale"})
"""Parameters holding a naive UTC time (stored as SQLAlchemy's ``DateTime`` stores it)."""

BOOL_PARAMS = frozenset({"b_dispatched"})
"""Parameters holding a boolean."""

_COLS = ", ".join(COLUMNS)
_OWNED = "id = :b_id AND status = 'running' AND worker = :b_worker AND attempts = :b_attempts"

CLAIM_SQL = (
    f"UPDATE {TABLE} SET status = 'running', worker = :b_worker, attempts = attempts + 1, "
    "heartbeat_at = :b_now, last_started_at = :b_now, "
    "first_started_at = COALESCE(first_started_at, :b_now), run_after = NULL "
    f"WHERE id = :b_id AND status = 'pending' RETURNING {_COLS}"
)
GET_SQL = f"SELECT {_COLS} FROM {TABLE} WHERE id = :b_id"
HEARTBEAT_SQL = f"UPDATE {TABLE} SET heartbeat_at = :b_now WHERE {_OWNED}"
PROGRESS_SQL = f"UPDATE {TABLE} SET progress = :b_progress, heartbeat_at = :b_now WHERE {_OWNED}"
COMPLETE_SQL = (
    f"UPDATE {TABLE} SET status = 'completed', progress = 100.0, finished_at = :b_now, "
    f"heartbeat_at = :b_now, error = NULL, error_kind = NULL WHERE {_OWNED}"
)
FAIL_SQL = (
    f"UPDATE {TABLE} SET status = 'failed', finished_at = :b_now, error = :b_error, "
    f"error_kind = :b_error_kind WHERE {_OWNED}"
)
RETRY_LATER_SQL = (
    f"UPDATE {TABLE} SET status = 'pending', error = :b_error, error_kind = :b_error_kind, "
    "heartbeat_at = NULL, dispatched = :b_dispatched, run_after = :b_run_after "
    f"WHERE {_OWNED}"
)
REQUEUE_SQL = (
    f"UPDATE {TABLE} SET status = 'pending', dispatched = :b_dispatched, heartbeat_at = NULL, "
    f"run_after = NULL, error = :b_error, error_kind = :b_error_kind WHERE {_OWNED}"
)
STALE_SQL = " AND (heartbeat_at < :b_stale OR heartbeat_at IS NULL)"
SET_DISPATCHED_SQL = (
    f"UPDATE {TABLE} SET dispatched = :b_dispatched WHERE id = :b_id AND status = 'pending'"
)
SCHEMA_VERSION_SQL = "SELECT version FROM jobfleet_schema ORDER BY version DESC LIMIT 1"

_PARAM = re.compile(r"(?<!:):([a-z_]+)\b")


def param_names(sql: str) -> list[str]:
    """The ``:name`` parameters of ``sql``, each once, in order."""
    return list(dict.fromkeys(_PARAM.findall(sql)))


def numbered(sql: str) -> tuple[str, list[str]]:
    """``:name`` -> ``$N`` (libpq's style): the new text and the names, ``$1`` first; a
    name used twice is the same ``$N``."""
    names = param_names(sql)
    position = {name: f"${n}" for n, name in enumerate(names, start=1)}
    return _PARAM.sub(lambda found: position[found.group(1)], sql), names


@dataclass(frozen=True)
class Statement:
    """One statement and its values; ``returns_row`` when it reads a whole row back."""

    sql: str
    params: dict[str, Any]
    returns_row: bool = False


def claim(job_id: str, worker: str) -> Statement:
    """pending -> running under ``worker``, attempts + 1; returns the new row."""
    return Statement(CLAIM_SQL, {"b_id": job_id, "b_worker": worker, "b_now": utcnow()}, True)


def get(job_id: str) -> Statement:
    return Statement(GET_SQL, {"b_id": job_id}, True)


def _owned(sql: str, row: JobRow, **params: Any) -> Statement:
    params.update(b_id=row.id, b_worker=row.worker, b_attempts=row.attempts)
    return Statement(sql, params)


def heartbeat(row: JobRow) -> Statement:
    return _owned(HEARTBEAT_SQL, row, b_now=utcnow())


def progress(row: JobRow, percent: float) -> Statement:
    return _owned(PROGRESS_SQL, row, b_progress=float(percent), b_now=utcnow())


def complete(row: JobRow) -> Statement:
    return _owned(COMPLETE_SQL, row, b_now=utcnow())


def fail(row: JobRow, error: str, kind: str) -> Statement:
    return _owned(FAIL_SQL, row, b_now=utcnow(), b_error=cut(error), b_error_kind=kind)


def retry_later(row: JobRow, error: str, kind: str, delay: float, dispatched: bool) -> Statement:
    """running -> pending for another attempt after ``delay`` seconds."""
    return _owned(
        RETRY_LATER_SQL,
        row,
        b_error=cut(error),
        b_error_kind=kind,
        b_dispatched=dispatched,
        b_run_after=utcnow() + timedelta(seconds=delay),
    )


def release(row: JobRow, error: str, kind: str, stale_before: datetime | None) -> Statement:
    """A running row whose worker is gone: requeued (attempts left) or failed; returns it.

    ``stale_before`` adds "heartbeat older than this" to the condition (the reaper). A
    requeued row keeps ``first_started_at`` and ``progress`` and is left undispatched.
    """
    params: dict[str, Any] = {"b_error": cut(error), "b_error_kind": kind}
    if row.attempts < row.max_attempts:
        sql = REQUEUE_SQL
        params["b_dispatched"] = False
    else:
        sql = FAIL_SQL
        params["b_now"] = utcnow()
    if stale_before is not None:
        sql += STALE_SQL
        params["b_stale"] = stale_before
    statement = _owned(sql, row, **params)
    return Statement(f"{statement.sql} RETURNING {_COLS}", statement.params, True)


def set_dispatched(job_id: str, dispatched: bool) -> Statement:
    return Statement(SET_DISPATCHED_SQL, {"b_id": job_id, "b_dispatched": dispatched})


def check_version(found: int | None) -> None:
    """Fail with one line unless the recorded schema version is this runtime's."""
    if found is None:
        raise UsageError("the ledger has no schema; run `jobfleet db init` first")
    if found != SCHEMA_VERSION:
        raise UsageError(
            f"ledger schema version {found} does not match this runtime ({SCHEMA_VERSION}); "
            "run `jobfleet db init`"
        )


class RowLedger:
    """A job's transitions, for both ledgers: each runs a statement above through its
    own :meth:`_row` (the row the statement returned) and :meth:`_won` (whether it
    changed one row)."""

    def _row(self, statement: Statement) -> JobRow | None:
        raise NotImplementedError

    def _won(self, statement: Statement) -> bool:
        raise NotImplementedError

    def get(self, job_id: str) -> JobRow | None:
        return self._row(get(job_id))

    def claim(self, job_id: str, worker: str) -> JobRow | None:
        """pending -> running under ``worker``, attempts + 1 (RQ mode: the id is known)."""
        return self._row(claim(job_id, worker))

    def heartbeat(self, row: JobRow) -> bool:
        return self._won(heartbeat(row))

    def set_progress(self, row: JobRow, percent: float) -> bool:
        return self._won(progress(row, percent))

    def complete(self, row: JobRow) -> bool:
        return self._won(complete(row))

    def fail(self, row: JobRow, error: str, kind: str) -> bool:
        return self._won(fail(row, error, kind))

    def retry_later(
        self, row: JobRow, error: str, kind: str, delay: float, dispatched: bool
    ) -> bool:
        """running -> pending for another attempt after ``delay`` seconds."""
        return self._won(retry_later(row, error, kind, delay, dispatched))

    def release(
        self, row: JobRow, error: str, kind: str, stale_before: datetime | None
    ) -> JobRow | None:
        """A running row whose worker is gone: requeue it (attempts left) or fail it.

        ``stale_before`` adds "heartbeat older than this" to the condition (the reaper);
        None means the caller knows the worker is gone (startup cleanup, killed horse).
        Requeueing keeps ``first_started_at`` and ``progress``; the row is left
        undispatched, so the caller (or the next reaper pass) dispatches it.
        """
        return self._row(release(row, error, kind, stale_before))

    def set_dispatched(self, job_id: str, dispatched: bool) -> bool:
        return self._won(set_dispatched(job_id, dispatched))
