"""Enqueue as an outbox: the ledger row is committed first, then sent to RQ under its id.

When Redis does not answer, enqueue still succeeds: the row stays ``pending`` with
``dispatched`` false, and the reaper sends it later. Arguments must survive JSON (RQ's
``JSONSerializer``; never pickle); anything else is refused before anything is written.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobfleet.errors import UsageError

if TYPE_CHECKING:
    from jobfleet.jobrow import JobRow
    from jobfleet.ledger_sql import RowLedger
    from jobfleet.runtime import Runtime

RESULT_TTL = 600
"""Seconds RQ keeps a finished job's record (the ledger keeps the real one)."""

FAILURE_TTL = 7 * 24 * 3600
"""Seconds RQ keeps a failed job's record."""

LIVE_RQ_STATUSES = frozenset({"queued", "started", "scheduled", "deferred"})
"""RQ statuses under which a job will still run; any other means the RQ copy is gone."""

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_FUNC = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")


@dataclass(frozen=True)
class Enqueued:
    id: str
    queue: str
    dispatched: bool


def split_func(name: str) -> tuple[str, str]:
    """``pkg.module:func`` (or ``pkg.module.func``) -> (module, attribute path)."""
    if not _FUNC.match(name):
        raise UsageError(f"bad function name {name!r}; expected pkg.module:func")
    if ":" in name:
        module, attr = name.split(":", 1)
    else:
        module, _, attr = name.rpartition(".")
    if not module or not attr:
        raise UsageError(f"bad function name {name!r}; expected pkg.module:func")
    return module, attr


def normalise_func(name: str) -> str:
    module, attr = split_func(name)
    return f"{module}:{attr}"


def rq_func_name(name: str) -> str:
    """The dotted form RQ stores."""
    module, attr = split_func(name)
    return f"{module}.{attr}"


def resolve(name: str) -> Callable[..., Any]:
    """Import the function ``name`` names; UsageError when it does not exist."""
    module_name, attr = split_func(name)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"unknown function {name}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"unknown function {name}: {module_name} has no {attr}") from None
    if not callable(target):
        raise UsageError(f"{name} is not callable")
    return target  # type: ignore[no-any-return]


def encode_args(args: Any, kwargs: Any) -> tuple[str, str]:
    """JSON for the ledger; refuses what JSON cannot carry (before anything is written)."""
    try:
        return (
            json.dumps(list(args), allow_nan=False, separators=(",", ":")),
            json.dumps(dict(kwargs), allow_nan=False, separators=(",", ":")),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"job arguments must be JSON-serialisable: {exc}") from None


def enqueue(
    runtime: Runtime,
    func: str,
    args: Any = (),
    kwargs: Any = None,
    queue: str = "default",
    max_attempts: int | None = None,
    job_id: str | None = None,
    check_func: bool = True,
) -> Enqueued:
    """Write the ledger row, then dispatch it by the queue's stored mode (:mod:`jobfleet.modes`)."""
    settings = runtime.config.queue(queue)
    name = normalise_func(func)
    if check_func:
        resolve(name)
    args_json, kwargs_json = encode_args(args, kwargs or {})
    job_id = job_id or uuid.uuid4().hex
    if not _ID.match(job_id):
        raise UsageError(f"bad job id {job_id!r}; use up to 64 letters, digits, _.:-")
    attempts = settings.max_attempts if max_attempts is None else max_attempts
    if attempts < 1:
        raise UsageError("max_attempts must be at least 1")
    from jobfleet.modes import MIGRATING, mode_of

    stored = mode_of(runtime, queue)  # the stored mode, not the config's (cached briefly)
    mode = stored.effective
    row = runtime.ledger.insert(job_id, queue, name, args_json, kwargs_json, mode, attempts)
    if mode == "db":
        runtime.ledger.set_dispatched(row.id, True)
        return Enqueued(row.id, queue, True)
    if stored.mode == MIGRATING:  # to rq: `jobfleet migrate` sends it after the switch
        return Enqueued(row.id, queue, False)
    return Enqueued(row.id, queue, send(runtime, row))


def send(runtime: Runtime, row: JobRow, ledger: RowLedger | None = None) -> bool:
    """Put ``row`` on its RQ queue under its own id; False when Redis does not answer.

    ``ledger`` records the send (default: the runtime's; the worker passes its own).

    A stale RQ copy under the same id (failed, finished, from a dead worker) is deleted
    first, so it cannot clobber the new one. A ``celery``-mode row goes to its Celery
    queue instead (:func:`jobfleet.celery_send.send`).
    """
    if row.mode == "celery":
        from jobfleet.celery_send import send as send_celery

        return send_celery(runtime, row)
    from redis.exceptions import RedisError
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    settings = runtime.config.queues.get(row.queue)
    timeout = settings.timeout if settings else 600
    args, kwargs = row.call_args()
    rq_queue = runtime.rq_queue(row.queue)
    try:
        try:
            stale = Job.fetch(row.id, connection=runtime.redis, serializer=rq_queue.serializer)
        except NoSuchJobError:
            pass
        else:
            stale.delete(remove_from_queue=True)
        rq_queue.enqueue_call(
            func=rq_func_name(row.func),
            args=args,
            kwargs=kwargs,
            timeout=timeout,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            job_id=row.id,
            description=f"jobfleet {row.func}",
        )
    except (RedisError, OSError):
        return False
    (runtime.ledger if ledger is None else ledger).set_dispatched(row.id, True)
    return True


def rq_statuses(runtime: Runtime, ids: list[str]) -> dict[str, str | None]:
    """The RQ status of each job id (None when Redis has no such job)."""
    from rq.job import Job

    if not ids:
        return {}
    with runtime.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        values = pipe.execute()
    return {
        job_id: (v.decode() if isinstance(v, bytes) else v)
        for job_id, v in zip(ids, values, strict=True)
    }
