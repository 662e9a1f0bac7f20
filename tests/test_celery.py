"""Celery workers end to end: real redis-server broker, real ledgers, real worker processes.

No eager mode: every job is published with ``send_task`` and run by a ``celery worker``
subprocess (prefork pool, one process) that loads :mod:`celery_jobs`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, Procs, wait_for, worker_env

from jobfleet.dispatch import enqueue
from jobfleet.reaper import reap
from jobfleet.runtime import Runtime

pytestmark = pytest.mark.timeout(150)

ORPHAN_AFTER = 3.0
HEARTBEAT = 0.5
REAP_EVERY = 1.0
CELERY_QUEUES = {
    "ca": {"mode": "celery", "max_attempts": 3, "timeout": 60},
    "cb": {"mode": "celery", "max_attempts": 3, "timeout": 60},
}


def _config(make_config: ConfigFactory, db_url: str, redis_url: str) -> Path:
    return make_config(db_url, redis_url, queues=CELERY_QUEUES, orphan_after=ORPHAN_AFTER)


def start_celery(
    procs: Procs, cfg: Path, node: str, queues: str = "ca", **env: str
) -> subprocess.Popen[bytes]:
    """``celery -A celery_jobs worker -n NODE -Q QUEUES``; returns once it is ready."""
    log = procs.tmp_path / f"celery-{len(procs.procs)}.log"
    environ = worker_env(cfg)
    environ.update(env)
    argv = [sys.executable, "-m", "celery", "-A", "celery_jobs", "--quiet", "worker", "-n", node]
    argv += ["-Q", queues, "-c", "1", "-P", "prefork", "--loglevel", "INFO"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(
            argv, env=environ, stdout=out, stderr=err, start_new_session=True, cwd=procs.tmp_path
        )
    procs.procs.append(proc)
    procs.logs[proc.pid] = log

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"celery worker {node} exited:\n{procs.output(proc)}")
        return " ready." in log.with_suffix(".err").read_text()

    wait_for(ready, 30, f"celery worker {node} to be ready")
    return proc


def _rt(cfg: Path) -> Runtime:
    return Runtime.from_path(str(cfg))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _status(rt: Runtime, job_id: str, want: str, timeout: float) -> Any:
    def check() -> Any:
        row = rt.ledger.require(job_id)
        return row if row.status == want else None

    try:
        return wait_for(check, timeout, f"job {job_id} to be {want}")
    except AssertionError:
        raise AssertionError(f"{rt.ledger.require(job_id)}") from None


def _started(side: Path, token: str, count: int = 1, timeout: float = 30) -> None:
    def seen() -> bool:
        return sum(1 for line in _lines(side) if line.startswith(f"start {token} ")) >= count

    wait_for(seen, timeout, f"job {token} to start {count} time(s)")


def _events(procs: Procs, *workers: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    return [e for w in workers for e in procs.events(w)]


def test_job_completes_with_progress_and_json_events(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = _config(make_config, sqlite_url, redis_url)
    rt = _rt(cfg)
    worker = start_celery(procs, cfg, "a@host1")
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:with_progress", [str(side), 1.5], queue="ca")
    assert job.dispatched
    row = _status(rt, job.id, "running", 20)
    assert row.worker == "a@host1"
    wait_for(lambda: rt.ledger.require(job.id).progress == 40.0, 10, "progress 40")
    row = _status(rt, job.id, "completed", 20)
    assert (row.attempts, row.progress, row.mode) == (1, 100.0, "celery")
    events = procs.events(worker)
    assert [e["event"] for e in events] == ["JOB_START", "JOB_SUCCESS"]
    assert events[1]["job_id"] == job.id and events[1]["worker"] == "a@host1"


def test_fatal_retryable_and_deleted_rows(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = _config(make_config, sqlite_url, redis_url)
    rt = _rt(cfg)
    fatal_side, retry_side, gone_side, flaky = (tmp_path / n for n in ("f", "r", "g", "fl"))
    gone = enqueue(rt, "jobhelpers:record", [str(gone_side), "x"], queue="ca")
    assert rt.ledger.delete(gone.id)  # deleted while its message waits in the queue
    fatal = enqueue(rt, "jobhelpers:fatal", [str(fatal_side)], queue="ca")
    retry = enqueue(rt, "jobhelpers:http_error", [str(retry_side), 503], queue="ca")
    not_found = enqueue(rt, "jobhelpers:http_error", [str(retry_side), 404], queue="ca")
    once = enqueue(rt, "jobhelpers:flaky_once", [str(flaky)], queue="ca")
    worker = start_celery(procs, cfg, "a@host1")

    row = _status(rt, fatal.id, "failed", 30)
    assert (row.attempts, row.error_kind) == (1, "fatal")
    row = _status(rt, retry.id, "failed", 30)
    assert (row.attempts, row.error_kind) == (3, "http_503")
    row = _status(rt, not_found.id, "failed", 30)
    assert (row.attempts, row.error_kind) == (1, "http_404")
    row = _status(rt, once.id, "completed", 30)
    assert row.attempts == 2
    assert _lines(fatal_side) == ["attempt"]
    assert _lines(retry_side).count("attempt 503") == 3
    assert _lines(retry_side).count("attempt 404") == 1
    assert not gone_side.exists()
    events = procs.events(worker)
    dropped = [e for e in events if e["event"] == "JOB_DROPPED" and e["job_id"] == gone.id]
    assert dropped and dropped[0]["error_kind"] == "missing_row"
    retries = [e for e in events if e["event"] == "JOB_RETRY" and e["job_id"] == retry.id]
    assert len(retries) == 2 and all(e["will_retry"] for e in retries)
    failed = [e for e in events if e["event"] == "JOB_FAILED" and e["job_id"] == fatal.id]
    assert failed[0]["fatal"] is True and failed[0]["will_retry"] is False


def test_kill_9_requeued_by_reaper_and_completed_once(
    db_url: str, make_config: ConfigFactory, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = _config(make_config, db_url, redis_url)
    rt = _rt(cfg)
    nodes = {n: start_celery(procs, cfg, n) for n in ("a@host1", "b@host2")}
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "k", 3.0], queue="ca")
    _started(side, "k")
    before = _status(rt, job.id, "running", 10)
    assert before.worker is not None
    procs.kill_tree(nodes.pop(before.worker))  # kill -9 of the node and its pool process
    (survivor,) = nodes
    killed_at = time.monotonic()

    requeued_after = None
    deadline = killed_at + ORPHAN_AFTER + 15
    while time.monotonic() < deadline:
        result = reap(rt, grace=0)
        if job.id in result.requeued:
            requeued_after = time.monotonic() - killed_at
            break
        assert not result.failed
        time.sleep(REAP_EVERY)
    assert requeued_after is not None, rt.ledger.require(job.id)
    # within orphan_after (+ one heartbeat that may just have been written) + one reaper pass
    assert requeued_after <= ORPHAN_AFTER + HEARTBEAT + REAP_EVERY + 1.0

    row = _status(rt, job.id, "completed", 30)
    completed_after = time.monotonic() - killed_at
    assert row.attempts == 2 and row.worker == survivor
    assert row.first_started_at == before.first_started_at
    assert row.last_started_at is not None and row.last_started_at > before.first_started_at
    assert sum(1 for line in _lines(side) if line.startswith("done")) == 1
    print(
        f"\nkill -9 recovery ({db_url.split(':')[0]}): requeued after {requeued_after:.2f}s, "
        f"completed after {completed_after:.2f}s (orphan_after {ORPHAN_AFTER}s, job 3s)"
    )


def test_a_killed_pool_process_is_recorded_at_once_and_runs_again_once(
    db_url: str, make_config: ConfigFactory, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    """kill -9 of the pool process only (the OOM killer's choice): the node's main process
    requeues the row at once, long before ``orphan_after``, and no reaper runs here."""
    cfg = make_config(db_url, redis_url, queues=CELERY_QUEUES, orphan_after=120)
    rt = _rt(cfg)
    node = start_celery(procs, cfg, "a@host1")
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "p", 2.0], queue="ca")
    _started(side, "p")
    before = _status(rt, job.id, "running", 10)
    pool_pid = int(_lines(side)[0].split()[2])
    assert pool_pid != node.pid
    os.kill(pool_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    _started(side, "p", count=2, timeout=20)
    rerun_after = time.monotonic() - killed_at
    row = _status(rt, job.id, "completed", 20)
    assert node.poll() is None, "the node itself lives on"
    assert (row.attempts, row.worker) == (2, "a@host1")
    assert row.first_started_at == before.first_started_at
    assert [line.split()[0] for line in _lines(side)] == ["start", "start", "done"]
    requeued = [e for e in procs.events(node) if e["event"] == "JOB_REQUEUED"]
    assert [(e["job_id"], e["error_kind"], e["attempt"]) for e in requeued] == [
        (job.id, "killed", 1)
    ]
    assert not [e for e in procs.events(node) if e["event"] == "JOB_DROPPED"]
    assert rerun_after < 10, f"running again {rerun_after:.1f} s after the kill"
    print(
        f"\npool process kill -9 ({db_url.split(':')[0]}): running again after {rerun_after:.2f}s"
    )


def test_a_killed_pool_process_with_no_attempts_left_fails_at_once(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=CELERY_QUEUES, orphan_after=120)
    rt = _rt(cfg)
    node = start_celery(procs, cfg, "a@host1")
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "f", 2.0], queue="ca", max_attempts=1)
    _started(side, "f")
    os.kill(int(_lines(side)[0].split()[2]), signal.SIGKILL)
    row = _status(rt, job.id, "failed", 10)
    assert (row.attempts, row.error_kind) == (1, "killed")
    assert "pool process of Celery node a@host1 died" in (row.error or "")
    time.sleep(2)  # the message Celery put back is skipped: the row is terminal
    assert [line.split()[0] for line in _lines(side)] == ["start"]
    assert node.poll() is None


def test_sigterm_lets_the_running_job_finish(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = _config(make_config, sqlite_url, redis_url)
    rt = _rt(cfg)
    worker = start_celery(procs, cfg, "a@host1")
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "t", 2.0], queue="ca")
    _started(side, "t")
    os.kill(worker.pid, signal.SIGTERM)  # the main process only, as KillMode=mixed does
    assert worker.wait(30) == 0, procs.output(worker)
    row = rt.ledger.require(job.id)
    assert (row.status, row.attempts) == ("completed", 1)
    assert _lines(side)[-1] == "done t"


def test_redelivery_after_visibility_timeout_does_not_run_twice(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = _config(make_config, sqlite_url, redis_url)
    rt = _rt(cfg)
    short = {"CELERY_TEST_VISIBILITY": "2"}
    first = start_celery(procs, cfg, "a@host1", **short)
    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:slow", [str(side), "v", 7.0], queue="ca")
    _started(side, "v")
    second = start_celery(procs, cfg, "b@host2", **short)

    def skipped() -> bool:
        return any(
            e["event"] == "JOB_DROPPED" and e["job_id"] == job.id
            for e in _events(procs, first, second)
        )

    wait_for(skipped, 20, "the redelivered message to be skipped")
    row = _status(rt, job.id, "completed", 20)
    assert (row.attempts, row.worker) == (1, "a@host1")
    assert [line.split()[0] for line in _lines(side)] == ["start", "done"]
    drops = [e for e in _events(procs, first, second) if e["event"] == "JOB_DROPPED"]
    assert drops[0]["error_kind"] == "not_pending"


def test_restarting_node_releases_only_its_own_rows(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = _config(make_config, sqlite_url, redis_url)
    rt = _rt(cfg)
    node_a = start_celery(procs, cfg, "a@host1", queues="ca")
    node_b = start_celery(procs, cfg, "b@host1", queues="cb")
    side = tmp_path / "side"
    long_a = enqueue(rt, "jobhelpers:slow", [str(side), "a", 6.0], queue="ca")
    long_b = enqueue(rt, "jobhelpers:slow", [str(side), "b", 1.0], queue="cb")
    _started(side, "a")
    _started(side, "b")
    procs.kill_tree(node_b)
    restarted = time.monotonic()
    start_celery(procs, cfg, "b@host1", queues="cb")  # the same node name starts again
    row_a = rt.ledger.require(long_a.id)
    assert (row_a.status, row_a.worker, row_a.attempts) == ("running", "a@host1", 1)
    row_b = _status(rt, long_b.id, "completed", 30)
    recovered_after = time.monotonic() - restarted
    assert row_b.attempts == 2 and row_b.error_kind is None
    row_a = _status(rt, long_a.id, "completed", 30)
    assert row_a.attempts == 1 and node_a.poll() is None
    assert sum(1 for line in _lines(side) if line == "done a") == 1
    print(f"\nnode restart: other node's job untouched; own job completed {recovered_after:.2f}s")
