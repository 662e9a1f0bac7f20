"""The RQ worker end to end: real redis-server, real ledgers, worker subprocesses."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ConfigFactory, Procs, wait_for
from servers import RedisServer, redis_server
from sqlalchemy import update

from jobfleet.dispatch import enqueue
from jobfleet.reaper import REDISPATCH_GRACE, reap
from jobfleet.runtime import Runtime
from jobfleet.schema import jobs, utcnow

pytestmark = pytest.mark.timeout(120)


def _rt(cfg: Path) -> Runtime:
    return Runtime.from_path(str(cfg))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _started_pid(side: Path, token: str, timeout: float = 30) -> int:
    def find() -> int | None:
        for line in _lines(side):
            parts = line.split()
            if parts[:2] == ["start", token]:
                return int(parts[2])
        return None

    return int(wait_for(find, timeout, f"job {token} to start"))


def test_job_completes_and_logs_json(
    make_config: ConfigFactory, db_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(db_url, redis_url)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:record", [str(side), "a"])
    worker = procs.worker(cfg, "host1:jobfleet-default@1.service", "--burst")
    assert worker.wait(60) == 0, procs.output(worker)
    row = rt.ledger.require(job.id)
    assert (row.status, row.attempts, row.progress) == ("completed", 1, 100.0)
    assert row.worker == "host1:jobfleet-default@1.service"
    assert row.first_started_at is not None and row.finished_at is not None
    assert _lines(side) == ["a"]
    events = procs.events(worker)
    assert [e["event"] for e in events] == ["JOB_START", "JOB_SUCCESS"]
    assert events[1]["duration_ms"] >= 0 and events[1]["job_id"] == job.id


def test_rq_worker_registers_under_a_unique_name(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs
) -> None:
    from rq import Worker

    cfg = make_config(sqlite_url, redis_url)
    rt = _rt(cfg)
    first = procs.worker(cfg, "host1:w@1.service")
    second = procs.worker(cfg, "host1:w@1.service")  # same unit name: must not collide

    def names() -> list[str]:
        return sorted(w.name for w in Worker.all(connection=rt.redis))

    found = wait_for(lambda: len(names()) == 2 and names(), 30, "two registrations")
    assert all(n.startswith("host1:w@1.service/") for n in found)
    assert first.poll() is None and second.poll() is None


def test_404_fails_after_one_attempt_and_503_after_max_attempts(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    rt = _rt(cfg)
    not_found, unavailable, fatal = tmp_path / "404", tmp_path / "503", tmp_path / "fatal"
    a = enqueue(rt, "jobhelpers:http_error", [str(not_found), 404])
    b = enqueue(rt, "jobhelpers:status_error", [str(unavailable), 503], max_attempts=3)
    c = enqueue(rt, "jobhelpers:fatal", [str(fatal)])
    worker = procs.worker(cfg, "w1", "--burst")
    assert worker.wait(60) == 0, procs.output(worker)

    row_a, row_b, row_c = (rt.ledger.require(j.id) for j in (a, b, c))
    assert (row_a.status, row_a.attempts, row_a.error_kind) == ("failed", 1, "http_404")
    assert len(_lines(not_found)) == 1
    assert (row_b.status, row_b.attempts, row_b.error_kind) == ("failed", 3, "http_503")
    assert len(_lines(unavailable)) == 3
    assert (row_c.status, row_c.attempts, row_c.error_kind) == ("failed", 1, "fatal")
    kinds = [(e["job_id"], e["event"], e["fatal"], e["will_retry"]) for e in procs.events(worker)]
    assert (a.id, "JOB_FAILED", True, False) in kinds
    assert [k[1:] for k in kinds if k[0] == b.id and k[1] != "JOB_START"] == [
        ("JOB_RETRY", False, True),
        ("JOB_RETRY", False, True),
        ("JOB_FAILED", False, False),
    ]
    from rq.job import Job

    assert Job.fetch(a.id, connection=rt.redis).get_status() == "failed"


def test_deleted_row_is_dropped_without_retry(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:record", [str(side), "x"])
    assert rt.ledger.delete(job.id)
    worker = procs.worker(cfg, "w1", "--burst")
    assert worker.wait(60) == 0
    events = procs.events(worker)
    assert [(e["event"], e["error_kind"]) for e in events] == [("JOB_DROPPED", "missing_row")]
    assert not side.exists()
    assert rt.rq_queue("default").count == 0


def test_timeout_is_a_retryable_timeout_error(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    queues = {"default": {"mode": "rq", "max_attempts": 2, "timeout": 1}}
    cfg = make_config(sqlite_url, redis_url, queues=queues)
    rt = _rt(cfg)
    job = enqueue(rt, "jobhelpers:slow", [str(tmp_path / "side"), "t", 5])
    worker = procs.worker(cfg, "w1", "--burst")
    assert worker.wait(60) == 0
    row = rt.ledger.require(job.id)
    assert (row.status, row.attempts, row.error_kind) == ("failed", 2, "timeout")
    events = [(e["event"], e["error_kind"]) for e in procs.events(worker)]
    assert ("JOB_RETRY", "timeout") in events and ("JOB_FAILED", "timeout") in events


def test_secrets_and_argument_values_never_reach_the_log(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    job = enqueue(_rt(cfg), "jobhelpers:secret_failure", ["hunter2-password"], max_attempts=1)
    worker = procs.worker(cfg, "w1", "--burst")
    assert worker.wait(60) == 0
    output = procs.output(worker)
    assert job.id in output
    assert "hunter2-password" not in output
    assert "s3cret-redis-pw" not in output


def test_kill_9_of_whole_worker_is_requeued_and_completed_by_another(
    make_config: ConfigFactory, db_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(db_url, redis_url, orphan_after=2, heartbeat_interval=0.5)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "k", 1.0])
    w1 = procs.worker(cfg, "w1")
    horse = _started_pid(side, "k")
    first = rt.ledger.require(job.id)
    assert horse in procs.kill_tree(w1)  # the whole unit: main process and work horse
    killed_at = time.monotonic()
    w2 = procs.worker(cfg, "w2")

    def reaped() -> bool:
        return job.id in reap(rt).requeued

    wait_for(reaped, 10, "the reaper to requeue the orphan")
    requeued_after = time.monotonic() - killed_at
    assert requeued_after <= rt.config.orphan_after + 1.5
    wait_for(lambda: rt.ledger.require(job.id).status == "completed", 30, "completion")
    row = rt.ledger.require(job.id)
    assert (row.worker, row.attempts) == ("w2", 2)
    assert row.first_started_at == first.first_started_at
    assert "done k" in _lines(side)
    assert w2.poll() is None


def test_killed_work_horse_is_recorded_at_once(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url, orphan_after=60)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "h", 2.0], max_attempts=2)
    worker = procs.worker(cfg, "w1")
    os.kill(_started_pid(side, "h"), signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: rt.ledger.require(job.id).error_kind == "killed", 10, "the kill record")
    assert time.monotonic() - killed_at < 5  # not the reaper's orphan_after (60 s)
    assert "signal 9" in (rt.ledger.require(job.id).error or "")
    wait_for(lambda: rt.ledger.require(job.id).status == "completed", 30, "the second attempt")
    assert rt.ledger.require(job.id).attempts == 2
    assert worker.poll() is None
    events = [e["event"] for e in procs.events(worker)]
    assert "JOB_REQUEUED" in events


def test_restarted_worker_cleanup_leaves_other_workers_jobs_alone(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url, orphan_after=60)
    rt = _rt(cfg)
    side_a, side_b = tmp_path / "a", tmp_path / "b"
    a = enqueue(rt, "jobhelpers:slow", [str(side_a), "a", 12.0])
    w1 = procs.worker(cfg, "host:w@1.service")
    _started_pid(side_a, "a")
    b = enqueue(rt, "jobhelpers:slow", [str(side_b), "b", 30.0])
    w2 = procs.worker(cfg, "host:w@2.service")
    horse_b = _started_pid(side_b, "b")
    assert horse_b in procs.kill_tree(w2)
    cleanup = procs.start(cfg, "startup-cleanup", "--name", "host:w@2.service", "--json")
    assert cleanup.wait(30) == 0
    row_a, row_b = rt.ledger.require(a.id), rt.ledger.require(b.id)
    assert (row_a.status, row_a.worker, row_a.attempts) == ("running", "host:w@1.service", 1)
    assert row_b.status == "pending" and row_b.error_kind == "worker_restarted"
    assert "host:w@2.service restarted" in (row_b.error or "")
    wait_for(lambda: rt.ledger.require(a.id).status == "completed", 30, "job a to finish")
    assert w1.poll() is None


def test_sigterm_is_a_warm_shutdown(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "s", 2.0])
    worker = procs.worker(cfg, "w1")
    _started_pid(side, "s")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert rt.ledger.require(job.id).status == "completed"
    assert "done s" in _lines(side)


def test_retry_backoff_goes_through_rq_scheduler(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url, backoff_base=1.0, backoff_max=1.0)
    rt = _rt(cfg)
    side = tmp_path / "flaky"
    job = enqueue(rt, "jobhelpers:flaky_once", [str(side)])
    worker = procs.worker(cfg, "w1")
    wait_for(lambda: rt.ledger.require(job.id).status == "completed", 30, "the retried job")
    assert _lines(side) == ["first", "second"]
    assert rt.ledger.require(job.id).attempts == 2
    assert worker.poll() is None


def test_redis_down_at_enqueue_then_back_is_dispatched_and_completed(
    make_config: ConfigFactory, sqlite_url: str, procs: Procs, tmp_path: Path
) -> None:
    with redis_server() as server:
        cfg = make_config(sqlite_url, server.url)
        rt = _rt(cfg)
        server.stop()
        side = tmp_path / "side"
        job = enqueue(rt, "jobhelpers:record", [str(side), "r"])
        assert not job.dispatched
        assert rt.ledger.require(job.id).dispatched is False
        _restart(server)
        rt = _rt(cfg)
        result = reap(rt, grace=0)
        assert result.redispatched == [job.id]
        assert reap(rt, grace=0).redispatched == []  # dispatched once only
        worker = procs.worker(cfg, "w1", "--burst")
        assert worker.wait(60) == 0
        assert rt.ledger.require(job.id).status == "completed"
        assert _lines(side) == ["r"]


def test_pending_job_lost_by_redis_is_sent_again(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:record", [str(side), "l"])
    assert job.dispatched
    rt.redis.flushall()  # Redis restarted without its data
    assert reap(rt, grace=0).redispatched == [job.id]
    worker = procs.worker(cfg, "w1", "--burst")
    assert worker.wait(60) == 0
    assert _lines(side) == ["l"]


def test_a_send_another_reaper_has_claimed_is_left_to_it(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str
) -> None:
    """Reaper A claimed the send of a lost job (the row is unsent until A's send is
    done); reaper B, reading the row in that moment, must not send it as well. If A dies
    there, the row is sent once the grace has passed."""
    rt = _rt(make_config(sqlite_url, redis_url))
    job = enqueue(rt, "jobhelpers:add", [1, 2])
    rt.redis.flushall()  # Redis lost its data: the row must be sent again
    with rt.ledger.engine.begin() as conn:  # enqueued a minute ago
        old = utcnow() - timedelta(seconds=60)
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(created_at=old))
    row = rt.ledger.require(job.id)
    assert rt.ledger.claim_send(row)  # reaper A, between its claim and its send
    assert reap(rt, grace=REDISPATCH_GRACE).redispatched == []  # reaper B
    assert reap(rt, grace=0).redispatched == [job.id]  # A died: the next pass sends it
    assert reap(rt, grace=0).redispatched == []


def _restart(server: RedisServer) -> None:
    server.start()


def test_progress_from_a_horse_reaches_the_ledger_and_cancel_wins(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    rt = _rt(cfg)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:with_progress", [str(side), 1.5])
    worker = procs.worker(cfg, "w1")
    wait_for(lambda: rt.ledger.require(job.id).progress == 40.0, 20, "progress 40")
    assert rt.ledger.require(job.id).status == "running"
    rt.ledger.cancel(job.id)  # an operator cancels while the job runs
    wait_for(lambda: any(e["event"] == "JOB_DROPPED" for e in procs.events(worker)), 20, "drop")
    row = rt.ledger.require(job.id)
    assert (row.status, row.error_kind) == ("cancelled", "cancelled")  # the late success lost
    assert worker.poll() is None
