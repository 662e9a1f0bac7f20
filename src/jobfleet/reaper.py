"""One reaper pass, startup cleanup of one worker, and pruning.

* Orphans: a ``running`` row whose heartbeat is older than ``orphan_after`` lost its
  worker. It is requeued under the same id while attempts remain (``first_started_at``
  and ``progress`` are kept), else failed with error kind ``orphaned``. The release is one
  conditional UPDATE that re-checks the stale heartbeat, so two reapers never requeue a
  job twice and a job whose worker is alive (fresh heartbeat) is never touched.
  A stale row whose attempt is marked alive in Redis is left alone: its RQ worker lives
  but cannot reach the ledger, and writes the outcome when it can
  (:mod:`jobfleet.horse_channel`).
* Lost pending rows (``rq`` mode): a row never dispatched (Redis was down at enqueue), or
  whose RQ job is missing or finished in Redis (Redis lost its data), or whose retry is
  overdue by ``orphan_after`` (no scheduler alive), or whose RQ job was taken by a worker
  that died before it claimed the row, is sent again. The send is claimed first with a
  conditional UPDATE, so two reapers send it once; the claim marks the row unsent until
  the send is done, and a row whose send was claimed less than ``REDISPATCH_GRACE``
  seconds ago is left to the reaper that claimed it.
* A worker dies between RQ's dequeue and the ledger claim: the row is still pending and
  its RQ job is either in the queue's intermediate list (one-queue workers; RQ itself
  notices only after its next maintenance, up to about 10 minutes) or in no list at all
  (several queues). A live worker claims within milliseconds of the dequeue (and gives a
  job back when the ledger is unreachable), so a job seen in the intermediate list, in
  the same pending state (attempt and last send), by a pass ``orphan_after`` seconds
  earlier is abandoned (the first sighting is a Redis key). So is a
  pending row whose RQ job is ``started`` by a worker whose registration is gone. If the
  worker was only slow after all, its claim or the resent copy's claim loses (the claim
  is conditional), so the job still runs once.
* Startup cleanup touches only rows running under one worker name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from jobfleet import logs
from jobfleet.dispatch import LIVE_RQ_STATUSES, rq_statuses, send
from jobfleet.horse_channel import alive_key
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
    stale = runtime.ledger.stale_running(runtime.config.orphan_after)
    alive = marked_alive(runtime, stale)
    for row in stale:
        if row.id in alive:
            continue  # its worker lives but cannot reach the ledger
        last = iso(row.heartbeat_at) or "never"
        message = f"worker {row.worker} stopped heartbeating (last heartbeat {last})"
        release(runtime, row, message, "orphaned", stale=True, result=result)
    if runtime.has_rq_queues():
        redispatch(runtime, result, grace)
    if any(q.mode == "celery" for q in runtime.config.queues.values()):
        from jobfleet.celery_send import redispatch as redispatch_celery

        redispatch_celery(runtime, result, grace, BATCH)
    return result


def marked_alive(runtime: Runtime, rows: list[JobRow]) -> set[str]:
    """Ids of the rows whose attempt a live RQ worker marked alive in Redis."""
    if not rows or not runtime.config.redis_url:
        return set()
    try:
        with runtime.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.exists(alive_key(row))
            found = pipe.execute()
    except Exception:  # Redis is away too: the heartbeat alone decides
        return set()
    return {row.id for row, hit in zip(rows, found, strict=True) if hit}


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
    abandoned = abandoned_ids(runtime, [r for r in dispatched if statuses.get(r.id) != "scheduled"])
    for row in rows:
        if row.send_claimed_after(young):
            continue  # another reaper is sending it
        if row.dispatched:
            status = statuses.get(row.id)
            if status in LIVE_RQ_STATUSES and not (
                (status == "scheduled" and row.run_after is not None and row.run_after < overdue)
                or (row.queue in doubtful and _old(row, overdue) and row.id not in listed)
                or row.id in abandoned
            ):
                continue
        if runtime.ledger.claim_send(row):
            if row.id in abandoned:
                runtime.redis.lrem(runtime.rq_queue(row.queue).intermediate_queue_key, 0, row.id)
            if send(runtime, row):
                result.redispatched.append(row.id)


def abandoned_ids(runtime: Runtime, rows: list[JobRow]) -> set[str]:
    """Pending rows whose RQ job a dead worker took (see the module docstring)."""
    from rq.intermediate_queue import IntermediateQueue
    from rq.job import Job
    from rq.worker import Worker

    if not rows:
        return set()
    with runtime.redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.hget(Job.key_for(row.id), "worker_name")
        workers = [v.decode() if isinstance(v, bytes) else v for v in pipe.execute()]
    out: set[str] = set()
    statuses = rq_statuses(runtime, [r.id for r in rows])
    started = [(r, w) for r, w in zip(rows, workers, strict=True) if statuses[r.id] == "started"]
    if started:
        with runtime.redis.pipeline(transaction=False) as pipe:
            for _, worker in started:
                pipe.exists(Worker.redis_worker_namespace_prefix + (worker or ""))
            live = pipe.execute()
        out.update(row.id for (row, _), hit in zip(started, live, strict=True) if not hit)
    held: dict[str, set[str]] = {}
    for name in {r.queue for r in rows if statuses[r.id] == "queued"}:
        key = runtime.rq_queue(name).key
        held[name] = {
            v.decode() if isinstance(v, bytes) else str(v)
            for v in runtime.redis.lrange(IntermediateQueue.get_intermediate_queue_key(key), 0, -1)
        }
    orphan_after = runtime.config.orphan_after
    for row in rows:
        if row.id not in held.get(row.queue, ()):
            continue
        # When this pending state of the row (attempt, last send) was first seen held.
        key = f"jobfleet:held:{row.id}:{row.attempts}:{iso(row.run_after) or '-'}"
        now = time.time()
        if runtime.redis.set(key, str(now), nx=True, ex=max(60, int(orphan_after * 4))):
            continue  # first seen now; a live worker will have claimed it by a later pass
        first = runtime.redis.get(key)
        if first is not None and now - float(first) >= orphan_after:
            out.add(row.id)
    return out


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
