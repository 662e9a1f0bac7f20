"""Idle memory: RSS of an idle ``jobfleet worker`` versus an idle plain ``rq worker``.

Both run against the same Redis; the jobfleet worker uses a SQLite ledger. Compared: the
main process (the goal, <= 1.2x), and for honesty the whole process tree (jobfleet runs
RQ's scheduler for retries; the plain worker is shown with and without ``--with-scheduler``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml
from _servers import BIN, kill_tree, quick, redis_server, session_members, start

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
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis:
        config = Path(tmp) / "jobfleet.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "redis_url": redis.url,
                    "database_url": f"sqlite:///{tmp}/ledger.db",
                    "queues": {"default": {"mode": "rq"}},
                }
            )
        )
        from jobfleet.runtime import Runtime
        from jobfleet.schema import init_db

        init_db(Runtime.from_path(str(config)).ledger.engine)
        rq = [str(BIN / "rq"), "worker", "-S", "json", "-u", redis.url, "default"]
        plain = measure(redis.url, rq)
        plain_sched = measure(redis.url, [*rq, "--with-scheduler"])
        ours = measure(
            redis.url,
            [str(BIN / "jobfleet"), "worker", "--queues", "default", "--name", "r"],
            config,
        )
        print(f"{'idle worker':<34}{'main MiB':>10}{'tree MiB':>10}")
        for name, (main_kb, tree_kb) in (
            ("plain rq worker", plain),
            ("plain rq worker --with-scheduler", plain_sched),
            ("jobfleet worker (SQLite)", ours),
        ):
            print(f"{name:<34}{main_kb / 1024:>10.1f}{tree_kb / 1024:>10.1f}")
        ratio = ours[0] / plain[0]
        verdict = "met" if ratio <= 1.2 else "NOT met"
        print(
            f"main process ratio {ratio:.2f}x (goal <= 1.2x: {verdict}); "
            f"tree ratio vs --with-scheduler {ours[1] / plain_sched[1]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
