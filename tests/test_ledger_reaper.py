"""Ledger transitions and the reaper against real SQLite files and a real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ConfigFactory, reapers_at_once
from sqlalchemy import text, update

from jobfleet.dispatch import encode_args
from jobfleet.ledger import JobRow, Ledger
from jobfleet.reaper import reap, startup_cleanup
from jobfleet.runtime import Runtime
from jobfleet.schema import SCHEMA_VERSION, current_version, init_db, jobs, utcnow

pytestmark = pytest.mark.timeout(120)


def _rt(cfg: Path) -> Runtime:
    return Runtime.from_path(str(cfg))


def _row(ledger: Ledger, job_id: str, max_attempts: int = 3, mode: str = "db") -> JobRow:
    args, kwargs = encode_args([1, "two"], {"k": True})
    return ledger.insert(job_id, "default", "jobhelpers:add", args, kwargs, mode, max_attempts)


def _age_heartbeat(ledger: Ledger, job_id: str, seconds: float) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_init_is_idempotent_and_records_the_version(db_url: str) -> None:
    ledger = Ledger(db_url)
    assert current_version(ledger.engine) is None
    assert init_db(ledger.engine) is True
    assert init_db(ledger.engine) is False
    assert current_version(ledger.engine) == SCHEMA_VERSION


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


def test_only_one_of_two_claims_wins_and_terminal_rows_stay(db_url: str) -> None:
    ledger = Ledger(db_url)
    init_db(ledger.engine)
    _row(ledger, "j1")
    first, second = ledger.claim("j1", "w1"), ledger.claim("j1", "w2")
    assert first is not None and second is None
    assert (first.status, first.worker, first.attempts) == ("running", "w1", 1)
    assert ledger.complete(first)
    assert not ledger.complete(first)  # a second outcome for the same attempt loses
    assert not ledger.fail(first, "late", "error")
    assert not ledger.heartbeat(first)
    row = ledger.require("j1")
    assert (row.status, row.error) == ("completed", None)
    with pytest.raises(Exception, match="already completed"):
        ledger.cancel("j1")
    retried = ledger.operator_retry("j1")
    assert (retried.status, retried.attempts, retried.dispatched) == ("pending", 0, False)


def test_concurrent_claims_never_share_a_job(db_url: str) -> None:
    ledger = Ledger(db_url)
    init_db(ledger.engine)
    for n in range(60):
        _row(ledger, f"c{n}")
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (row := ledger.claim_next(["default"], name)) is not None:
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(f"c{n}" for n in range(60))


def test_reaper_requeues_stale_keeps_progress_and_leaves_fresh_alone(
    make_config: ConfigFactory, db_url: str
) -> None:
    rt = _rt(make_config(db_url, orphan_after=5))
    ledger = rt.ledger
    _row(ledger, "stale")
    _row(ledger, "fresh")
    _row(ledger, "last", max_attempts=1)
    stale = ledger.claim("stale", "dead-worker")
    assert stale is not None and ledger.set_progress(stale, 60)
    assert ledger.claim("fresh", "live-worker") is not None
    assert ledger.claim("last", "dead-worker") is not None
    _age_heartbeat(ledger, "stale", 30)
    _age_heartbeat(ledger, "last", 30)
    _age_heartbeat(ledger, "fresh", 1)  # a long job whose worker still beats
    result = reap(rt)
    assert (result.requeued, result.failed) == (["stale"], ["last"])
    row = ledger.require("stale")
    assert (row.status, row.progress, row.error_kind) == ("pending", 60.0, "orphaned")
    assert row.first_started_at == stale.first_started_at and row.dispatched
    assert (ledger.require("last").status, ledger.require("last").error_kind) == (
        "failed",
        "orphaned",
    )
    assert ledger.require("fresh").status == "running"
    assert reap(rt).requeued == []


def test_two_reapers_at_once_requeue_a_job_once(make_config: ConfigFactory, db_url: str) -> None:
    cfg = make_config(db_url, orphan_after=5)
    ledger = _rt(cfg).ledger
    for n in range(20):
        _row(ledger, f"o{n}")
        assert ledger.claim(f"o{n}", "gone") is not None
        _age_heartbeat(ledger, f"o{n}", 60)
    results = [r.requeued for r in reapers_at_once(cfg)]
    everything = results[0] + results[1]
    assert sorted(everything) == sorted(f"o{n}" for n in range(20))  # each exactly once
    assert all(ledger.require(f"o{n}").attempts == 1 for n in range(20))


def test_startup_cleanup_touches_only_its_own_worker(
    make_config: ConfigFactory, db_url: str
) -> None:
    rt = _rt(make_config(db_url))
    for job_id, worker in (("mine", "h:w@1.service"), ("other", "h:w@2.service")):
        _row(rt.ledger, job_id)
        assert rt.ledger.claim(job_id, worker) is not None
    result = startup_cleanup(rt, "h:w@1.service")
    assert (result.requeued, result.failed) == (["mine"], [])
    mine, other = rt.ledger.require("mine"), rt.ledger.require("other")
    assert mine.status == "pending" and "h:w@1.service restarted" in (mine.error or "")
    assert (other.status, other.worker) == ("running", "h:w@2.service")


def test_prune_deletes_only_old_terminal_rows(make_config: ConfigFactory, db_url: str) -> None:
    rt = _rt(make_config(db_url))
    ledger = rt.ledger
    for job_id in ("old", "new", "open"):
        _row(ledger, job_id)
    for job_id in ("old", "new"):
        row = ledger.claim(job_id, "w")
        assert row is not None and ledger.complete(row)
    with ledger.engine.begin() as conn:
        old = utcnow() - timedelta(days=40)
        conn.execute(update(jobs).where(jobs.c.id == "old").values(finished_at=old))
    assert ledger.prune(timedelta(days=30)) == 1
    assert ledger.get("old") is None and ledger.get("new") is not None
    assert ledger.get("open") is not None
