"""The database poller: atomic claims, the shared wrapper, warm shutdown, orphans."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ConfigFactory, Procs, wait_for

from jobfleet.dispatch import encode_args
from jobfleet.poller import Poller
from jobfleet.reaper import reap
from jobfleet.runtime import Runtime

pytestmark = pytest.mark.timeout(180)


def _rt(cfg: Path) -> Runtime:
    return Runtime.from_path(str(cfg))


def test_1000_jobs_4_pollers_each_runs_exactly_once(
    make_config: ConfigFactory, db_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(db_url)
    rt = _rt(cfg)
    side = tmp_path / "side"
    total = 1000
    for n in range(total):
        args, kwargs = encode_args([str(side), f"job-{n}"], {})
        rt.ledger.insert(f"job-{n}", "default", "jobhelpers:record", args, kwargs, "db", 3)
    pollers = [procs.poller(cfg, f"p{i}", "--burst") for i in range(4)]
    for poller in pollers:
        assert poller.wait(150) == 0, procs.output(poller)
    runs = Counter(side.read_text().splitlines())
    assert len(runs) == total
    assert set(runs.values()) == {1}, [t for t, c in runs.items() if c > 1][:5]
    assert rt.ledger.counts() == {"default": {"completed": total}}
    workers = Counter(
        e["worker"] for p in pollers for e in procs.events(p) if e["event"] == "JOB_SUCCESS"
    )
    assert sum(workers.values()) == total
    assert len(workers) >= 2  # the pollers really shared the work


def test_poller_classifies_and_retries_like_the_worker(
    make_config: ConfigFactory, sqlite_url: str, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url)
    rt = _rt(cfg)
    from jobfleet.dispatch import enqueue

    a = enqueue(rt, "jobhelpers:http_error", [str(tmp_path / "404"), 404])
    b = enqueue(rt, "jobhelpers:status_error", [str(tmp_path / "503"), 503], max_attempts=2)
    c = enqueue(rt, "jobhelpers:add", [2, 3])
    d = enqueue(rt, "jobhelpers:nothing_here", [], check_func=False)
    assert a.dispatched  # db mode: the ledger is the queue
    poller = Poller(rt, ["default"], "p1")
    assert poller.work(burst=True) == 5
    assert [rt.ledger.require(j.id).status for j in (a, b, c, d)] == [
        "failed",
        "failed",
        "completed",
        "failed",
    ]
    assert rt.ledger.require(a.id).attempts == 1
    assert rt.ledger.require(b.id).attempts == 2
    assert rt.ledger.require(d.id).error_kind == "unknown_function"


def test_poller_respects_backoff(
    make_config: ConfigFactory, sqlite_url: str, tmp_path: Path
) -> None:
    cfg = make_config(sqlite_url, backoff_base=0.4, backoff_max=0.4)
    rt = _rt(cfg)
    from jobfleet.dispatch import enqueue

    job = enqueue(rt, "jobhelpers:flaky_once", [str(tmp_path / "flaky")])
    poller = Poller(rt, ["default"], "p1")
    assert poller.run_once()
    row = rt.ledger.require(job.id)
    assert row.status == "pending" and row.run_after is not None
    assert row.error_kind == "http_503"
    deadline = time.monotonic() + 5
    while rt.ledger.require(job.id).status != "completed" and time.monotonic() < deadline:
        poller.run_once()
        time.sleep(0.02)
    assert rt.ledger.require(job.id).status == "completed"


def test_poller_timeout_and_warm_shutdown(
    make_config: ConfigFactory, sqlite_url: str, procs: Procs, tmp_path: Path
) -> None:
    queues = {
        "default": {"mode": "db", "max_attempts": 1, "timeout": 1},
        "long": {"mode": "db", "max_attempts": 1, "timeout": 30},
    }
    cfg = make_config(sqlite_url, queues=queues)
    rt = _rt(cfg)
    from jobfleet.dispatch import enqueue

    side = tmp_path / "side"
    timed = enqueue(rt, "jobhelpers:slow", [str(side), "t", 5])
    poller = procs.poller(cfg, "p1", queues="default")
    wait_for(lambda: rt.ledger.require(timed.id).status == "failed", 20, "the timeout")
    assert rt.ledger.require(timed.id).error_kind == "timeout"
    warm = enqueue(rt, "jobhelpers:slow", [str(side), "w", 1.5], queue="long")
    second = procs.poller(cfg, "p2", queues="long")
    wait_for(lambda: rt.ledger.require(warm.id).status == "running", 20, "the long job")
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert rt.ledger.require(warm.id).status == "completed"
    poller.send_signal(signal.SIGTERM)
    assert poller.wait(30) == 0


def test_killed_poller_job_is_requeued_by_the_reaper(
    make_config: ConfigFactory, db_url: str, procs: Procs, tmp_path: Path
) -> None:
    cfg = make_config(db_url, orphan_after=1.5, heartbeat_interval=0.3)
    rt = _rt(cfg)
    from jobfleet.dispatch import enqueue

    side = tmp_path / "side"
    job = enqueue(rt, "jobhelpers:with_progress", [str(side), 30])
    first = procs.poller(cfg, "p1")
    wait_for(lambda: side.exists(), 20, "the job to start")
    before = rt.ledger.require(job.id)
    assert before.progress == 40.0
    procs.kill_tree(first)
    wait_for(lambda: job.id in reap(rt).requeued, 10, "the requeue")
    row = rt.ledger.require(job.id)
    assert (row.status, row.progress, row.error_kind) == ("pending", 40.0, "orphaned")
    assert row.first_started_at == before.first_started_at
    assert json.loads(row.args)[1] == 30
