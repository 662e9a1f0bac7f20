"""Throughput: no-op jobs through 2 workers, plain RQ versus jobfleet (SQLite, PostgreSQL).

Measured side by side in one run: the same Redis, the same job function (RQ imports it in
each work horse, for both), 2 forking workers in burst mode each. The machine is shared,
so the variants run in interleaved rounds (the order rotates each round) and each rate
is total jobs / total busy time over its rounds; busy time of a round = first job start
-> last job end, read from RQ's own job records for every variant. Goal: jobfleet >=
0.85x plain RQ. 5,000 jobs per variant (5 rounds of 1,000); ``--quick`` runs 2 rounds of
250. /proc/loadavg is printed before and after.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _servers import (
    BIN,
    loadavg,
    postgres_server,
    quick,
    redis_server,
    rq_span,
    start,
    wait_all,
    write_config,
)

WORKERS = 2
QUEUE = "bench"
QUEUES = {QUEUE: {"mode": "rq", "max_attempts": 3, "timeout": 60}}


def plain_rq(redis_url: str, jobs: int) -> tuple[int, float]:
    """One round of plain RQ: (jobs, busy seconds)."""
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    client = Redis.from_url(redis_url)
    client.flushall()
    queue = Queue(QUEUE, connection=client, serializer=JSONSerializer)
    ids = [queue.enqueue("_servers.noop").id for _ in range(jobs)]
    argv = [str(BIN / "rq"), "worker", "--burst", "-S", "json", "-u", redis_url, QUEUE]
    procs = [start([*argv, "-n", f"plain-{i}"]) for i in range(WORKERS)]
    wait_all(procs, 600)
    return jobs, rq_span(redis_url, ids)


def jobfleet(redis_url: str, config: Path, jobs: int) -> tuple[int, float]:
    """One round of the jobfleet worker on the ledger of ``config``: (jobs, busy seconds)."""
    from redis import Redis

    from jobfleet.dispatch import enqueue
    from jobfleet.runtime import Runtime

    Redis.from_url(redis_url).flushall()
    runtime = Runtime.from_path(str(config))
    before = runtime.ledger.counts().get(QUEUE, {}).get("completed", 0)
    ids = [enqueue(runtime, "_servers:noop", queue=QUEUE).id for _ in range(jobs)]
    argv = [str(BIN / "jobfleet"), "worker", "--queues", QUEUE, "--burst"]
    procs = [start([*argv, "--name", f"jf-{i}"], config) for i in range(WORKERS)]
    wait_all(procs, 900)
    done = runtime.ledger.counts().get(QUEUE, {}).get("completed", 0) - before
    if done != jobs:
        raise RuntimeError(f"ledger shows {done} of {jobs} completed")
    return jobs, rq_span(redis_url, ids)


def main() -> int:
    rounds, per_round = (2, 250) if quick() else (5, 1000)
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis, postgres_server() as pg:
        workdir = Path(tmp)
        sqlite = write_config(
            workdir / "sqlite.yml", f"sqlite:///{workdir}/l.db", redis.url, QUEUES
        )
        postgres = write_config(workdir / "pg.yml", pg.create_database("bench"), redis.url, QUEUES)
        variants: dict[str, Callable[[], tuple[int, float]]] = {
            "plain RQ": lambda: plain_rq(redis.url, per_round),
            "jobfleet + SQLite": lambda: jobfleet(redis.url, sqlite, per_round),
            "jobfleet + PostgreSQL": lambda: jobfleet(redis.url, postgres, per_round),
        }
        print(
            f"throughput: {rounds * per_round} no-op jobs per variant ({rounds} interleaved "
            f"rounds of {per_round}), {WORKERS} workers each; loadavg {loadavg()}",
            flush=True,
        )
        totals = {name: [0, 0.0] for name in variants}
        names = list(variants)
        for number in range(rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            for name in order:
                jobs, seconds = variants[name]()
                totals[name][0] += jobs
                totals[name][1] += seconds
                print(f"  round {number + 1}: {name:<22}{jobs / seconds:>8.1f} jobs/s", flush=True)
        rates = {name: jobs / seconds for name, (jobs, seconds) in totals.items()}
        base = rates["plain RQ"]
        print(f"{'variant':<24}{'jobs/s':>10}{'ratio':>8}")
        for name, rate in rates.items():
            print(f"{name:<24}{rate:>10.1f}{rate / base:>7.2f}x")
        worst = min(rate for name, rate in rates.items() if name != "plain RQ") / base
        print(f"goal >= 0.85x: {'met' if worst >= 0.85 else 'NOT met'} (worst {worst:.2f}x)")
        print(f"loadavg after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
