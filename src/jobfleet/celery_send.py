"""Queue mode ``celery``: send ledger rows to a Celery broker (Redis) under their own id.

The ledger row is written first (:func:`jobfleet.dispatch.enqueue`), then
:func:`send` publishes a Celery message with ``send_task`` whose task id is the row's id
and whose task name is the row's function in dotted form (``pkg.module.func``, Celery's
default task name). A broker that does not answer is not an error: the row stays
pending and undispatched, and the reaper sends it later (:func:`redispatch`).

The settings every jobfleet Celery app shares (:func:`app_settings`) live here too, so the
sender and the workers agree on serializer and broker options.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobfleet.dispatch import rq_func_name
from jobfleet.schema import jobs, utcnow

if TYPE_CHECKING:
    from celery import Celery

    from jobfleet.config import Config
    from jobfleet.ledger import JobRow
    from jobfleet.reaper import ReapResult
    from jobfleet.runtime import Runtime

VISIBILITY_FLOOR = 3600.0
"""Seconds: the least broker visibility timeout (Redis transport).

Celery's Redis transport gives an unacknowledged message to another worker once this
much time has passed, whether or not the first worker is still running it. The timeout
must therefore sit above the longest task time limit plus the longest retry countdown
(:func:`visibility_timeout`). The ledger claim makes a redelivery harmless anyway (the
second delivery finds the row running or terminal and is skipped), and a crashed
worker's job is recovered by the reaper, not by redelivery, so a long timeout costs
nothing.
"""

HARD_LIMIT_MARGIN = 30
"""Seconds between a queue's ``timeout`` (soft limit: the task gets an exception) and
the hard limit (the pool process is killed)."""

PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
"""Publishing retries before a send counts as failed (then the reaper sends it later)."""

BROKER_TIMEOUT = 5.0
"""Seconds to wait for the broker to connect or answer."""

PRIORITY_SEP = "\x06\x16"
"""kombu's separator between a Redis queue name and its priority step."""

_senders: dict[tuple[int, str], Celery] = {}


def visibility_timeout(config: Config) -> float:
    """Above the longest hard time limit plus the longest retry delay, at least an hour."""
    longest = max((q.timeout for q in config.queues.values()), default=600)
    return max(VISIBILITY_FLOOR, longest + HARD_LIMIT_MARGIN + config.backoff_max + 60.0)


def app_settings(config: Config) -> dict[str, Any]:
    """The Celery settings of every jobfleet app: JSON only, late acks, careful broker."""
    return {
        "broker_url": config.require_redis(),
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,  # ack after the task returns, not when it is received
        "task_reject_on_worker_lost": True,  # a killed pool process: the message comes back
        "task_ignore_result": True,  # the ledger holds the outcome
        "task_create_missing_queues": True,
        "worker_prefetch_multiplier": 1,  # hold no more messages than there are processes
        "worker_redirect_stdouts": False,  # stdout carries only the JSON event lines
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": BROKER_TIMEOUT,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout(config),
            "socket_connect_timeout": BROKER_TIMEOUT,
            "socket_timeout": BROKER_TIMEOUT * 2,
        },
    }


def sender(runtime: Runtime) -> Celery:
    """A small Celery app that only publishes (one per process and broker URL)."""
    from celery import Celery

    url = runtime.config.require_redis()
    key = (os.getpid(), url)
    app = _senders.get(key)
    if app is None:
        app = Celery("jobfleet-sender", set_as_current=False)
        app.conf.update(app_settings(runtime.config))
        _senders[key] = app
    return app


def send(runtime: Runtime, row: JobRow, countdown: float = 0.0) -> bool:
    """Publish ``row`` as a Celery task under its own id; False when the broker is down."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    settings = runtime.config.queues.get(row.queue)
    timeout = settings.timeout if settings else 600
    args, kwargs = row.call_args()
    try:
        sender(runtime).send_task(
            rq_func_name(row.func),
            args=args,
            kwargs=kwargs,
            task_id=row.id,
            queue=row.queue,
            countdown=countdown if countdown > 0 else None,
            soft_time_limit=timeout,
            time_limit=timeout + HARD_LIMIT_MARGIN,
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )
    except (OperationalError, RedisError, OSError):
        return False
    runtime.ledger.set_dispatched(row.id, True)
    return True


def queued_ids(runtime: Runtime, queues: set[str]) -> set[str]:
    """Task ids of the messages waiting in the given Celery queues (every priority step)."""
    ids: set[str] = set()
    for name in queues:
        keys = [name, *(f"{name}{PRIORITY_SEP}{step}" for step in (3, 6, 9))]
        for key in keys:
            for raw in runtime.redis.lrange(key, 0, -1):
                try:
                    task_id = json.loads(raw)["headers"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                ids.add(str(task_id))
    return ids


def redispatch(runtime: Runtime, result: ReapResult, grace: float, batch: int = 1000) -> None:
    """Send again the ``celery``-mode pending rows that no queue holds.

    A row never sent (broker down at enqueue), or due for longer than ``orphan_after``
    while no queue holds its message, is sent again. A message still held by a worker
    (prefetched) may thus arrive twice; the ledger claim runs it once.
    """
    now = utcnow()
    young = now - timedelta(seconds=grace)
    overdue = now - timedelta(seconds=runtime.config.orphan_after)
    rows = runtime.ledger.select_rows(
        jobs.c.status == "pending", jobs.c.mode == "celery", jobs.c.created_at <= young, limit=batch
    )
    late = [r for r in rows if r.dispatched and _due_before(r, overdue)]
    listed = queued_ids(runtime, {r.queue for r in late}) if late else set()
    for row in rows:
        if row.send_claimed_after(young):
            continue  # another reaper is sending it
        if row.dispatched and (not _due_before(row, overdue) or row.id in listed):
            continue
        if runtime.ledger.claim_send(row) and send(runtime, row):
            result.redispatched.append(row.id)


def _due_before(row: JobRow, before: datetime) -> bool:
    return (row.run_after or row.created_at) < before
