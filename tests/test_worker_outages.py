"""A worker that dies between RQ's dequeue and the ledger claim, and a ledger that goes
away under a running worker: real redis-server, real SQLite, a real PostgreSQL cluster
stopped and started by the test, worker subprocesses."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ConfigFactory, Procs, reapers_at_once, wait_for
from rq.worker import Worker
from servers import PG_BIN, PostgresServer, _as_postgres, postgres_server

from jobfleet.dispatch import encode_args, enqueue
from jobfleet.reaper import REDISPATCH_GRACE, reap
from jobfleet.runtime import Runtime

pytestmark = pytest.mark.timeout(180)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_worker_killed_between_dequeue_and_claim_is_sent_again_once(
    make_config: ConfigFactory, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    cfg = make_config(f"sqlite:///{db}", redis_url, orphan_after=2, heartbeat_interval=0.5)
    rt = Runtime.from_path(str(cfg))
    side = tmp_path / "side"
    args, kwargs = encode_args([str(side), "once"], {})
    job = rt.ledger.insert("between", "default", "jobhelpers:record", args, kwargs, "rq", 3)
    inserted_at = time.monotonic()
    rt.ledger.set_dispatched(job.id, True)
    queue = rt.rq_queue("default")
    w1 = procs.worker(cfg, "w1")
    wait_for(lambda: Worker.all(connection=rt.redis), 30, "the worker to register")
    time.sleep(0.5)  # it has opened its ledger connection and waits for a job
    # Hold SQLite's write lock: the worker dequeues the job, then waits in its claim.
    lock = sqlite3.connect(db, timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        queue.enqueue_call(func="jobhelpers.record", args=[str(side), "once"], job_id=job.id)
        wait_for(
            lambda: job.id.encode() in rt.redis.lrange(queue.intermediate_queue_key, 0, -1),
            30,
            "the worker to dequeue the job",
        )
        time.sleep(0.5)
        procs.kill_tree(w1)  # kill -9 between the dequeue and the claim
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    killed_at = time.monotonic()
    assert rt.ledger.require(job.id).status == "pending"
    assert rt.redis.hget(f"rq:job:{job.id}", "status") == b"queued"  # RQ sees nothing wrong
    procs.worker(cfg, "w2")
    sent: list[str] = []
    sent_at, cycles = 0.0, [0.0]  # when the job was sent again; each reaper cycle's length
    while rt.ledger.require(job.id).status != "completed":
        assert time.monotonic() - killed_at < 30, "the job was not sent again"
        started = time.monotonic()
        got = [i for r in reapers_at_once(cfg) for i in r.redispatched]
        if got and not sent_at:
            sent_at = time.monotonic()
        sent += got
        time.sleep(1.0)
        cycles.append(time.monotonic() - started)
    # The reaper leaves a row younger than REDISPATCH_GRACE alone; after that, one pass notes
    # the held job and a pass orphan_after later sends it: two reaper cycles at most beyond
    # orphan_after (a cycle here is two reaper passes, then a 1 s pause).
    assert sent_at, "the job completed without being sent again"
    watched_from = max(killed_at, inserted_at + REDISPATCH_GRACE)
    limit = rt.config.orphan_after + 2 * max(cycles)
    assert sent_at - watched_from <= limit, (sent_at - killed_at, sent_at - watched_from, cycles)
    assert sent == [job.id]  # two reapers, every second: one send
    assert _lines(side) == ["once"]
    row = rt.ledger.require(job.id)
    assert (row.worker, row.attempts) == ("w2", 1)


def _pg_ctl(server: PostgresServer, action: str) -> None:
    data = server.directory / "data"
    options = (
        f"-p {server.port} -k {server.directory / 'sock'} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    args = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    if action == "stop":
        args += ["-m", "fast", "stop"]
    else:
        args += ["-o", options, "-l", str(server.directory / "pg.log"), "start"]
    subprocess.run(_as_postgres(*args), check=True, capture_output=True, timeout=90)


def test_ledger_outage_loses_no_job_runs_none_twice_and_the_worker_recovers(
    make_config: ConfigFactory, redis_url: str, procs: Procs, tmp_path: Path
) -> None:
    with postgres_server() as pg:
        cfg = make_config(
            pg.create_database("outage"), redis_url, orphan_after=2, heartbeat_interval=0.5
        )
        rt = Runtime.from_path(str(cfg))
        side, gate = tmp_path / "side", tmp_path / "gate"
        running = enqueue(rt, "jobhelpers:gated", [str(side), "a", str(gate)])
        w1 = procs.worker(cfg, "w1")
        wait_for(lambda: any(x.startswith("start a") for x in _lines(side)), 30, "job a")
        w2 = procs.worker(cfg, "w2")
        args, kwargs = encode_args([str(side), "b"], {})
        later = rt.ledger.insert("later-b", "default", "jobhelpers:record", args, kwargs, "rq", 3)
        rt.ledger.set_dispatched(later.id, True)
        wait_for(lambda: len(Worker.all(connection=rt.redis)) == 2, 30, "w2 to register")
        time.sleep(0.5)  # w2 is up and idle

        _pg_ctl(pg, "stop")
        try:
            # The job reaches RQ while the ledger is down: w2 takes it and cannot claim it.
            rt.rq_queue("default").enqueue_call(
                func="jobhelpers.record", args=[str(side), "b"], job_id=later.id
            )
            wait_for(
                lambda: "put back on queue default" in procs.output(w2), 30, "w2 to give b back"
            )
            assert "done a" not in _lines(side)
            gate.touch()  # job a ends while the ledger is down
            wait_for(lambda: "done a" in _lines(side), 30, "job a to end")
            wait_for(lambda: "outcome of job" in procs.output(w1), 30, "w1 to keep a's outcome")
            time.sleep(rt.config.orphan_after + 1)  # a's heartbeat goes stale in the ledger
            assert "b" not in _lines(side)  # never run without a claim
            assert rt.redis.lrange(rt.rq_queue("default").key, 0, -1) == [b"later-b"]
        finally:
            _pg_ctl(pg, "start")
        rt.ledger.engine.dispose()  # this process's pooled connections died with the server
        assert reap(rt).requeued == []  # w1 marked a alive in Redis: not an orphan
        wait_for(lambda: rt.ledger.require(running.id).status == "completed", 30, "a recorded")
        wait_for(lambda: rt.ledger.require(later.id).status == "completed", 30, "b to run")
        assert reap(rt).requeued == []
        assert [x.split()[0] for x in _lines(side) if x.startswith(("start", "done"))] == [
            "start",
            "done",
        ]
        assert _lines(side).count("b") == 1
        assert rt.ledger.require(running.id).attempts == 1
        assert rt.ledger.require(later.id).attempts == 1
        assert w1.poll() is None and w2.poll() is None  # both kept running
        for proc in (w1, w2):
            wait_for(lambda p=proc: "the ledger answers again" in procs.output(p), 30, "resumed")
        for proc in (w1, w2):
            assert "Traceback" not in procs.output(proc)
