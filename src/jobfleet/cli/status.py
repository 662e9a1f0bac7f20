"""``jobfleet status`` (counts, oldest pending age, stale rows) and ``jobfleet health``."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from jobfleet.cli import Output
from jobfleet.cli._common import ready, runtime
from jobfleet.schema import STATUSES, jobs, utcnow

if TYPE_CHECKING:
    from jobfleet.runtime import Runtime

STUCK_FACTOR = 2.0
"""A row is stuck when the reaper should have acted ``STUCK_FACTOR * orphan_after`` ago."""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("status", parents=[common], help="job counts per queue and status")
    p.set_defaults(handler=run_status)
    p = subparsers.add_parser(
        "health",
        parents=[common],
        help="exit 0 only if the ledger and Redis (if a queue uses it) answer, nothing stuck",
    )
    p.set_defaults(handler=run_health)


def run_status(args: argparse.Namespace) -> Output:
    rt = ready(args)
    counts = rt.ledger.counts()
    queues = {q: dict.fromkeys(STATUSES, 0) for q in sorted(set(rt.config.queues) | set(counts))}
    for queue, by_status in counts.items():
        queues[queue].update(by_status)
    oldest = rt.ledger.oldest_pending()
    age = None if oldest is None else round((utcnow() - oldest).total_seconds(), 3)
    stale = [r.id for r in rt.ledger.stale_running(rt.config.orphan_after)]
    data = {"queues": queues, "oldest_pending_age": age, "stale_running": stale}
    lines = [f"{q}: " + ", ".join(f"{s} {n}" for s, n in c.items()) for q, c in queues.items()]
    lines.append(f"oldest pending: {'none' if age is None else f'{age:.0f}s'}")
    lines.append(f"stale running: {len(stale)}")
    return Output(data, "\n".join(lines))


def run_health(args: argparse.Namespace) -> Output:
    rt = runtime(args, logs_to_stderr=True)
    problems: list[str] = []
    stuck: list[str] = []
    try:
        from jobfleet.schema import require_schema

        require_schema(rt.ledger.engine)
        limit = rt.config.orphan_after * STUCK_FACTOR
        stuck = [r.id for r in rt.ledger.stale_running(limit)]
        cutoff = utcnow() - timedelta(seconds=limit)
        stuck += [
            r.id
            for r in rt.ledger.select_rows(
                jobs.c.status == "pending", jobs.c.dispatched.is_(False), jobs.c.created_at < cutoff
            )
        ]
        db_ok = True
    except Exception as exc:
        db_ok = False
        problems.append(f"database: {type(exc).__name__}")
    needed = needs_redis(rt, db_ok)
    redis_ok = True  # "redis" reports what Redis does; it counts only while a queue needs it
    if needed or rt.config.redis_url:
        try:
            redis_ok = bool(rt.redis.ping())
        except Exception as exc:
            redis_ok = False
            if needed:
                problems.append(f"redis: {type(exc).__name__}")
    if stuck:
        problems.append(f"{len(stuck)} stuck job(s)")
    healthy = (redis_ok or not needed) and db_ok and not stuck
    data = {"healthy": healthy, "redis": redis_ok, "database": db_ok, "stuck": stuck}
    text = "healthy" if healthy else "unhealthy: " + "; ".join(problems)
    return Output(data, text, exit_code=0 if healthy else 1)


def needs_redis(rt: Runtime, db_ok: bool) -> bool:
    """Whether a queue goes through Redis (``rq``, ``celery``, or migrating): by the modes
    stored in the ledger, so a fleet rolled back to ``db`` is healthy without Redis; by
    the config's when the ledger does not answer."""
    from jobfleet.modes import read

    if db_ok:
        try:
            return any(m.mode != "db" for m in read(rt.ledger.engine, rt.config).values())
        except Exception:  # the ledger went away meanwhile: the config decides
            pass
    return any(q.mode != "db" for q in rt.config.queues.values())
