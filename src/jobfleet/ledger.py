"""The job ledger: rows, and every status transition as one conditional UPDATE.

Each transition names the state it expects (status, owner, attempt) in its WHERE clause
and reports whether it won, so two processes can never both own a job, and a terminal row
changes only through :meth:`Ledger.operator_retry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Executable,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine

from jobfleet import ledger_sql
from jobfleet.errors import JobfleetError, UsageError
from jobfleet.jobrow import ERROR_MAX_CHARS, SHOW_KEYS, JobRow, cut, iso
from jobfleet.ledger_sql import RowLedger, Statement
from jobfleet.schema import TERMINAL, jobs, make_engine, utcnow

__all__ = ["ERROR_MAX_CHARS", "SHOW_KEYS", "JobRow", "Ledger", "UnknownJobError", "cut", "iso"]


class UnknownJobError(JobfleetError):
    """No row with that id."""

    code = "unknown_job"


class Ledger(RowLedger):
    """Reads and conditional writes against the ledger tables (SQLAlchemy); a job's
    transitions run the statements of :mod:`jobfleet.ledger_sql` (:class:`RowLedger`)."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = (
            make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        # A transition is one statement: on PostgreSQL it runs in autocommit (one round
        # trip instead of BEGIN, UPDATE, COMMIT). SQLite keeps BEGIN IMMEDIATE.
        self._single: Engine | None = None
        if self.engine.dialect.name == "postgresql":
            self._single = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    # -- reads -----------------------------------------------------------------
    def ping(self) -> None:
        """Raise unless the database answers."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def get(self, job_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else JobRow.from_mapping(row._mapping)

    def require(self, job_id: str) -> JobRow:
        row = self.get(job_id)
        if row is None:
            raise UnknownJobError(f"no job {job_id} in the ledger; check the id and --config")
        return row

    def select_rows(self, *where: ColumnElement[bool], limit: int = 1000) -> list[JobRow]:
        query = select(jobs).where(*where).order_by(jobs.c.created_at).limit(limit)
        with self.engine.connect() as conn:
            return [JobRow.from_mapping(r._mapping) for r in conn.execute(query)]

    def counts(self) -> dict[str, dict[str, int]]:
        query = select(jobs.c.queue, jobs.c.status, func.count()).group_by(
            jobs.c.queue, jobs.c.status
        )
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for queue, status, count in conn.execute(query):
                out.setdefault(queue, {})[status] = int(count)
        return out

    def oldest_pending(self) -> datetime | None:
        query = select(func.min(jobs.c.created_at)).where(jobs.c.status == "pending")
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(query).scalar()
        return value

    def stale_running(self, older_than: float) -> list[JobRow]:
        """Running rows whose heartbeat is older than ``older_than`` seconds (or missing)."""
        cutoff = utcnow() - timedelta(seconds=older_than)
        return self.select_rows(
            jobs.c.status == "running",
            (jobs.c.heartbeat_at < cutoff) | jobs.c.heartbeat_at.is_(None),
        )

    # -- creation --------------------------------------------------------------
    def insert(
        self,
        job_id: str,
        queue: str,
        func_name: str,
        args_json: str,
        kwargs_json: str,
        mode: str,
        max_attempts: int,
    ) -> JobRow:
        values = {
            "id": job_id,
            "queue": queue,
            "func": func_name,
            "args": args_json,
            "kwargs": kwargs_json,
            "status": "pending",
            "mode": mode,
            "progress": 0.0,
            "attempts": 0,
            "max_attempts": max_attempts,
            "created_at": utcnow(),
            "dispatched": False,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(jobs).values(**values))
        except IntegrityError:
            raise UsageError(f"a job with id {job_id} already exists") from None
        return self.require(job_id)

    # -- transitions -------------------------------------------------------------
    def _update(self, where: Sequence[ColumnElement[bool]], **values: Any) -> JobRow | None:
        """One conditional UPDATE; the new row when it won, else None."""
        stmt = update(jobs).where(and_(*where)).values(**values).returning(*jobs.c)
        with self._transition() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else JobRow.from_mapping(row._mapping)

    def claim_send(self, row: JobRow) -> bool:
        """Claim the right to (re)send a pending row: only one of two reapers wins.

        The UPDATE stamps ``run_after`` with now, so a second reaper that read the same
        row finds it changed and backs off.
        """
        same_after = (
            jobs.c.run_after.is_(None)
            if row.run_after is None
            else jobs.c.run_after == row.run_after
        )
        where = [
            jobs.c.id == row.id,
            jobs.c.status == "pending",
            jobs.c.attempts == row.attempts,
            jobs.c.dispatched == row.dispatched,
            same_after,
        ]
        return self._update(where, dispatched=False, run_after=utcnow()) is not None

    def claim_next(self, queues: Iterable[str], worker: str) -> JobRow | None:
        """Claim the oldest due pending ``db``-mode row of ``queues`` (poller).

        PostgreSQL locks the candidate with ``FOR UPDATE SKIP LOCKED``, so pollers never
        wait on each other; SQLite serialises writers, and the UPDATE re-checks the status.
        """
        now = utcnow()
        candidate = (
            select(jobs.c.id)
            .where(
                jobs.c.status == "pending",
                jobs.c.mode == "db",
                jobs.c.queue.in_(list(queues)),
                (jobs.c.run_after.is_(None)) | (jobs.c.run_after <= now),
            )
            .order_by(jobs.c.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        where = [jobs.c.id == candidate, jobs.c.status == "pending"]
        return self._update(where, **_running_values(worker, now))

    # -- running the statements of jobfleet.ledger_sql ---------------------------------
    def _transition(self) -> AbstractContextManager[Connection]:
        """A connection for one single-statement transition (autocommit on PostgreSQL)."""
        if self._single is not None:
            return self._single.connect()
        return self.engine.begin()

    def _row(self, statement: Statement) -> JobRow | None:
        """Run one of :mod:`jobfleet.ledger_sql`'s statements; the row it returned."""
        with self._transition() as conn:
            row = conn.execute(_text(statement), statement.params).first()
        return None if row is None else JobRow.from_mapping(row._mapping)

    def _won(self, statement: Statement) -> bool:
        """Run one of :mod:`jobfleet.ledger_sql`'s UPDATEs; whether it changed the row."""
        with self._transition() as conn:
            return bool(conn.execute(_text(statement), statement.params).rowcount == 1)

    def cancel(self, job_id: str) -> JobRow:
        row = self.require(job_id)
        if row.status in TERMINAL:
            raise JobfleetError(f"job {job_id} is already {row.status}; nothing to cancel")
        where = [jobs.c.id == job_id, jobs.c.status == row.status, jobs.c.attempts == row.attempts]
        done = self._update(
            where,
            status="cancelled",
            finished_at=utcnow(),
            error="cancelled by an operator",
            error_kind="cancelled",
        )
        if done is None:
            raise JobfleetError(f"job {job_id} changed while cancelling; try again")
        return done

    def operator_retry(self, job_id: str) -> JobRow:
        """A terminal row back to pending with a fresh attempt budget (explicit operator act)."""
        row = self.require(job_id)
        if row.status not in TERMINAL:
            raise JobfleetError(f"job {job_id} is {row.status}; only a finished job can be retried")
        where = [jobs.c.id == job_id, jobs.c.status == row.status]
        done = self._update(
            where,
            status="pending",
            attempts=0,
            finished_at=None,
            run_after=None,
            heartbeat_at=None,
            dispatched=False,
        )
        if done is None:
            raise JobfleetError(f"job {job_id} changed while retrying; try again")
        return done

    def delete(self, job_id: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(jobs).where(jobs.c.id == job_id)).rowcount)

    def prune(self, older_than: timedelta) -> int:
        cutoff = utcnow() - older_than
        stmt = delete(jobs).where(jobs.c.status.in_(TERMINAL), jobs.c.finished_at < cutoff)
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)


def _running_values(worker: str, now: datetime) -> dict[str, Any]:
    return {
        "status": "running",
        "worker": worker,
        "attempts": jobs.c.attempts + 1,
        "heartbeat_at": now,
        "last_started_at": now,
        "first_started_at": func.coalesce(jobs.c.first_started_at, now),
        "run_after": None,
    }


_PARAM_TYPES: dict[str, TypeEngine[Any]] = {
    **{name: DateTime() for name in ledger_sql.TIME_PARAMS},
    **{name: Boolean() for name in ledger_sql.BOOL_PARAMS},
}


@cache
def _clause(sql: str, returns_row: bool) -> Executable:
    """``text()`` of a shared statement, typed as the table's columns, built once per text."""
    names = [n for n in ledger_sql.param_names(sql) if n in _PARAM_TYPES]
    clause = text(sql).bindparams(*(bindparam(n, type_=_PARAM_TYPES[n]) for n in names))
    if returns_row:
        return clause.columns(*(jobs.c[name] for name in ledger_sql.COLUMNS))
    return clause


def _text(statement: Statement) -> Executable:
    return _clause(statement.sql, statement.returns_row)
