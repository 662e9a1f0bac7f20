"""The worker's SQLAlchemy-free ledger: the same statements, the same rows on disk, and a
worker process that never imports SQLAlchemy. Real SQLite files, a real PostgreSQL
cluster, real redis-server and worker subprocesses."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import ConfigFactory, Procs
from sqlalchemy import insert

from jobfleet import ledger_sql
from jobfleet.dispatch import enqueue
from jobfleet.errors import UnavailableError, UsageError
from jobfleet.ledger import Ledger
from jobfleet.runtime import Runtime
from jobfleet.schema import init_db, jobs, utcnow
from jobfleet.worker_ledger import WorkerLedger, sqlite_path

pytestmark = pytest.mark.timeout(120)

SQLALCHEMY_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def _ledgers(url: str) -> tuple[Ledger, WorkerLedger]:
    ledger = Ledger(url)
    init_db(ledger.engine)
    return ledger, WorkerLedger(url)


def test_the_shared_statements_name_the_table_columns_in_row_order() -> None:
    assert list(ledger_sql.COLUMNS) == [c.name for c in jobs.c]
    assert ledger_sql.param_names(ledger_sql.CLAIM_SQL) == ["b_worker", "b_now", "b_id"]
    assert ledger_sql.numbered("a = :b_id AND b = :b_now OR c = :b_id") == (
        "a = $1 AND b = $2 OR c = $1",
        ["b_id", "b_now"],
    )


def test_a_job_lives_through_the_worker_ledger_as_through_sqlalchemy(db_url: str) -> None:
    """Every transition of the worker ledger, checked through the SQLAlchemy ledger."""
    ledger, light = _ledgers(db_url)
    light.require_schema()
    ledger.insert("j1", "default", "m:f", "[1]", "{}", "rq", 2)
    assert light.set_dispatched("j1", True)
    first = light.claim("j1", "w1")
    assert first is not None and first == ledger.get("j1")
    assert (first.status, first.worker, first.attempts, first.dispatched) == (
        "running",
        "w1",
        1,
        True,
    )
    assert light.claim("j1", "w2") is None  # one owner
    assert light.heartbeat(first) and light.set_progress(first, 40.0)
    assert light.retry_later(first, "Boom: 503", "http_503", 30.0, True)
    pending = ledger.require("j1")
    assert (pending.status, pending.progress, pending.error_kind) == ("pending", 40.0, "http_503")
    assert pending.run_after is not None and pending.run_after > utcnow() + timedelta(seconds=20)
    assert not light.heartbeat(first)  # no longer owned
    second = light.claim("j1", "w1")
    assert second is not None and second.attempts == 2 and second.run_after is None
    assert second.first_started_at == first.first_started_at  # kept across attempts
    released = light.release(second, "horse died", "killed", stale_before=None)
    assert released is not None and released.status == "failed"  # no attempts left
    assert released == ledger.get("j1") and released.finished_at is not None
    assert not light.complete(second) and not light.fail(second, "x", "error")
    ledger.insert("j2", "default", "m:f", "[]", "{}", "rq", 3)
    third = light.claim("j2", "w1")
    assert third is not None and light.complete(third)
    done = ledger.require("j2")
    assert (done.status, done.progress, done.error) == ("completed", 100.0, None)
    assert light.get("j2") == done and light.get("nope") is None


def test_sqlite_rows_are_stored_exactly_as_sqlalchemy_stores_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger, light = _ledgers(url)
    whole_second = datetime(2026, 1, 2, 3, 4, 5)  # Python's own adapter would drop ".000000"
    for job_id in ("by-sqlalchemy", "by-worker"):
        ledger.insert(job_id, "default", "m:f", "[]", "{}", "rq", 3)
    with ledger.engine.begin() as conn:
        values = {"queue": "q", "func": "m:f", "status": "failed", "mode": "rq"}
        conn.execute(
            insert(jobs).values(
                id="whole", max_attempts=1, created_at=whole_second, dispatched=True, **values
            )
        )
    sa_row = ledger.claim("by-sqlalchemy", "w")
    light_row = light.claim("by-worker", "w")
    assert sa_row is not None and light_row is not None
    ledger.retry_later(sa_row, "e", "error", 5, True)
    light.retry_later(light_row, "e", "error", 5, True)
    raw = sqlite3.connect(tmp_path / "l.db")
    try:
        query = (
            "SELECT id, typeof(dispatched), dispatched, last_started_at, first_started_at,"
            " run_after, created_at FROM jobfleet_jobs ORDER BY id"
        )
        rows = {r[0]: r[1:] for r in raw.execute(query)}
    finally:
        raw.close()
    assert rows["whole"][5] == "2026-01-02 03:04:05.000000"
    for job_id in ("by-sqlalchemy", "by-worker"):
        kind, dispatched, *times = rows[job_id]
        assert (kind, dispatched) == ("integer", 1)
        assert all(SQLALCHEMY_TIME.match(t) for t in times), times
    assert light.get("whole") == ledger.get("whole")


def test_worker_ledger_errors_are_one_line(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(UsageError, match="no schema; run `jobfleet db init`"):
        WorkerLedger(f"sqlite:///{tmp_path / 'empty.db'}").require_schema()
    with pytest.raises(UsageError, match="no schema"):
        WorkerLedger(pg_url).require_schema()
    with pytest.raises(UsageError, match="unsupported database URL scheme"):
        WorkerLedger("mysql://x/y")
    closed = pg_url.rsplit("@", 1)[0] + "@127.0.0.1:1/nothing"
    with pytest.raises(UnavailableError, match=r"^database unreachable: ") as caught:
        WorkerLedger(closed).ping()
    assert "\n" not in str(caught.value)
    assert sqlite_path("sqlite:////abs/l.db") == "/abs/l.db"
    assert sqlite_path("sqlite:///rel.db") == "rel.db"


def test_a_started_worker_has_imported_neither_sqlalchemy_nor_psycopg(
    db_url: str, make_config: ConfigFactory, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    """A job records the modules of its work horse, a fork of the worker; the second job's
    horse is forked after the first job was claimed, run and completed."""
    cfg = make_config(db_url, redis_url)
    rt = Runtime.from_path(str(cfg))
    side = tmp_path / "modules"
    for _ in range(2):
        enqueue(rt, "jobhelpers:loaded_modules", [str(side)])
    worker = procs.worker(cfg, "w1", "--burst")
    assert worker.wait(60) == 0, procs.output(worker)
    lines = side.read_text().splitlines()
    assert len(lines) == 2
    driver = "sqlite3" if db_url.startswith("sqlite") else "jobfleet.libpq"
    for line in lines:
        modules = set(line.split())
        assert {"rq", "jobfleet", driver} <= modules
        assert not {"sqlalchemy", "psycopg"} & {name.split(".")[0] for name in modules}
    assert rt.ledger.counts()["default"] == {"completed": 2}
