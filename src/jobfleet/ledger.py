"""The job ledger: rows, and every status transition as one conditional UPDATE.

Each transition names the state it expects (status, owner, attempt) in its WHERE clause
and reports whether it won, so two processes can never both own a job, and a terminal row
changes only through :meth:`Ledger.operator_retry`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from jobfleet.errors import JobfleetError, UsageError
from jobfleet.schema import TERMINAL, jobs, make_engine, utcnow

ERROR_MAX_CHARS = 4000
"""The ledger keeps this much of an error text."""


class UnknownJobError(JobfleetError):
    """No row with that id."""

    code = "unknown_job"


@dataclass(frozen=True)
class JobRow:
    """One ledger row, as read."""

    id: str
    queue: str
    func: str
    args: str
    kwargs: str
    status: str
    mode: str
    progress: float
    attempts: int
    max_attempts: int
    worker: str | None
    heartbeat_at: datetime | None
    error: str | None
    error_kind: str | None
    created_at: datetime
    first_started_at: datetime | None
    last_started_at: datetime | None
    finished_at: datetime | None
    run_after: datetime | None
    dispatched: bool

    @classmethod
    def from_mapping(cls, mapping: Any) -> JobRow:
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})

    def call_args(self) -> tuple[list[Any], dict[str, Any]]:
        """The decoded positional and keyword arguments."""
        args = json.loads(self.args)
        kwargs = json.loads(self.kwargs)
        return list(args), dict(kwargs)

    def send_claimed_after(self, since: datetime) -> bool:
        """Whether this row is unsent with a ``run_after`` later than ``since``: a reaper
        claimed its send then (:meth:`Ledger.claim_send` stamps it) and may still be
        sending it, or it is not due yet. Another reaper leaves it alone until then."""
        return not self.dispatched and self.run_after is not None and self.run_after > since

    def public(self) -> dict[str, Any]:
        """The row as ``jobfleet job show --json`` prints it (times ISO 8601 UTC)."""
        args, kwargs = self.call_args()
        out: dict[str, Any] = {}
        for name in SHOW_KEYS:
            value = kwargs if name == "kwargs" else args if name == "args" else getattr(self, name)
            out[name] = iso(value) if isinstance(value, datetime) else value
        return out


SHOW_KEYS = (
    "id",
    "queue",
    "func",
    "args",
    "kwargs",
    "status",
    "mode",
    "progress",
    "attempts",
    "max_attempts",
    "worker",
    "heartbeat_at",
    "error",
    "error_kind",
    "created_at",
    "first_started_at",
    "last_started_at",
    "finished_at",
    "dispatched",
)
"""The keys of ``job show --json``, pinned by docs/contracts.md."""


def iso(value: datetime | None) -> str | None:
    """Naive UTC -> ISO 8601 with an explicit ``Z``."""
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def cut(text: str | None) -> str | None:
    return None if text is None else text[:ERROR_MAX_CHARS]


class Ledger:
    """Reads and conditional writes against the ledger tables."""

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

    def set_dispatched(self, job_id: str, dispatched: bool) -> bool:
        where = [jobs.c.id == job_id, jobs.c.status == "pending"]
        return self._update(where, dispatched=dispatched) is not None

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

    def claim(self, job_id: str, worker: str) -> JobRow | None:
        """pending -> running under ``worker``, attempts + 1 (RQ mode: the id is known)."""
        now = utcnow()
        params = {"b_id": job_id, "b_worker": worker, "b_now": now}
        with self._transition() as conn:
            row = conn.execute(_CLAIM, params).first()
        return None if row is None else JobRow.from_mapping(row._mapping)

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

    def _owned(self, row: JobRow) -> list[ColumnElement[bool]]:
        return [
            jobs.c.id == row.id,
            jobs.c.status == "running",
            jobs.c.worker == row.worker,
            jobs.c.attempts == row.attempts,
        ]

    def heartbeat(self, row: JobRow) -> bool:
        return self._owned_update(_HEARTBEAT, row, b_now=utcnow())

    def set_progress(self, row: JobRow, percent: float) -> bool:
        return self._owned_update(_PROGRESS, row, b_progress=percent, b_now=utcnow())

    def complete(self, row: JobRow) -> bool:
        return self._owned_update(_COMPLETE, row, b_now=utcnow())

    def fail(self, row: JobRow, error: str, kind: str) -> bool:
        return self._owned_update(_FAIL, row, b_now=utcnow(), b_error=cut(error), b_error_kind=kind)

    def retry_later(
        self, row: JobRow, error: str, kind: str, delay: float, dispatched: bool
    ) -> bool:
        """running -> pending for another attempt after ``delay`` seconds."""
        return self._owned_update(
            _RETRY_LATER,
            row,
            b_error=cut(error),
            b_error_kind=kind,
            b_dispatched=dispatched,
            b_run_after=utcnow() + timedelta(seconds=delay),
        )

    # -- the hot path: prebuilt statements -------------------------------------------
    def _transition(self) -> AbstractContextManager[Connection]:
        """A connection for one single-statement transition (autocommit on PostgreSQL)."""
        if self._single is not None:
            return self._single.connect()
        return self.engine.begin()

    def _owned_update(self, stmt: Executable, row: JobRow, **params: Any) -> bool:
        """One of the prebuilt UPDATEs of a row this worker owns; whether it won."""
        params.update(b_id=row.id, b_worker=row.worker, b_attempts=row.attempts)
        with self._transition() as conn:
            return bool(conn.execute(stmt, params).rowcount == 1)

    def release(
        self, row: JobRow, error: str, kind: str, stale_before: datetime | None
    ) -> JobRow | None:
        """A running row whose worker is gone: requeue it (attempts left) or fail it.

        ``stale_before`` adds "heartbeat older than this" to the condition (the reaper);
        None means the caller knows the worker is gone (startup cleanup, killed horse).
        Requeueing keeps ``first_started_at`` and ``progress``; the row is left
        undispatched, so the caller (or the next reaper pass) dispatches it.
        """
        where = self._owned(row)
        if stale_before is not None:
            where.append((jobs.c.heartbeat_at < stale_before) | jobs.c.heartbeat_at.is_(None))
        if row.attempts < row.max_attempts:
            values: dict[str, Any] = {
                "status": "pending",
                "dispatched": False,
                "heartbeat_at": None,
                "run_after": None,
            }
        else:
            values = {"status": "failed", "finished_at": utcnow()}
        return self._update(where, error=cut(error), error_kind=kind, **values)

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


# The transitions a worker makes for every job are built once: SQLAlchemy then reuses
# their compiled form and cache key, so a job costs two short statements, not two
# statement constructions (which took longer than SQLite's own work). Only ``claim``
# reads the row back (RETURNING); the others need only whether they won (rowcount).
_OWNED = and_(
    jobs.c.id == bindparam("b_id"),
    jobs.c.status == "running",
    jobs.c.worker == bindparam("b_worker"),
    jobs.c.attempts == bindparam("b_attempts"),
)
_CLAIM = (
    update(jobs)
    .where(jobs.c.id == bindparam("b_id"), jobs.c.status == "pending")
    .values(
        status="running",
        worker=bindparam("b_worker"),
        attempts=jobs.c.attempts + 1,
        heartbeat_at=bindparam("b_now"),
        last_started_at=bindparam("b_now"),
        first_started_at=func.coalesce(jobs.c.first_started_at, bindparam("b_now")),
        run_after=None,
    )
    .returning(*jobs.c)
)
_HEARTBEAT = update(jobs).where(_OWNED).values(heartbeat_at=bindparam("b_now"))
_PROGRESS = (
    update(jobs)
    .where(_OWNED)
    .values(progress=bindparam("b_progress"), heartbeat_at=bindparam("b_now"))
)
_COMPLETE = (
    update(jobs)
    .where(_OWNED)
    .values(
        status="completed",
        progress=100.0,
        finished_at=bindparam("b_now"),
        heartbeat_at=bindparam("b_now"),
        error=None,
        error_kind=None,
    )
)
_FAIL = (
    update(jobs)
    .where(_OWNED)
    .values(
        status="failed",
        finished_at=bindparam("b_now"),
        error=bindparam("b_error"),
        error_kind=bindparam("b_error_kind"),
    )
)
_RETRY_LATER = (
    update(jobs)
    .where(_OWNED)
    .values(
        status="pending",
        error=bindparam("b_error"),
        error_kind=bindparam("b_error_kind"),
        heartbeat_at=None,
        dispatched=bindparam("b_dispatched"),
        run_after=bindparam("b_run_after"),
    )
)


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
