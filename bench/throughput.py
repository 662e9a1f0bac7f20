"""Throughput: no-op jobs through 2 workers, plain RQ versus jobfleet (SQLite, PostgreSQL).

Measured side by side in one run: the same Redis, the same job, 2 forking workers in burst
mode each. Rate = jobs / (first job start -> last job end), read from RQ's own job records
for every variant. Goal: jobfleet >= 0.85x plain RQ. ``--quick`` runs 500 jobs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml
from _servers import BIN, postgres_server, quick, redis_server, rq_span, start, wait_all

WORKERS = 2
QUEUE = "bench"


def plain_rq(redis_url: str, jobs: int) -> float:
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    client = Redis.from_url(redis_url)
    client.flushall()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    ids = [queue.enqueue("_servers.noop").id for _ in range(jobs)]
    procs = [
        start(
            [
                str(BIN / "rq"),
                "worker",
                "--burst",
                "-S",
                "json",
                "-u",
                redis_url,
                "-n",
                f"plain-{i}",
                QUEUE,
            ]
        )
        for i in range(WORKERS)
    ]
    wait_all(procs, 600)
    return jobs / rq_span(redis_url, ids)


def jobfleet(redis_url: str, database_url: str, jobs: int, workdir: Path) -> float:
    from redis import Redis

    from jobfleet.dispatch import enqueue
    from jobfleet.runtime import Runtime
    from jobfleet.schema import init_db

    Redis.from_url(redis_url).flushall()
    config = workdir / f"jobfleet-{database_url.split(':')[0]}.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "redis_url": redis_url,
                "database_url": database_url,
                "queues": {QUEUE: {"mode": "rq", "max_attempts": 3, "timeout": 60}},
            }
        )
    )
    runtime = Runtime.from_path(str(config))
    init_db(runtime.ledger.engine)
    ids = [enqueue(runtime, "_servers:noop", queue=QUEUE).id for _ in range(jobs)]
    procs = [
        start(
            [str(BIN / "jobfleet"), "worker", "--queues", QUEUE, "--name", f"jf-{i}", "--burst"],
            config,
        )
        for i in range(WORKERS)
    ]
    wait_all(procs, 900)
    done = runtime.ledger.counts().get(QUEUE, {}).get("completed", 0)
    if done != jobs:
        raise RuntimeError(f"ledger shows {done} of {jobs} completed")
    return jobs / rq_span(redis_url, ids)


def main() -> int:
    jobs = 500 if quick() else 5000
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis, postgres_server() as pg:
        workdir = Path(tmp)
        print(f"throughput: {jobs} no-op jobs, {WORKERS} workers each", flush=True)
        base = plain_rq(redis.url, jobs)
        rows = [("plain RQ", base)]
        rows.append(
            ("jobfleet + SQLite", jobfleet(redis.url, f"sqlite:///{workdir}/l.db", jobs, workdir))
        )
        rows.append(
            (
                "jobfleet + PostgreSQL",
                jobfleet(redis.url, pg.create_database("bench"), jobs, workdir),
            )
        )
        print(f"{'variant':<24}{'jobs/s':>10}{'ratio':>8}")
        for name, rate in rows:
            print(f"{name:<24}{rate:>10.1f}{rate / base:>7.2f}x")
        worst = min(rate for _, rate in rows[1:]) / base
        print(f"goal >= 0.85x: {'met' if worst >= 0.85 else 'NOT met'} (worst {worst:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
