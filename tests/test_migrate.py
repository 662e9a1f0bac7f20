"""Queue modes, rq-to-db and db-to-rq: exactly once across kill -9, verification, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import JOBFLEET, ConfigFactory, wait_for, worker_env
from servers import free_port
from sqlalchemy import insert, inspect

from jobfleet import modes
from jobfleet.cli import main
from jobfleet.dispatch import enqueue
from jobfleet.migrate import db_to_rq, rq_to_db
from jobfleet.poller import Poller
from jobfleet.reaper import ReapResult, redispatch
from jobfleet.runtime import Runtime
from jobfleet.schema import metadata, schema_version, utcnow

pytestmark = pytest.mark.timeout(240)

QUEUES = {
    "a": {"mode": "rq", "max_attempts": 3, "timeout": 60},
    "b": {"mode": "rq", "max_attempts": 3, "timeout": 60},
}


def _rt(cfg: Path) -> Runtime:
    return Runtime.from_path(str(cfg), log_stream=open(os.devnull, "w"))


def _plain_rq(rt: Runtime, queue: str, side: Path, tokens: list[str]) -> None:
    """Jobs enqueued by plain RQ (JSON serializer), with no ledger row."""
    q = rt.rq_queue(queue)
    for token in tokens:
        q.enqueue("jobhelpers.record", str(side), token, job_id=f"plain-{token}")


def _fill(rt: Runtime, side: Path, total: int, plain: int, queue: str = "a") -> None:
    for n in range(total - plain):
        enqueue(
            rt, "jobhelpers:record", [str(side), f"{queue}-{n}"], queue=queue, job_id=f"{queue}-{n}"
        )
    _plain_rq(rt, queue, side, [f"{queue}-p{n}" for n in range(plain)])


def _drain_db(rt: Runtime, queues: list[str]) -> int:
    modes.invalidate()
    return Poller(rt, queues, "test-poller").work(burst=True)


def _runs(side: Path) -> Counter[str]:
    return Counter(side.read_text().splitlines()) if side.exists() else Counter()


def _cli(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [JOBFLEET, *args, "--json"],
        env=env or worker_env(cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_rq_to_db_moves_every_waiting_job_once(
    make_config: ConfigFactory, db_url: str, redis_url: str, tmp_path: Path
) -> None:
    cfg = make_config(db_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _fill(rt, side, 60, 15)
    rt.rq_queue("a").enqueue_in(timedelta(seconds=1), "jobhelpers.record", str(side), "sched-1")
    enqueue(rt, "jobhelpers:record", [str(side), "b-0"], queue="b")
    [report] = rq_to_db(rt, ["a"])
    assert report.ok, report
    assert (report.before, report.after, report.created) == (61, 61, 16)
    assert rt.redis.llen(rt.rq_queue("a").key) == 0
    assert rt.rq_queue("a").scheduled_job_registry.count == 0
    assert modes.mode_of(rt, "a").mode == "db" and modes.mode_of(rt, "b").mode == "rq"
    row = rt.ledger.require("plain-a-p3")
    assert (row.func, row.mode, row.status, row.call_args()) == (
        "jobhelpers:record",
        "db",
        "pending",
        ([str(side), "a-p3"], {}),
    )
    assert rt.redis.llen(rt.rq_queue("b").key) == 1  # the other queue is untouched
    time.sleep(1.1)  # the scheduled job keeps its time
    assert _drain_db(rt, ["a", "b"]) == 61
    runs = _runs(side)
    assert len(runs) == 61 and set(runs.values()) == {1}
    again = rq_to_db(rt, ["a"])[0]  # idempotent
    assert again.ok and again.moved == 0


@pytest.mark.parametrize("pause_after", [1, 7, 20, 33])
def test_kill9_mid_migration_then_rerun_gives_each_job_once(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, tmp_path: Path, pause_after: int
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _fill(rt, side, 40, 10)
    env = worker_env(cfg) | {"JOBFLEET_MIGRATE_PAUSE_AFTER": str(pause_after)}
    env["JOBFLEET_MIGRATE_BATCH"] = "6"
    proc = _cli(cfg, "migrate", "rq-to-db", "--queues", "a", env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the test timeout
        assert "pausing" in line, line + (proc.stderr.read() if proc.stderr else "")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert modes.read(rt.ledger.engine, rt.config)["a"].mode == "migrating"
    # while migrating nothing dispatches: the poller claims nothing
    assert _drain_db(rt, ["a"]) == 0
    rerun = _cli(cfg, "migrate", "rq-to-db", "--queues", "a")
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    result = json.loads(out)["queues"]["a"]
    assert (result["before"], result["after"], result["ok"]) == (40, 40, True)
    assert _drain_db(rt, ["a"]) == 40
    runs = _runs(side)
    assert len(runs) == 40 and set(runs.values()) == {1}


def test_mismatch_names_the_missing_ids_and_exits_1(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    enqueue(rt, "jobhelpers:add", [1, 2], queue="a", job_id="good-1")
    rt.redis.rpush(rt.rq_queue("a").key, "ghost-1")  # in RQ's list, but no job hash
    code = main(["migrate", "rq-to-db", "--queues", "a", "--config", str(cfg)])
    out, _ = capsys.readouterr()
    assert code == 1 and "MISMATCH" in out and "ghost-1" in out
    code = main(["migrate", "rq-to-db", "--queues", "a", "--config", str(cfg), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False
    assert set(data["queues"]["a"]) >= {"before", "after", "moved", "missing", "ok", "unreadable"}
    assert data["queues"]["a"]["unreadable"] == ["ghost-1"]
    assert data["queues"]["a"]["left_in_redis"] == 1  # left for the operator, not dropped
    assert rt.ledger.require("good-1").mode == "db"


def test_db_to_rq_creates_each_job_once(
    make_config: ConfigFactory, db_url: str, redis_url: str, tmp_path: Path
) -> None:
    queues = {"a": {"mode": "db", "max_attempts": 3, "timeout": 60}}
    cfg = make_config(db_url, redis_url, queues=queues)
    rt = _rt(cfg)
    side = tmp_path / "side"
    for n in range(30):
        enqueue(rt, "jobhelpers:record", [str(side), f"t{n}"], queue="a", job_id=f"t{n}")
    # a crash after the RQ push, before the row switched: the RQ job already exists
    modes.store(rt.ledger.engine, "a", "migrating", "rq")
    rt.rq_queue("a").enqueue("jobhelpers.record", str(side), "t3", job_id="t3")
    enqueue(rt, "jobhelpers:record", [str(side), "late"], queue="a", job_id="late")
    late = rt.ledger.require("late")
    assert (late.mode, late.dispatched) == ("rq", False)  # migrating: not sent yet
    [report] = db_to_rq(rt, ["a"])
    assert report.ok and report.before == 31 and report.after == 31, report
    ids = [v.decode() for v in rt.redis.lrange(rt.rq_queue("a").key, 0, -1)]
    assert sorted(ids) == sorted({*ids}) and len(ids) == 31
    assert modes.mode_of(rt, "a").mode == "rq"
    from jobfleet.worker import JobfleetWorker

    JobfleetWorker(rt, ["a"], "w").work(burst=True)
    runs = _runs(side)
    assert len(runs) == 31 and set(runs.values()) == {1}
    assert rt.ledger.counts() == {"a": {"completed": 31}}


def test_enqueue_during_migrating_to_db_waits_for_the_switch(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    modes.store(rt.ledger.engine, "a", "migrating", "db")
    done = enqueue(rt, "jobhelpers:record", [str(side), "m1"], queue="a", job_id="m1")
    assert done.dispatched and rt.redis.llen(rt.rq_queue("a").key) == 0
    assert rt.ledger.require("m1").mode == "db"
    assert _drain_db(rt, ["a"]) == 0  # not while migrating
    result = ReapResult()
    redispatch(rt, result, grace=0)
    assert result.redispatched == [] and rt.redis.llen(rt.rq_queue("a").key) == 0
    assert rq_to_db(rt, ["a"])[0].ok
    assert _drain_db(rt, ["a"]) == 1 and _runs(side) == Counter({"m1": 1})


def test_redis_lost_switches_from_the_ledger(
    make_config: ConfigFactory, sqlite_url: str, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cfg = make_config(sqlite_url, dead, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    for n in range(5):
        d = enqueue(rt, "jobhelpers:record", [str(side), f"r{n}"], queue="a", job_id=f"r{n}")
        assert not d.dispatched
    from jobfleet.schema import jobs

    with rt.ledger.engine.begin() as conn:  # two had reached Redis before it died
        conn.execute(jobs.update().where(jobs.c.id.in_(["r0", "r1"])).values(dispatched=True))
    [report] = rq_to_db(rt, ["a"], redis_lost=True)
    assert report.ok and report.before == 5 and report.after == 5
    assert report.unconfirmed == ["r0", "r1"]
    assert _drain_db(rt, ["a"]) == 5
    assert len(_runs(side)) == 5


def test_backup_and_verify(
    make_config: ConfigFactory,
    sqlite_url: str,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _fill(rt, side, 12, 4)
    rt.rq_queue("a").enqueue_in(timedelta(seconds=60), "jobhelpers.add", 1, 2)
    out = tmp_path / "bk"
    code = main(["backup", "--out", str(out), "--queues", "a", "--config", str(cfg), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["files"]["rq-a-queued.jsonl"]["count"] == 12
    assert data["files"]["rq-a-scheduled.jsonl"]["count"] == 1
    assert data["files"]["rq-a-jobs.jsonl"]["count"] == 13
    assert data["files"]["ledger-a.jsonl"]["count"] == 8
    assert main(["backup", "verify", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    again = main(["backup", "--out", str(out), "--queues", "a", "--config", str(cfg)])
    assert again == 2 and "already exists" in capsys.readouterr().err
    ledger_file = out / "ledger-a.jsonl"
    ledger_file.write_text(ledger_file.read_text().replace("a-1", "a-9", 1))
    assert main(["backup", "verify", str(out), "--json"]) == 1
    assert "ledger-a.jsonl: sha256" in json.loads(capsys.readouterr().out)["problems"][0]


def test_queue_cli_and_schema_upgrade(
    make_config: ConfigFactory, tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'v1.db'}"
    engine = Runtime.from_path(str(make_config(url, redis_url, queues=QUEUES))).ledger.engine
    # make it a v1 ledger: drop the v2 table and the v2 version row
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE jobfleet_queue_modes")
        conn.execute(schema_version.delete().where(schema_version.c.version == 2))
        conn.execute(insert(schema_version).values(version=1, applied_at=utcnow()))
    cfg = make_config(url, redis_url, queues=QUEUES)  # make_config runs init_db: the upgrade
    assert inspect(engine).has_table("jobfleet_queue_modes")
    assert {t for t in metadata.tables} <= set(inspect(engine).get_table_names())

    def run(*argv: str) -> tuple[int, Any]:
        code = main([*argv, "--config", str(cfg), "--json"])
        return code, json.loads(capsys.readouterr().out or "null")

    code, data = run("db", "init")
    assert (code, data) == (0, {"schema_version": 2, "changed": True})  # seeded a and b
    assert run("db", "init") == (0, {"schema_version": 2, "changed": False})
    code, data = run("queue", "list")
    assert data == {
        "queues": {
            "a": {"mode": "rq", "target": None, "stored": True},
            "b": {"mode": "rq", "target": None, "stored": True},
        }
    }
    assert run("queue", "set-mode", "a", "db")[1]["changed"] is True
    assert run("queue", "set-mode", "a", "db")[1]["changed"] is False
    assert main(["queue", "set-mode", "a", "migrating", "--config", str(cfg)]) == 2
    assert "target" in capsys.readouterr().err
    assert main(["queue", "set-mode", "zz", "db", "--config", str(cfg)]) == 2
    capsys.readouterr()
    assert run("db", "init")[1]["changed"] is False  # the config never flips a stored mode back
    assert run("queue", "list")[1]["queues"]["a"]["mode"] == "db"


def test_poller_follows_stored_modes_per_queue(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    modes.store(rt.ledger.engine, "a", "db")
    enqueue(rt, "jobhelpers:record", [str(side), "on-a"], queue="a")
    enqueue(rt, "jobhelpers:record", [str(side), "on-b"], queue="b")
    assert rt.redis.llen(rt.rq_queue("b").key) == 1 and rt.redis.llen(rt.rq_queue("a").key) == 0
    assert _drain_db(rt, ["a", "b"]) == 1
    wait_for(lambda: _runs(side) == Counter({"on-a": 1}), 5, "the db job")


def test_db_to_rq_schedules_rows_due_later_once(
    make_config: ConfigFactory, db_url: str, redis_url: str, tmp_path: Path
) -> None:
    from jobfleet.schema import jobs
    from jobfleet.worker import JobfleetWorker

    queues = {"a": {"mode": "db", "max_attempts": 3, "timeout": 60}}
    cfg = make_config(db_url, redis_url, queues=queues)
    rt = _rt(cfg)
    side = tmp_path / "side"
    for n in range(4):
        enqueue(rt, "jobhelpers:record", [str(side), f"s{n}"], queue="a", job_id=f"s{n}")
    later = (utcnow() + timedelta(seconds=3)).replace(microsecond=0)
    past = utcnow() - timedelta(seconds=30)  # a backoff already over: due now
    with rt.ledger.engine.begin() as conn:  # retries waiting out their backoff
        conn.execute(jobs.update().where(jobs.c.id.in_(["s0", "s1"])).values(run_after=later))
        conn.execute(jobs.update().where(jobs.c.id == "s2").values(run_after=past))
    [report] = db_to_rq(rt, ["a"])
    assert report.ok and (report.after, report.scheduled) == (4, 2), report
    queue = rt.rq_queue("a")
    assert sorted(queue.job_ids) == ["s2", "s3"]  # due now: on the queue
    registry = queue.scheduled_job_registry
    assert sorted(registry.get_job_ids()) == ["s0", "s1"]  # due later: scheduled, at its time
    for job_id in ("s0", "s1"):
        assert registry.get_expiration_time(queue.fetch_job(job_id)) == later.replace(tzinfo=UTC)
        assert queue.fetch_job(job_id).get_status() == "scheduled"
    # a crash after the RQ push, before the rows switched: the re-run must not duplicate
    with rt.ledger.engine.begin() as conn:
        conn.execute(jobs.update().values(mode="db", dispatched=True))
    modes.store(rt.ledger.engine, "a", "migrating", "rq")
    [again] = db_to_rq(rt, ["a"])
    assert again.ok and again.after == 4 and again.scheduled == 0, again
    assert sorted(queue.job_ids) == ["s2", "s3"]
    assert sorted(registry.get_job_ids()) == ["s0", "s1"]
    JobfleetWorker(rt, ["a"], "w").work(burst=True)  # runs only what is due
    assert _runs(side) == Counter({"s2": 1, "s3": 1})
    assert rt.ledger.require("s0").status == "pending"
    wait_for(lambda: utcnow() > later + timedelta(seconds=1), 10, "the scheduled time")
    JobfleetWorker(rt, ["a"], "w2").work(burst=True, with_scheduler=True)
    runs = _runs(side)
    assert runs == Counter({"s0": 1, "s1": 1, "s2": 1, "s3": 1}), runs
    assert rt.ledger.counts() == {"a": {"completed": 4}}


def test_db_to_rq_recreates_a_leftover_started_copy_of_a_pending_row(
    make_config: ConfigFactory, db_url: str, redis_url: str, tmp_path: Path
) -> None:
    """An emergency rollback killed the RQ worker mid-job: its RQ copy still says `started`
    (and sits in the started registry) while the ledger row went back to pending in db
    mode. Roll-forward must send it to RQ again, not take the leftover for a live job."""
    from jobfleet.worker import JobfleetWorker

    queues = {"a": {"mode": "db", "max_attempts": 3, "timeout": 60}}
    cfg = make_config(db_url, redis_url, queues=queues)
    rt = _rt(cfg)
    side = tmp_path / "side"
    enqueue(rt, "jobhelpers:record", [str(side), "killed"], queue="a", job_id="killed")
    queue = rt.rq_queue("a")
    leftover = queue.enqueue("jobhelpers.record", str(side), "killed", job_id="killed")
    queue.remove(leftover)  # what a killed worker leaves: started, in the registry, in no list
    leftover.set_status("started")
    rt.redis.zadd(queue.started_job_registry.key, {"killed": time.time() + 600})
    [report] = db_to_rq(rt, ["a"])
    assert report.ok and report.after == 1, report
    assert queue.job_ids == ["killed"]
    assert queue.started_job_registry.get_job_ids() == []
    JobfleetWorker(rt, ["a"], "w").work(burst=True)
    assert _runs(side) == Counter({"killed": 1})
    assert rt.ledger.require("killed").status == "completed"


def test_remove_trims_a_matching_head_and_otherwise_removes_each_id(
    make_config: ConfigFactory, sqlite_url: str, redis_url: str
) -> None:
    from jobfleet.migrate import _remove

    rt = _rt(make_config(sqlite_url, redis_url, queues=QUEUES))
    key = "test:list"
    rt.redis.rpush(key, *[f"j{n}" for n in range(6)])
    for n in range(6):
        rt.redis.hset(f"rq:job:j{n}", "status", "queued")
    _remove(rt, key, "list", ["j0", "j1"])  # the head: one LTRIM
    assert rt.redis.lrange(key, 0, -1) == [b"j2", b"j3", b"j4", b"j5"]
    _remove(rt, key, "list", ["j2", "j4"])  # not the head (j3 in between): each id alone
    assert rt.redis.lrange(key, 0, -1) == [b"j3", b"j5"]
    _remove(rt, key, "list", ["j3", "j5", "gone"])  # longer than the list: nothing extra
    assert rt.redis.llen(key) == 0
    assert [rt.redis.exists(f"rq:job:j{n}") for n in range(6)] == [0] * 6
    rt.redis.zadd("test:zset", {"z1": 1.0, "z2": 2.0, "z3": 3.0})
    rt.redis.hset("rq:job:z2", "status", "scheduled")
    _remove(rt, "test:zset", "zset", ["z2", "z3"])
    assert rt.redis.zrange("test:zset", 0, -1) == [b"z1"] and not rt.redis.exists("rq:job:z2")


def test_id_set_reads_chunk_edges_from_redis_and_the_ledger(
    make_config: ConfigFactory, db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobfleet import migrate

    monkeypatch.setattr(migrate, "VERIFY_CHUNK", 5)
    rt = _rt(make_config(db_url, redis_url, queues=QUEUES))
    for n in range(12):  # pending rows of a (and, sent to RQ, the same ids on its list)
        enqueue(rt, "jobhelpers:add", [n, 1], queue="a", job_id=f"a-{n:02d}")
    enqueue(rt, "jobhelpers:add", [0, 1], queue="b", job_id="b-00")
    rt.redis.rpush("test:ids", *[f"r-{n:02d}" for n in range(10)])  # exactly 2 chunks
    with migrate.IdSet() as ids:
        ids.add_pending(rt, "a")
        assert len(ids) == 12
        ids.add_redis(rt, rt.rq_queue("a").key, "list")  # the same 12 ids: no new one
        assert len(ids) == 12
        ids.add_redis(rt, "test:ids", "list")
        ids.add_redis(rt, "test:nothing", "zset")
        chunks = list(ids.chunks(5))
    assert [count for _, count in chunks] == [5, 5, 5, 5, 2]
    flat = [i for array, _ in chunks for i in json.loads(array)]
    assert flat == sorted([f"a-{n:02d}" for n in range(12)] + [f"r-{n:02d}" for n in range(10)])


def test_rq_to_db_verifies_in_chunks_smaller_than_the_queue(
    make_config: ConfigFactory, db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobfleet import migrate

    monkeypatch.setattr(migrate, "VERIFY_CHUNK", 7)
    monkeypatch.setenv("JOBFLEET_MIGRATE_BATCH", "6")
    rt = _rt(make_config(db_url, redis_url, queues=QUEUES))
    for n in range(30):
        enqueue(rt, "jobhelpers:add", [n, 1], queue="a", job_id=f"a-{n:02d}")
    rt.redis.rpush(rt.rq_queue("a").key, "ghost-1")  # no hash: named, left in Redis
    [report] = rq_to_db(rt, ["a"])
    assert (report.before, report.after, report.moved) == (31, 30, 30)
    assert report.unreadable == ["ghost-1"] and report.left_in_redis == 1 and not report.ok
    assert rt.redis.lrange(rt.rq_queue("a").key, 0, -1) == [b"ghost-1"]
