"""Idle memory: RSS of an idle ``jobfleet worker`` versus an idle plain ``rq worker``.

Both run against the same Redis; the jobfleet worker uses a SQLite ledger, then a
PostgreSQL one, and is a real worker: connected to Redis and to its ledger (it checks
the schema at start), registered, waiting for jobs. Compared: the main process (the
goal, <= 1.2x), and for honesty the whole process tree (jobfleet runs RQ's scheduler for
retries; the plain worker is shown with and without ``--with-scheduler``). Each variant
is measured in interleaved rounds; the median is reported with /proc/loadavg.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from _servers import (
    BIN,
    kill_tree,
    loadavg,
    median,
    postgres_server,
    quick,
    redis_server,
    session_members,
    start,
    write_config,
)

SETTLE = 3.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(redis_url: str, argv: list[str], config: Path | None = None) -> tuple[int, int]:
    from redis import Redis

    Redis.from_url(redis_url).flushall()  # no stale scheduler lock from the previous run
    proc = start(argv, config)
    try:
        time.sleep(SETTLE if not quick() else 2.0)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
        tree = sum(rss_kb(pid) for pid in session_members(proc.pid))
        return rss_kb(proc.pid), tree
    finally:
        kill_tree(proc)


def main() -> int:
    rounds = 1 if quick() else 3
    queues = {"default": {"mode": "rq"}}
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis, postgres_server() as pg:
        sqlite = write_config(Path(tmp) / "s.yml", f"sqlite:///{tmp}/l.db", redis.url, queues)
        postgres = write_config(Path(tmp) / "p.yml", pg.create_database("rss"), redis.url, queues)
        rq = [str(BIN / "rq"), "worker", "-S", "json", "-u", redis.url, "default"]
        ours = [str(BIN / "jobfleet"), "worker", "--queues", "default", "--name", "r"]
        variants: dict[str, tuple[list[str], Path | None]] = {
            "plain rq worker": (rq, None),
            "plain rq worker --with-scheduler": ([*rq, "--with-scheduler"], None),
            "jobfleet worker (SQLite)": (ours, sqlite),
            "jobfleet worker (PostgreSQL)": (ours, postgres),
        }
        print(f"rss: {rounds} interleaved round(s); loadavg {loadavg()}", flush=True)
        samples: dict[str, list[tuple[int, int]]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, (argv, config) in variants.items():
                samples[name].append(measure(redis.url, argv, config))
        result = {
            name: (median([m for m, _ in got]), median([t for _, t in got]))
            for name, got in samples.items()
        }
        print(f"{'idle worker (median)':<34}{'main MiB':>10}{'tree MiB':>10}")
        for name, (main_kb, tree_kb) in result.items():
            print(f"{name:<34}{main_kb / 1024:>10.1f}{tree_kb / 1024:>10.1f}")
        plain, plain_sched = result["plain rq worker"], result["plain rq worker --with-scheduler"]
        for name in ("jobfleet worker (SQLite)", "jobfleet worker (PostgreSQL)"):
            main_kb, tree_kb = result[name]
            ratio = main_kb / plain[0]
            print(
                f"{name}: main process ratio {ratio:.2f}x (goal <= 1.2x: "
                f"{'met' if ratio <= 1.2 else 'NOT met'}); "
                f"tree ratio vs --with-scheduler {tree_kb / plain_sched[1]:.2f}x"
            )
        print(f"loadavg after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
