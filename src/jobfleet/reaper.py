"""One reaper pass, startup cleanup of one worker, and pruning.

* Orphans: a ``running`` row whose heartbeat is older than ``orphan_after`` lost its
  worker. It is requeued under the same id while attempts remain (``first_started_at``
  and ``progress`` are kept), else failed with error kind ``orphaned``. The release is one
  conditional UPDATE that re-checks the stale heartbeat, so two reapers never requeue a
  job twice and a job whose worker is alive (fresh heartbeat) is never touched.
* Lost pending rows (``rq`` mode): a row never dispatched (Redis was down at enqueue), or
  whose RQ job is missing or finished in Redis (Redis lost its data), or whose retry is
  overdue by ``orphan_after`` (no scheduler alive) is sent again. The send is claimed
  first with a conditional UPDATE, so two reapers send it once.
* Startup cleanup touches only rows running under one worker name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from jobfleet import logs
from jobfleet.dispatch import LIVE_RQ_STATUSES, rq_statuses, send
from jobfleet.ledger import iso
from jobfleet.schema import jobs, utcnow

if TYPE_CHECKING:
    from jobfleet.ledger import JobRow
    from jobfleet.runtime import Runtime

REDISPATCH_GRACE = 5.0
"""Seconds a new pending row is left alone (its enqueue may still be sending it)."""

BATCH = 1000
"""Rows looked at per pass and per kind; the next pass takes the rest."""


@dataclass
class ReapResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)


def _log(runtime: Runtime, event: str, row: JobRow, **fields: object) -> None:
    logs.emit_row(event, row, row.worker, stream=runtime.stream, **fields)


def release(
    runtime: Runtime, row: JobRow, message: str, kind: str, stale: bool, result: ReapResult
) -> None:
    """Requeue (and send) or fail one running row whose worker is gone."""
    cutoff = utcnow() - timedelta(seconds=runtime.config.orphan_after) if stale else None
    new = runtime.ledger.release(row, message, kind, stale_before=cutoff)
    if new is None:
        return  # someone else handled it, or the worker is alive after all
    retry = new.status == "pending"
    _log(
        runtime, "JOB_ORPHANED", row, error=message, error_kind=kind, fatal=False, will_retry=retry
    )
    if retry:
        result.requeued.append(row.id)
        _log(
            runtime,
            "JOB_REQUEUED",
            row,
            error=message,
            error_kind=kind,
            fatal=False,
            will_retry=True,
        )
        _send(runtime, new)
    else:
        result.failed.append(row.id)
        _log(
            runtime,
            "JOB_FAILED",
            row,
            error=message,
            error_kind=kind,
            fatal=False,
            will_retry=False,
        )


def _send(runtime: Runtime, row: JobRow) -> bool:
    from jobfleet.modes import route

    return route(runtime, row)  # by the queue's stored mode, not the row's


def reap(runtime: Runtime, grace: float = REDISPATCH_GRACE) -> ReapResult:
    """One pass: orphans first, then pending rows lost on the way to RQ.

    ``grace``: pending rows younger than this many seconds are left to their enqueue.
    """
    result = ReapResult()
    for row in runtime.ledger.stale_running(runtime.config.orphan_after):
        last = iso(row.heartbeat_at) or "never"
        message = f"worker {row.worker} stopped heartbeating (last heartbeat {last})"
        release(runtime, row, message, "orphaned", stale=True, result=result)
    if runtime.has_rq_queues():
        redispatch(runtime, result, grace)
    if any(q.mode == "celery" for q in runtime.config.queues.values()):
        from jobfleet.celery_send import redispatch as redispatch_celery

        redispatch_celery(runtime, result, grace, BATCH)
    return result


def redispatch(runtime: Runtime, result: ReapResult, grace: float = REDISPATCH_GRACE) -> None:
    """Send again the ``rq``-mode pending rows that no queue holds."""
    now = utcnow()
    young = now - timedelta(seconds=grace)
    overdue = now - timedelta(seconds=runtime.config.orphan_after)
    from jobfleet.modes import in_mode, modes

    rq_queues = in_mode(runtime, sorted(modes(runtime)), "rq")  # never a migrating queue
    rows = runtime.ledger.select_rows(
        jobs.c.status == "pending",
        jobs.c.mode == "rq",
        jobs.c.queue.in_(rq_queues),
        jobs.c.created_at <= young,
        limit=BATCH,
    )
    dispatched = [r for r in rows if r.dispatched]
    statuses = rq_statuses(runtime, [r.id for r in dispatched])
    # "queued" but in no list: popped by a client that died (old rows only; one read per queue)
    doubtful = {r.queue for r in dispatched if statuses.get(r.id) == "queued" and _old(r, overdue)}
    listed = queued_ids(runtime, doubtful)
    for row in rows:
        if row.dispatched:
            status = statuses.get(row.id)
            if status in LIVE_RQ_STATUSES and not (
                (status == "scheduled" and row.run_after is not None and row.run_after < overdue)
                or (row.queue in doubtful and _old(row, overdue) and row.id not in listed)
            ):
                continue
        if runtime.ledger.claim_send(row) and send(runtime, row):
            result.redispatched.append(row.id)


def _old(row: JobRow, before: datetime) -> bool:
    return (row.run_after or row.created_at) < before


def queued_ids(runtime: Runtime, queues: set[str]) -> set[str]:
    """Every job id in the given RQ queues and their intermediate lists."""
    ids: set[str] = set()
    for name in queues:
        queue = runtime.rq_queue(name)
        for key in (queue.key, queue.intermediate_queue_key):
            ids.update(
                v.decode() if isinstance(v, bytes) else str(v)
                for v in runtime.redis.lrange(key, 0, -1)
            )
    return ids


def startup_cleanup(runtime: Runtime, name: str) -> ReapResult:
    """Release the rows left running under worker ``name`` (and only those)."""
    result = ReapResult()
    rows = runtime.ledger.select_rows(jobs.c.status == "running", jobs.c.worker == name)
    for row in rows:
        message = f"worker {name} restarted during the job"
        release(runtime, row, message, "worker_restarted", stale=False, result=result)
    return result


def prune(runtime: Runtime, older_than: timedelta) -> int:
    """Delete terminal rows that finished more than ``older_than`` ago."""
    return runtime.ledger.prune(older_than)
