"""Poller throughput: no-op jobs through 2 ``poll-worker`` processes (SQLite, PostgreSQL),
as a ratio to 2 plain RQ workers, measured side by side in one run.

Rates are jobs / (first start -> last end): from RQ's job records for plain RQ, from the
ledger for the pollers. ``--quick`` runs 300 jobs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _servers import (
    BIN,
    loadavg,
    postgres_server,
    quick,
    redis_server,
    span,
    start,
    wait_all,
    write_config,
)
from throughput import plain_rq

POLLERS = 2
QUEUE = "bench"


def pollers(database_url: str, jobs: int, workdir: Path) -> float:
    from jobfleet.dispatch import encode_args
    from jobfleet.runtime import Runtime
    from jobfleet.schema import jobs as table

    config = write_config(
        workdir / f"poll-{database_url.split(':')[0]}.yml",
        database_url,
        queues={QUEUE: {"mode": "db", "max_attempts": 3, "timeout": 60}},
        poll_interval=0.2,
    )
    runtime = Runtime.from_path(str(config))
    args, kwargs = encode_args([], {})
    for n in range(jobs):
        runtime.ledger.insert(f"p{n}", QUEUE, "_servers:noop", args, kwargs, "db", 3)
    procs = [
        start(
            [
                str(BIN / "jobfleet"),
                "poll-worker",
                "--queues",
                QUEUE,
                "--name",
                f"poller-{i}",
                "--burst",
            ],
            config,
        )
        for i in range(POLLERS)
    ]
    wait_all(procs, 900)
    rows = runtime.ledger.select_rows(table.c.status == "completed", limit=jobs + 1)
    if len(rows) != jobs:
        raise RuntimeError(f"{len(rows)} of {jobs} completed")
    starts = [r.first_started_at for r in rows if r.first_started_at]
    ends = [r.finished_at for r in rows if r.finished_at]
    return jobs / span(starts, ends)


def main() -> int:
    jobs = 300 if quick() else 2000
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis, postgres_server() as pg:
        workdir = Path(tmp)
        print(
            f"poller: {jobs} no-op jobs, {POLLERS} pollers vs {POLLERS} plain RQ workers; "
            f"loadavg {loadavg()}",
            flush=True,
        )
        done, seconds = plain_rq(redis.url, jobs)
        base = done / seconds
        rows = [
            ("plain RQ (2 workers)", base),
            ("pollers + SQLite", pollers(f"sqlite:///{workdir}/l.db", jobs, workdir)),
            ("pollers + PostgreSQL", pollers(pg.create_database("poll"), jobs, workdir)),
        ]
        print(f"{'variant':<24}{'jobs/s':>10}{'ratio':>8}")
        for name, rate in rows:
            print(f"{name:<24}{rate:>10.1f}{rate / base:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
