"""The stored dispatch mode of each queue: ``rq``, ``db`` or ``migrating`` (to ``target``).

The ledger database holds one row per queue (``jobfleet_queue_modes``), so enqueue, RQ
workers, pollers and the reaper all see one truth. The config file's ``mode`` only seeds
a queue that has no stored mode (``db init`` writes the seed), so re-running a deploy after
a rollback never flips a queue back. Readers cache the table for :data:`CACHE_SECONDS`.

While a queue is ``migrating`` nothing dispatches its jobs: enqueue writes the row in the
target mode (undispatched when the target is ``rq``), pollers do not claim, the reaper
does not send, and ``jobfleet migrate`` moves what is left, then stores the target mode.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from jobfleet.config import MODES
from jobfleet.errors import UsageError
from jobfleet.schema import jobs, queue_modes, utcnow

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from jobfleet.config import Config
    from jobfleet.ledger import JobRow
    from jobfleet.runtime import Runtime

CACHE_SECONDS = 1.0
"""How long a process trusts the modes it read (enqueue must stay cheap)."""

MIGRATING = "migrating"


@dataclass(frozen=True)
class QueueMode:
    """A queue's mode; ``target`` is set while ``migrating``; ``stored`` false = config seed."""

    queue: str
    mode: str
    target: str | None
    stored: bool

    @property
    def effective(self) -> str:
        """Where a new job goes: the mode, or the migration's target."""
        return self.target if self.mode == MIGRATING and self.target else self.mode

    def public(self) -> dict[str, object]:
        return {"mode": self.mode, "target": self.target, "stored": self.stored}


def read(engine: Engine, config: Config) -> dict[str, QueueMode]:
    """Every configured or stored queue and its mode (uncached)."""
    with engine.connect() as conn:
        rows = conn.execute(select(queue_modes)).all()
    out = {q: QueueMode(q, s.mode, None, False) for q, s in config.queues.items()}
    for row in rows:
        out[row.queue] = QueueMode(row.queue, row.mode, row.target, True)
    return out


def seed(engine: Engine, config: Config) -> list[str]:
    """Store the config's mode of every queue that has none yet; return those queues."""
    added: list[str] = []
    with engine.connect() as conn:
        known = set(conn.execute(select(queue_modes.c.queue)).scalars())
    for name, settings in config.queues.items():
        if name in known:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(queue_modes).values(
                        queue=name, mode=settings.mode, target=None, updated_at=utcnow()
                    )
                )
        except IntegrityError:  # another process seeded it first
            continue
        added.append(name)
    return added


def store(engine: Engine, queue: str, mode: str, target: str | None = None) -> bool:
    """Set a queue's stored mode; return whether anything changed."""
    valid = (*MODES, MIGRATING)
    if mode not in valid:
        raise UsageError(f"bad mode {mode!r}; expected one of {', '.join(valid)}")
    if mode == MIGRATING:
        if target not in MODES:
            raise UsageError(f"migrating needs a target mode ({', '.join(MODES)})")
    else:
        target = None
    values = {"mode": mode, "target": target, "updated_at": utcnow()}
    with engine.begin() as conn:
        row = conn.execute(select(queue_modes).where(queue_modes.c.queue == queue)).first()
        if row is None:
            conn.execute(insert(queue_modes).values(queue=queue, **values))
            changed = True
        elif (row.mode, row.target) == (mode, target):
            changed = False
        else:
            conn.execute(update(queue_modes).where(queue_modes.c.queue == queue).values(**values))
            changed = True
    invalidate()
    return changed


class _Cache:
    def __init__(self) -> None:
        self.at = -CACHE_SECONDS
        self.modes: dict[str, QueueMode] = {}


_caches: weakref.WeakKeyDictionary[Runtime, _Cache] = weakref.WeakKeyDictionary()


def invalidate() -> None:
    """Forget every cached read in this process (after a write)."""
    for cache in list(_caches.values()):
        cache.at = -CACHE_SECONDS


def modes(runtime: Runtime) -> dict[str, QueueMode]:
    """The modes, read at most once per :data:`CACHE_SECONDS` per runtime."""
    cache = _caches.get(runtime)
    if cache is None:
        cache = _caches[runtime] = _Cache()
    now = time.monotonic()
    if now - cache.at >= CACHE_SECONDS:
        cache.modes = read(runtime.ledger.engine, runtime.config)
        cache.at = now
    return cache.modes


def mode_of(runtime: Runtime, queue: str) -> QueueMode:
    found = modes(runtime).get(queue)
    if found is None:
        return QueueMode(queue, runtime.config.queue(queue).mode, None, False)
    return found


def in_mode(runtime: Runtime, queues: list[str], mode: str) -> list[str]:
    """The queues of ``queues`` whose stored mode is ``mode`` (order kept)."""
    current = modes(runtime)
    return [q for q in queues if q in current and current[q].mode == mode]


def set_row_mode(runtime: Runtime, job_id: str, mode: str, dispatched: bool) -> bool:
    """Move one pending row to ``mode`` (a mode change, not a status change)."""
    stmt = (
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == "pending")
        .values(mode=mode, dispatched=dispatched)
    )
    with runtime.ledger.engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


def route(runtime: Runtime, row: JobRow) -> bool:
    """Dispatch a pending row (a requeued orphan, an operator retry) by its queue's stored
    mode, as enqueue does: ``db`` (or migrating to it) makes it a dispatched db row;
    migrating to ``rq`` keeps it pending and unsent (the migration sends it); ``rq`` and
    ``celery`` send it there. Returns whether it is dispatched."""
    from dataclasses import replace

    from jobfleet.dispatch import send

    current = mode_of(runtime, row.queue)
    target = current.effective
    if target == "db":
        return set_row_mode(runtime, row.id, "db", True)
    if current.mode == MIGRATING:  # to rq: the migration (or the reaper after it) sends it
        set_row_mode(runtime, row.id, target, False)
        return False
    if row.mode != target:
        set_row_mode(runtime, row.id, target, False)
        row = replace(row, mode=target, dispatched=False)  # send() picks RQ or Celery by mode
    return send(runtime, row)
