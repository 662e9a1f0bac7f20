"""``jobfleet job retry ID`` routes by the queue's stored mode, as enqueue does.

Each case: a job that failed (a real run of a failing job through the ledger), the queue
switched to a mode, ``job retry`` through the CLI, then where the job went (the RQ queue,
the Celery broker, a pending ``db`` row) and that it really runs once there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ConfigFactory, Procs, wait_for
from test_celery import start_celery

from jobfleet import modes
from jobfleet.celery_send import queued_ids
from jobfleet.cli import main
from jobfleet.migrate import db_to_rq, rq_to_db
from jobfleet.poller import Poller
from jobfleet.runtime import Runtime
from jobfleet.worker import JobfleetWorker

pytestmark = pytest.mark.timeout(120)

QUEUES = {
    "q": {"mode": "rq", "max_attempts": 1, "timeout": 60},
    "ca": {"mode": "celery", "max_attempts": 1, "timeout": 60},
}


def _rt(cfg: Path) -> Runtime:
    return Runtime.from_path(str(cfg), log_stream=open(os.devnull, "w"))


def _failed_job(rt: Runtime, queue: str, side: Path, job_id: str) -> None:
    """A terminal row: written as enqueue writes it, claimed, failed (its only attempt)."""
    from jobfleet.dispatch import encode_args

    args, kwargs = encode_args([str(side), job_id], {})
    rt.ledger.insert(job_id, queue, "jobhelpers:record", args, kwargs, "rq", 1)
    row = rt.ledger.claim(job_id, "gone-worker")
    assert row is not None and rt.ledger.fail(row, "boom", "exception")
    assert rt.ledger.require(job_id).status == "failed"


def _retry(cfg: Path, job_id: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["job", "retry", job_id, "--config", str(cfg), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    assert (data["status"], data["attempts"]) == ("pending", 0)
    return data


def _in_rq(rt: Runtime, queue: str, job_id: str) -> bool:
    ids = [v.decode() for v in rt.redis.lrange(rt.rq_queue(queue).key, 0, -1)]
    return job_id in ids or bool(rt.redis.exists(f"rq:job:{job_id}"))


def _runs(side: Path) -> Counter[str]:
    return Counter(side.read_text().splitlines()) if side.exists() else Counter()


def test_retry_on_an_rq_queue_goes_to_rq(
    make_config: ConfigFactory,
    db_url: str,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = make_config(db_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _failed_job(rt, "q", side, "r1")
    data = _retry(cfg, "r1", capsys)
    assert (data["mode"], data["dispatched"]) == ("rq", True)
    assert [v.decode() for v in rt.redis.lrange(rt.rq_queue("q").key, 0, -1)] == ["r1"]
    JobfleetWorker(rt, ["q"], "w").work(burst=True)
    assert rt.ledger.require("r1").status == "completed"
    assert _runs(side) == Counter({"r1": 1})


def test_retry_on_a_db_queue_becomes_a_pending_db_row(
    make_config: ConfigFactory,
    db_url: str,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = make_config(db_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _failed_job(rt, "q", side, "d1")  # an rq row from before the rollback
    assert rq_to_db(rt, ["q"])[0].ok  # the queue is stored as db now
    data = _retry(cfg, "d1", capsys)
    assert (data["mode"], data["dispatched"]) == ("db", True)
    assert not _in_rq(rt, "q", "d1") and rt.redis.llen(rt.rq_queue("q").key) == 0
    modes.invalidate()
    assert Poller(rt, ["q"], "p").work(burst=True) == 1
    assert rt.ledger.require("d1").status == "completed"
    assert _runs(side) == Counter({"d1": 1})


def test_retry_on_a_celery_queue_is_sent_to_celery(
    make_config: ConfigFactory,
    sqlite_url: str,
    redis_url: str,
    tmp_path: Path,
    procs: Procs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _failed_job(rt, "ca", side, "c1")  # written in rq mode: the queue's mode decides
    data = _retry(cfg, "c1", capsys)
    assert (data["mode"], data["dispatched"]) == ("celery", True)
    assert queued_ids(rt, {"ca"}) == {"c1"}  # the message waits in the Celery broker
    assert not _in_rq(rt, "ca", "c1")
    start_celery(procs, cfg, "a@host1", queues="ca")
    wait_for(lambda: rt.ledger.require("c1").status == "completed", 30, "c1 to complete")
    assert _runs(side) == Counter({"c1": 1})


@pytest.mark.parametrize("target", ["rq", "db"])
def test_retry_while_migrating_waits_for_the_switch(
    make_config: ConfigFactory,
    sqlite_url: str,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    target: str,
) -> None:
    cfg = make_config(sqlite_url, redis_url, queues=QUEUES)
    rt = _rt(cfg)
    side = tmp_path / "side"
    _failed_job(rt, "q", side, "m1")
    modes.store(rt.ledger.engine, "q", modes.MIGRATING, target)
    data = _retry(cfg, "m1", capsys)
    # kept pending: nothing is dispatched while the queue migrates
    assert data["mode"] == target and not _in_rq(rt, "q", "m1")
    modes.invalidate()
    assert Poller(rt, ["q"], "p").work(burst=True) == 0
    assert _runs(side) == Counter()
    if target == "rq":
        assert data["dispatched"] is False
        [report] = db_to_rq(rt, ["q"])
        assert report.ok and report.after == 1
        assert [v.decode() for v in rt.redis.lrange(rt.rq_queue("q").key, 0, -1)] == ["m1"]
        JobfleetWorker(rt, ["q"], "w").work(burst=True)
    else:
        [report] = rq_to_db(rt, ["q"])
        assert report.ok and report.after == 1
        modes.invalidate()
        assert Poller(rt, ["q"], "p").work(burst=True) == 1
    assert rt.ledger.require("m1").status == "completed"
    assert _runs(side) == Counter({"m1": 1})
