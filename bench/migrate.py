"""Migration: ``jobfleet migrate rq-to-db`` versus a raw copy, on SQLite and PostgreSQL.

The fixture (built fresh before every timed run, so each run starts from the same state):
one queue ``bench`` in ``rq`` mode holding N jobs, as ``jobfleet.enqueue`` leaves them, in
bulk: N ledger rows (``pending``, mode ``rq``, ``dispatched`` true, function
``_servers:noop``, args ``[n]``, no kwargs, 3 attempts) inserted in chunks, and the same N
jobs on the RQ queue under the same ids (RQ's JSON serializer, ``Queue.enqueue_many`` in
pipelined chunks: one job hash each plus the queue list). No plain-RQ jobs, no scheduled or
deferred ones.

Compared, each as its own process, wall time from spawn to exit and peak RSS from
``wait4`` (through a small launcher, see ``_LAUNCHER``):

- baseline: ``LRANGE`` of the whole queue plus one bulk ``INSERT`` statement of N rows
  (``INSERT ... SELECT`` over the ids passed as one array parameter) into an empty ledger
  table of a second database, with no safety at all (nothing verified, nothing removed
  from Redis, no job hash read, everything in memory at once);
- ``jobfleet migrate rq-to-db --queues bench --json``: batched, crash safe, verified; its
  result must say ok with N jobs after, and the ledger must hold N pending ``db`` rows.

Rounds alternate which variant runs first. The figure per cell is the median. Goal: time
<= 2x the baseline; the migration's peak RSS must not grow with N (10k versus 100k).
``--quick`` runs 10k jobs only, one round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from _servers import BIN, PostgresServer, env, postgres_server, quick, redis_server

QUEUE = "bench"
FUNC = "_servers:noop"
CHUNK = 5000


@dataclass
class Run:
    seconds: float
    rss_kib: int


def _config(workdir: Path, redis_url: str, database_url: str, name: str) -> Path:
    path = workdir / f"{name}.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "redis_url": redis_url,
                "database_url": database_url,
                "queues": {QUEUE: {"mode": "rq", "max_attempts": 3, "timeout": 60}},
            }
        )
    )
    return path


def populate(config: Path, jobs: int, ledger: bool = True) -> None:
    """The fixture: N ledger rows and N RQ jobs, as enqueue leaves them (see above).

    ``ledger`` false: the RQ jobs only, and an empty ledger (the baseline's target).
    """
    from rq import Queue

    from jobfleet import modes
    from jobfleet.dispatch import FAILURE_TTL, RESULT_TTL, rq_func_name
    from jobfleet.runtime import Runtime
    from jobfleet.schema import init_db, utcnow
    from jobfleet.schema import jobs as table

    runtime = Runtime.from_path(str(config), log_stream=open(os.devnull, "w"))  # noqa: SIM115
    runtime.redis.flushall()
    engine = runtime.ledger.engine
    init_db(engine)
    modes.seed(engine, runtime.config)
    rq_queue = runtime.rq_queue(QUEUE)
    for start in range(0, jobs, CHUNK):
        numbers = range(start, min(jobs, start + CHUNK))
        now = utcnow()
        rows = [
            {
                "id": f"job-{n:07d}",
                "queue": QUEUE,
                "func": FUNC,
                "args": f"[{n}]",
                "kwargs": "{}",
                "status": "pending",
                "mode": "rq",
                "progress": 0.0,
                "attempts": 0,
                "max_attempts": 3,
                "created_at": now,
                "dispatched": True,
            }
            for n in numbers
        ]
        if ledger:
            with engine.begin() as conn:
                conn.execute(table.insert(), rows)
        datas = [
            Queue.prepare_data(
                rq_func_name(FUNC),
                args=[n],
                kwargs={},
                timeout=60,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                description=f"jobfleet {FUNC}",
                job_id=f"job-{n:07d}",
            )
            for n in numbers
        ]
        with runtime.redis.pipeline() as pipe:
            rq_queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
    if rq_queue.count != jobs:
        raise RuntimeError(f"fixture: {rq_queue.count} of {jobs} jobs on the RQ queue")
    engine.dispose()


def fresh_database(kind: str, workdir: Path, pg: PostgresServer, name: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / name}.db"
    return pg.create_database(name)


# Forks the measured command from a small process and writes its peak RSS (wait4).
# Measured straight from this bench process, ru_maxrss would report at least this
# process's own RSS: Linux carries the parent's high-water mark across fork + exec.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def spawn(argv: list[str], config: Path, out: Path) -> tuple[Run, int]:
    """Run ``argv`` to its end: wall seconds, its peak RSS (KiB) and its exit code."""
    rss = out.with_suffix(".rss")
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(rss)]
    with open(out, "wb") as stdout:
        began = time.perf_counter()
        code = subprocess.call([*launcher, *argv], env=env(config), stdout=stdout, stderr=stdout)
        seconds = time.perf_counter() - began
    return Run(seconds, int(rss.read_text())), code


def run_baseline(
    kind: str, workdir: Path, redis_url: str, pg: PostgresServer, jobs: int, n: int
) -> Run:
    config = _config(workdir, redis_url, fresh_database(kind, workdir, pg, f"b{n}"), f"b{n}")
    populate(config, jobs, ledger=False)
    out = workdir / f"baseline-{n}.out"
    run, code = spawn([sys.executable, __file__, "--baseline-child"], config, out)
    if code != 0 or out.read_text().strip() != str(jobs):
        raise RuntimeError(f"baseline failed ({code}): {out.read_text()[-2000:]}")
    return run


def run_migrate(
    kind: str, workdir: Path, redis_url: str, pg: PostgresServer, jobs: int, n: int
) -> Run:
    from sqlalchemy import func, select

    from jobfleet.runtime import Runtime
    from jobfleet.schema import jobs as table

    config = _config(workdir, redis_url, fresh_database(kind, workdir, pg, f"m{n}"), f"m{n}")
    populate(config, jobs)
    out = workdir / f"migrate-{n}.out"
    argv = [str(BIN / "jobfleet"), "migrate", "rq-to-db", "--queues", QUEUE, "--json"]
    run, code = spawn(argv, config, out)
    text = out.read_text()
    if code != 0:
        raise RuntimeError(f"migrate exited {code}: {text[-2000:]}")
    result = json.loads(text)["queues"][QUEUE]
    if not result["ok"] or result["after"] != jobs or result["moved"] != jobs:
        raise RuntimeError(f"migrate result: {result}")
    runtime = Runtime.from_path(str(config))
    query = select(func.count()).where(table.c.status == "pending", table.c.mode == "db")
    with runtime.ledger.engine.connect() as conn:
        rows = conn.execute(query).scalar()
    runtime.ledger.engine.dispose()
    if rows != jobs or runtime.rq_queue(QUEUE).count != 0:
        raise RuntimeError(f"after migrate: {rows} db rows, {runtime.rq_queue(QUEUE).count} in RQ")
    return run


def baseline_child() -> int:
    """LRANGE + one bulk INSERT statement, nothing else (the runbook's script, minus its losses).

    The ids go in as one parameter (a JSON array on SQLite, a text array on PostgreSQL), so
    the INSERT is a single statement: the fastest raw copy, not a row-at-a-time loop.
    """
    from jobfleet.runtime import Runtime
    from jobfleet.schema import utcnow

    runtime = Runtime.from_path(os.environ["JOBFLEET_CONFIG"])
    ids = [v.decode() for v in runtime.redis.lrange(runtime.rq_queue(QUEUE).key, 0, -1)]
    engine = runtime.ledger.engine
    columns = "id, queue, func, args, kwargs, status, mode, progress, attempts, max_attempts"
    constants = f"'{QUEUE}', '{FUNC}', '[]', '{{}}', 'pending', 'db', 0, 0, 3"
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"INSERT INTO jobfleet_jobs ({columns}, created_at, dispatched) "
                f"SELECT value, {constants}, ?, 1 FROM json_each(?)",
                (str(utcnow()), json.dumps(ids)),
            )
        else:
            conn.exec_driver_sql(
                f"INSERT INTO jobfleet_jobs ({columns}, created_at, dispatched) "
                f"SELECT id, {constants}, %(now)s, true FROM unnest(%(ids)s::text[]) AS id",
                {"now": utcnow(), "ids": ids},
            )
    print(len(ids))
    return 0


def main() -> int:
    if "--baseline-child" in sys.argv:
        return baseline_child()
    sizes = [10_000] if quick() else [10_000, 100_000]
    rounds = {10_000: 1 if quick() else 3, 100_000: 2}
    print(f"migrate rq-to-db: loadavg at start {Path('/proc/loadavg').read_text().strip()}")
    print(
        f"{'jobs':>7} {'ledger':<11}{'base s':>8}{'migr s':>8}{'ratio':>7}"
        f"{'base MiB':>10}{'migr MiB':>10}  rounds"
    )
    results: dict[tuple[int, str], tuple[list[Run], list[Run]]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as redis,
        postgres_server() as pg,
    ):
        workdir = Path(tmp)
        counter = 0
        for jobs in sizes:
            for kind in ("sqlite", "postgresql"):
                base: list[Run] = []
                migr: list[Run] = []
                for r in range(rounds[jobs]):
                    order: list[tuple[list[Run], Callable[..., Run]]] = [
                        (base, run_baseline),
                        (migr, run_migrate),
                    ]
                    for sink, fn in order if r % 2 == 0 else reversed(order):
                        counter += 1
                        sink.append(fn(kind, workdir, redis.url, pg, jobs, counter))
                results[(jobs, kind)] = (base, migr)
                b = statistics.median(x.seconds for x in base)
                m = statistics.median(x.seconds for x in migr)
                print(
                    f"{jobs:>7} {kind:<11}{b:>8.2f}{m:>8.2f}{m / b:>6.2f}x"
                    f"{max(x.rss_kib for x in base) / 1024:>10.1f}"
                    f"{max(x.rss_kib for x in migr) / 1024:>10.1f}  "
                    + " ".join(
                        f"{x.seconds:.2f}/{y.seconds:.2f}" for x, y in zip(base, migr, strict=True)
                    ),
                    flush=True,
                )
    worst = max(
        statistics.median(x.seconds for x in m) / statistics.median(x.seconds for x in b)
        for b, m in results.values()
    )
    print(f"time goal <= 2x: {'met' if worst <= 2 else 'NOT met'} (worst {worst:.2f}x)")
    if len(sizes) > 1:
        for kind in ("sqlite", "postgresql"):
            small = max(x.rss_kib for x in results[(sizes[0], kind)][1])
            large = max(x.rss_kib for x in results[(sizes[-1], kind)][1])
            print(
                f"{kind}: migrate peak RSS {small / 1024:.1f} MiB at {sizes[0]}, "
                f"{large / 1024:.1f} MiB at {sizes[-1]} ({large / small:.2f}x)"
            )
    print(f"loadavg at end {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
