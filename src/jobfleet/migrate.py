"""``jobfleet migrate rq-to-db`` and ``db-to-rq``: move waiting jobs, crash-safe, verified.

rq-to-db, per queue: store ``migrating`` (target ``db``), then take the RQ queue list, the
intermediate list and the scheduled and deferred registries from their head, a batch at a
time. For each batch, one transaction turns every pending row into a ``db`` row and creates
the rows RQ holds without one (plain RQ jobs: function, args and kwargs from the job hash,
RQ's JSON serializer). Only after that commit do the jobs leave Redis. A kill -9 at any
moment leaves each job in Redis, in the ledger, or both; a re-run (keyed by id) finishes
with each job once. Then the queue is stored as ``db``, leftover pending rows (never
dispatched, or lost by Redis) become ``db`` rows, and the counts are verified.

db-to-rq is the reverse: the RQ job is created under the ledger id (a live one is kept, not
duplicated), then the row becomes an ``rq`` row.

``JOBFLEET_MIGRATE_PAUSE_AFTER=N`` (tests) makes the process sleep after N jobs are
committed, before they leave their source, so a test can kill it there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    cast,
    func,
    insert,
    literal,
    select,
    text,
    update,
)

from jobfleet import modes
from jobfleet.backup import rq_keys
from jobfleet.dispatch import (
    FAILURE_TTL,
    LIVE_RQ_STATUSES,
    RESULT_TTL,
    encode_args,
    normalise_func,
    rq_func_name,
    rq_statuses,
)
from jobfleet.schema import jobs, utcnow

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from jobfleet.ledger import JobRow
    from jobfleet.runtime import Runtime

BATCH = 2000
"""Jobs per transaction and per Redis round trip (``JOBFLEET_MIGRATE_BATCH`` overrides)."""

SOURCES = ("queued", "intermediate", "scheduled", "deferred")
"""The RQ structures whose jobs are still waiting to run (``started`` ones are running)."""

VERIFY_CHUNK = 10_000
"""Ids per verification query and per read of the id set (memory stays bounded)."""

MAX_ROUNDS = 1_000_000
"""A bound on batches per source, so a misbehaving Redis cannot loop us forever."""

# Take a batch of jobs out of one RQ structure and delete their job hashes, atomically.
# KEYS[1]: the list or zset; ARGV[1]: "list" or "zset"; ARGV[2]: the job hash key prefix;
# ARGV[3]: the ids, a JSON array. A list whose head is exactly those ids (the usual case:
# the batch was read from the head and nothing took it meanwhile) is trimmed in one LTRIM,
# O(batch); otherwise each id is removed wherever it is (LREM, O(list) each). The job hash
# keys are built in the script, not declared in KEYS: fine on one Redis (RQ's only setup).
_REMOVE_LUA = """
local ids = cjson.decode(ARGV[3])
local n = #ids
if n == 0 then return 0 end
local removed = 0
if ARGV[1] == 'zset' then
  for i = 1, n, 1000 do
    removed = removed + redis.call('ZREM', KEYS[1], unpack(ids, i, math.min(i + 999, n)))
  end
else
  local head = redis.call('LRANGE', KEYS[1], 0, n - 1)
  local same = #head == n
  for i = 1, n do
    if not same then break end
    same = head[i] == ids[i]
  end
  if same then
    redis.call('LTRIM', KEYS[1], n, -1)
    removed = n
  else
    for i = 1, n do removed = removed + redis.call('LREM', KEYS[1], 1, ids[i]) end
  end
end
for i = 1, n do redis.call('DEL', ARGV[2] .. ids[i]) end
return removed
"""


# A range of a list or zset's members as one JSON array (and its length): one reply for
# the whole chunk, handed to SQLite as it is, instead of thousands of replies to parse.
_IDS_LUA = """
local ids
if ARGV[1] == 'zset' then
  ids = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3])
else
  ids = redis.call('LRANGE', KEYS[1], ARGV[2], ARGV[3])
end
if #ids == 0 then return {'[]', 0} end
return {cjson.encode(ids), #ids}
"""


@dataclass
class QueueReport:
    """What a migration did to one queue, and whether its counts matched."""

    queue: str
    direction: str
    before: int = 0
    after: int = 0
    moved: int = 0
    created: int = 0
    scheduled: int = 0
    swept: int = 0
    ran_meanwhile: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    left_in_redis: int = 0
    mode: str = ""
    ok: bool = True


def _batch() -> int:
    return max(1, int(os.environ.get("JOBFLEET_MIGRATE_BATCH", BATCH)))


class _Pause:
    """The test hook: sleep (to be killed) once N jobs are committed."""

    def __init__(self) -> None:
        raw = os.environ.get("JOBFLEET_MIGRATE_PAUSE_AFTER")
        self.after = int(raw) if raw else None
        self.done = 0

    def committed(self, count: int) -> None:
        self.done += count
        if self.after is not None and self.done >= self.after:
            print(f"jobfleet migrate: pausing after {self.done} jobs", flush=True)
            time.sleep(3600)


def is_pending(engine: Engine) -> ColumnElement[bool]:
    """``status = 'pending'`` as a filter on rows found by id, never as an index lookup.

    Written ``status || '' = 'pending'``: right after a bulk load (no statistics yet) both
    SQLite and PostgreSQL prefer an index that starts with ``status`` over the primary key
    for ``id IN (...) AND status = 'pending'``, and so walk every pending row of the table
    for each batch (quadratic). An expression no index covers keeps them on the key.
    """
    del engine  # the same expression on every backend
    return (jobs.c.status + "") == "pending"


def id_in(engine: Engine, ids: list[str] | str) -> ColumnElement[bool]:
    """``id IN (ids)`` with the ids as one JSON array parameter (``ids`` is a list, or that
    array already encoded): a batch of thousands of ids is one short, cached statement, not
    thousands of placeholders to render and parse per batch. The database unpacks the array
    (``json_each`` on SQLite, ``json_array_elements_text`` on PostgreSQL) and looks each id
    up in the primary key; a text-array parameter would cost a pure-Python encoding per id,
    and with statistics PostgreSQL scans the whole table for ``id = ANY`` of 2,000 ids."""
    array = ids if isinstance(ids, str) else json.dumps(ids)
    if engine.dialect.name == "postgresql":
        each = func.json_array_elements_text(cast(literal(array), JSON)).table_valued("value")
    else:
        each = func.json_each(array).table_valued("value")
    return jobs.c.id.in_(select(each.c.value))


def pending_ids(runtime: Runtime, queue: str) -> Iterator[JobRow]:
    """Every pending row of ``queue``, by id, in batches."""
    from jobfleet.ledger import JobRow

    for batch in _pending_batches(runtime, queue, list(jobs.c)):
        yield from (JobRow.from_mapping(r) for r in batch)


def _pending_batches(runtime: Runtime, queue: str, columns: list[Any]) -> Iterator[list[Any]]:
    """The pending rows of ``queue`` (the given columns), a batch at a time, by id.

    One streamed query (a server-side cursor on PostgreSQL), not one query per batch:
    without statistics a query per batch may sort every pending row each time.
    """
    engine = runtime.ledger.engine
    query = select(*columns).where(jobs.c.queue == queue, is_pending(engine)).order_by(jobs.c.id)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_batch()).execute(query)
        for part in result.mappings().partitions():
            yield list(part)


def _pending_id_chunks(
    runtime: Runtime, queue: str, size: int, mode: str | None = None
) -> Iterator[str]:
    """The ids of the pending rows of ``queue`` (in ``mode``, when given), as JSON arrays
    of at most ``size`` ids.

    One streamed statement (one snapshot): the database numbers the rows as it reads them,
    groups them ``size`` to a part, and builds each part's array, so no id is decoded in
    Python and no part is looked for again (a keyset page per chunk would, without
    statistics, make PostgreSQL read every row of the queue for each page).
    """
    engine = runtime.ledger.engine
    array = "json_agg(id)::text" if engine.dialect.name == "postgresql" else "json_group_array(id)"
    in_mode = " AND mode = :mode" if mode is not None else ""
    query = text(
        f"SELECT {array} FROM (SELECT id, (row_number() OVER () - 1) / :size AS part"
        f" FROM {jobs.name} WHERE queue = :queue AND status || '' = 'pending'{in_mode})"
        " AS numbered GROUP BY part"
    ).bindparams(queue=queue, size=size)
    if mode is not None:
        query = query.bindparams(mode=mode)
    with engine.connect() as conn:
        for (chunk,) in conn.execution_options(stream_results=True, yield_per=1).execute(query):
            yield str(chunk)


class IdSet:
    """A set of job ids kept in a private temporary SQLite database, not in memory.

    The migration's verification needs every id it saw; held in a Python set, memory would
    grow with the job count. SQLite deletes the file when the connection closes (it is
    unlinked already while open, so a kill -9 leaves nothing behind), and its page cache
    is bounded (2 MiB by default).
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("CREATE TABLE found (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")  # one transaction for its whole life; never committed

    def add(self, ids: Iterable[str] | str) -> None:
        """Add ids (an iterable, or a JSON array of them: unpacked by SQLite, in C)."""
        array = ids if isinstance(ids, str) else json.dumps(list(ids))
        self._db.execute("INSERT OR IGNORE INTO ids SELECT value FROM json_each(?)", (array,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM ids").fetchone()[0])

    def add_found(self, ids: str) -> None:
        """Mark ids (a JSON array) as found where they belong; ids not in the set count not."""
        self._db.execute("INSERT OR IGNORE INTO found SELECT value FROM json_each(?)", (ids,))

    def found_count(self) -> int:
        """How many ids of the set are marked found."""
        return int(self._db.execute("SELECT count(*) FROM ids JOIN found USING (id)").fetchone()[0])

    def chunks(self, size: int, unfound: bool = False) -> Iterator[tuple[str, int]]:
        """Every id (only those not marked found, with ``unfound``), sorted, ``size`` at a
        time: each chunk a JSON array and its length."""
        where = " AND id NOT IN (SELECT id FROM found)" if unfound else ""
        last = ""
        while True:
            array, count, top = self._db.execute(
                "SELECT json_group_array(id), count(*), max(id)"
                f" FROM (SELECT id FROM ids WHERE id > ?{where} ORDER BY id LIMIT ?)",
                (last, size),
            ).fetchone()
            if count:
                yield array, count
            if count < size:
                return
            last = top

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> IdSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_pending(self, runtime: Runtime, queue: str) -> None:
        """Add the id of every pending row of ``queue``."""
        for chunk in _pending_id_chunks(runtime, queue, VERIFY_CHUNK):
            self.add(chunk)

    def add_redis(self, runtime: Runtime, key: str, kind: str) -> None:
        """Add the id of every member of a list or zset of Redis, a chunk per call."""
        script = runtime.redis.register_script(_IDS_LUA)
        for start in range(0, MAX_ROUNDS * VERIFY_CHUNK, VERIFY_CHUNK):
            array, count = script(keys=[key], args=[kind, start, start + VERIFY_CHUNK - 1])
            self.add(_s(array))
            if int(count) < VERIFY_CHUNK:
                return


def _head(
    runtime: Runtime, key: str, kind: str, skip: int, size: int
) -> list[tuple[str, float | None]]:
    redis = runtime.redis
    if kind == "list":  # one JSON reply, decoded in C, not thousands of replies
        array, _ = redis.register_script(_IDS_LUA)(keys=[key], args=[kind, skip, skip + size - 1])
        return [(job_id, None) for job_id in json.loads(array)]
    pairs: list[Any] = redis.zrange(key, skip, skip + size - 1, withscores=True)
    return [(_s(v), float(sc)) for v, sc in pairs]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_count(runtime: Runtime, queue: str) -> int:
    keys = rq_keys(runtime, queue)
    total = 0
    for part in SOURCES:
        key, kind = keys[part]
        total += int(runtime.redis.llen(key) if kind == "list" else runtime.redis.zcard(key))
    return total


# -- rq -> db -------------------------------------------------------------------------
def rq_to_db(
    runtime: Runtime, queues: list[str], dry_run: bool = False, redis_lost: bool = False
) -> list[QueueReport]:
    for queue in queues:
        runtime.config.queue(queue)  # unknown queue: one line, exit 2
    pause = _Pause()
    reports = []
    for queue in queues:
        if redis_lost:
            reports.append(_rq_to_db_lost(runtime, queue, dry_run))
        else:
            reports.append(_rq_to_db_queue(runtime, queue, dry_run, pause))
    return reports


def _expected_rq(runtime: Runtime, queue: str, expected: IdSet) -> None:
    """Before: every job waiting in RQ plus every pending row (one set: ids, not sums)."""
    expected.add_pending(runtime, queue)
    keys = rq_keys(runtime, queue)
    for part in SOURCES:
        expected.add_redis(runtime, *keys[part])


def _rq_to_db_queue(runtime: Runtime, queue: str, dry_run: bool, pause: _Pause) -> QueueReport:
    with IdSet() as expected:
        return _rq_to_db_ids(runtime, queue, dry_run, pause, expected)


def _rq_to_db_ids(
    runtime: Runtime, queue: str, dry_run: bool, pause: _Pause, expected: IdSet
) -> QueueReport:
    report = QueueReport(queue, "rq-to-db")
    _expected_rq(runtime, queue, expected)
    report.before = len(expected)
    if dry_run:
        report.moved = _redis_count(runtime, queue)
        report.mode = modes.mode_of(runtime, queue).mode
        return report
    if modes.mode_of(runtime, queue).mode != "db":
        modes.store(runtime.ledger.engine, queue, modes.MIGRATING, "db")
    keys = rq_keys(runtime, queue)
    size = _batch()
    for part in SOURCES:
        key, kind = keys[part]
        skip = 0  # unreadable jobs stay where they are (in order, at the front)
        for _ in range(MAX_ROUNDS):
            head = _head(runtime, key, kind, skip, size)
            if not head:
                break
            unreadable = len(report.unreadable)
            _commit_rq_batch(runtime, queue, head, report)
            pause.committed(len(head))
            kept = set(report.unreadable[unreadable:])
            skip += len(kept)
            gone = [job_id for job_id, _ in head if job_id not in kept]
            if gone:
                _remove(runtime, key, kind, gone)
    modes.store(runtime.ledger.engine, queue, "db")
    report.swept = _sweep(runtime, queue, "db", dispatched=True)
    _verify(runtime, queue, expected, "db", report)
    return report


def _commit_rq_batch(
    runtime: Runtime, queue: str, head: list[tuple[str, float | None]], report: QueueReport
) -> None:
    """One transaction: the batch's pending rows become ``db`` rows, missing rows are made.

    Rows that are running or finished are left alone: the RQ copy is stale, the ledger
    owns the job. Only when the UPDATE did not switch the whole batch are its ids looked
    up, to find the jobs RQ holds without a row.
    """
    engine = runtime.ledger.engine
    ids = [job_id for job_id, _ in head]
    switch = (
        update(jobs)
        .where(id_in(engine, ids), is_pending(engine))
        .values(mode="db", dispatched=True)
    )
    with engine.begin() as conn:
        switched = int(conn.execute(switch).rowcount)
        missing: list[str] = []
        if switched < len(ids):
            found = set(conn.execute(select(jobs.c.id).where(id_in(engine, ids))).scalars().all())
            missing = [job_id for job_id in ids if job_id not in found]
        new_rows = _rows_from_rq(runtime, queue, missing, dict(head), report) if missing else []
        if new_rows:
            conn.execute(insert(jobs), new_rows)
    report.moved += switched + len(new_rows)
    report.created += len(new_rows)


def _rows_from_rq(
    runtime: Runtime,
    queue: str,
    ids: list[str],
    scores: dict[str, float | None],
    report: QueueReport,
) -> list[dict[str, Any]]:
    """Ledger rows for jobs RQ holds without one (plain RQ, JSON serializer)."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    rows = []
    settings = runtime.config.queue(queue)
    fetched = Job.fetch_many(ids, connection=runtime.redis, serializer=JSONSerializer)
    for job_id, job in zip(ids, fetched, strict=True):
        try:
            if job is None:
                raise ValueError("no job hash")
            name = normalise_func(str(job.func_name))
            args_json, kwargs_json = encode_args(job.args, job.kwargs)
        except Exception:  # no hash, pickled data, an instance method: left in Redis
            report.unreadable.append(job_id)
            continue
        created = _naive(job.created_at) or utcnow()
        score = scores.get(job_id)
        rows.append(
            {
                "id": job_id,
                "queue": queue,
                "func": name,
                "args": args_json,
                "kwargs": kwargs_json,
                "status": "pending",
                "mode": "db",
                "progress": 0.0,
                "attempts": 0,
                "max_attempts": settings.max_attempts,
                "created_at": created,
                "run_after": None if not score else _naive(datetime.fromtimestamp(score, UTC)),
                "dispatched": True,
            }
        )
    return rows


def _naive(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _remove(runtime: Runtime, key: str, kind: str, ids: list[str]) -> None:
    """Take ``ids`` out of ``key`` and delete their job hashes, in one script call."""
    from rq.job import Job

    script = runtime.redis.register_script(_REMOVE_LUA)
    script(keys=[key], args=[kind, Job.redis_job_namespace_prefix, json.dumps(ids)])


def _sweep(runtime: Runtime, queue: str, mode: str, dispatched: bool) -> int:
    """Pending rows of ``queue`` not yet in ``mode`` (never sent, or lost by Redis)."""
    stmt = (
        update(jobs)
        .where(
            jobs.c.queue == queue,
            jobs.c.status == "pending",
            (jobs.c.mode != mode) | (jobs.c.dispatched.is_(not dispatched)),
        )
        .values(mode=mode, dispatched=dispatched)
    )
    with runtime.ledger.engine.begin() as conn:
        return int(conn.execute(stmt).rowcount)


def _verify(
    runtime: Runtime,
    queue: str,
    expected: IdSet,
    mode: str,
    report: QueueReport,
    redis_lost: bool = False,
) -> None:
    """Each expected id is a pending row in ``mode``, or has run since; Redis is drained.

    To ``db``: the pending ``db`` rows of the queue are read as they are now (one streamed
    statement) and marked in the id set; only the expected ids not found among them are
    looked up one by one (they ran meanwhile, or are missing), not every id by key.
    """
    unreadable = set(report.unreadable)
    if mode == "db":
        for array in _pending_id_chunks(runtime, queue, VERIFY_CHUNK, mode="db"):
            expected.add_found(array)
        report.after += expected.found_count()
    for array, _ in expected.chunks(VERIFY_CHUNK, unfound=mode == "db"):
        _verify_ids(runtime, json.loads(array), mode, unreadable, report)
    if mode == "db" and not redis_lost:
        report.left_in_redis = _redis_count(runtime, queue)
    report.mode = modes.mode_of(runtime, queue).mode
    report.ok = not report.missing and not report.unreadable and report.left_in_redis == 0


def _verify_ids(
    runtime: Runtime, chunk: list[str], mode: str, unreadable: set[str], report: QueueReport
) -> None:
    engine = runtime.ledger.engine
    query = select(jobs.c.id, jobs.c.status, jobs.c.mode).where(id_in(engine, chunk))
    with engine.connect() as conn:
        found = {i: (st, md) for i, st, md in conn.execute(query).all()}
    statuses = rq_statuses(runtime, chunk) if mode == "rq" else {}
    for job_id in chunk:
        status, row_mode = found.get(job_id, (None, None))
        if status is None:
            if job_id not in unreadable:
                report.missing.append(job_id)
        elif status != "pending":
            report.ran_meanwhile += 1
        elif row_mode != mode or (mode == "rq" and statuses.get(job_id) not in LIVE_RQ_STATUSES):
            report.missing.append(job_id)
        else:
            report.after += 1


def _rq_to_db_lost(runtime: Runtime, queue: str, dry_run: bool) -> QueueReport:
    """Redis is gone: switch from the ledger alone; name the rows RQ may have held."""
    with IdSet() as expected:
        return _rq_to_db_lost_ids(runtime, queue, dry_run, expected)


def _rq_to_db_lost_ids(runtime: Runtime, queue: str, dry_run: bool, expected: IdSet) -> QueueReport:
    report = QueueReport(queue, "rq-to-db")
    expected.add_pending(runtime, queue)
    report.before = len(expected)
    doubtful = (
        select(jobs.c.id)
        .where(
            jobs.c.queue == queue,
            jobs.c.mode != "db",
            (jobs.c.status == "running") | ((jobs.c.status == "pending") & jobs.c.dispatched),
        )
        .order_by(jobs.c.id)
    )
    with runtime.ledger.engine.connect() as conn:
        report.unconfirmed = list(conn.execute(doubtful).scalars())
    if dry_run:
        report.mode = modes.mode_of(runtime, queue).mode
        return report
    modes.store(runtime.ledger.engine, queue, modes.MIGRATING, "db")
    report.moved = _sweep(runtime, queue, "db", dispatched=True)
    modes.store(runtime.ledger.engine, queue, "db")
    report.swept = _sweep(runtime, queue, "db", dispatched=True)
    _verify(runtime, queue, expected, "db", report, redis_lost=True)
    return report


# -- db -> rq -------------------------------------------------------------------------
def db_to_rq(runtime: Runtime, queues: list[str], dry_run: bool = False) -> list[QueueReport]:
    for queue in queues:
        runtime.config.queue(queue)
    runtime.redis.ping()  # fail with one line before anything changes
    pause = _Pause()
    return [_db_to_rq_queue(runtime, queue, dry_run, pause) for queue in queues]


def _db_to_rq_queue(runtime: Runtime, queue: str, dry_run: bool, pause: _Pause) -> QueueReport:
    with IdSet() as expected:
        return _db_to_rq_ids(runtime, queue, dry_run, pause, expected)


def _db_to_rq_ids(
    runtime: Runtime, queue: str, dry_run: bool, pause: _Pause, expected: IdSet
) -> QueueReport:
    report = QueueReport(queue, "db-to-rq")
    expected.add_pending(runtime, queue)
    report.before = len(expected)
    if dry_run:
        report.moved = sum(1 for r in pending_ids(runtime, queue) if not _in_rq(r))
        report.mode = modes.mode_of(runtime, queue).mode
        return report
    if modes.mode_of(runtime, queue).mode != "rq":
        modes.store(runtime.ledger.engine, queue, modes.MIGRATING, "rq")
    _send_pending(runtime, queue, report, pause)
    modes.store(runtime.ledger.engine, queue, "rq")
    before = report.moved
    _send_pending(runtime, queue, report, pause)  # rows enqueued while it was migrating
    report.swept = report.moved - before
    _verify(runtime, queue, expected, "rq", report)
    return report


def _in_rq(row: JobRow) -> bool:
    return row.mode == "rq" and row.dispatched


def _send_pending(runtime: Runtime, queue: str, report: QueueReport, pause: _Pause) -> None:
    batch: list[JobRow] = []
    for row in pending_ids(runtime, queue):
        if _in_rq(row):
            continue
        batch.append(row)
        if len(batch) >= _batch():
            _send_batch(runtime, queue, batch, report, pause)
            batch = []
    if batch:
        _send_batch(runtime, queue, batch, report, pause)


def _send_batch(
    runtime: Runtime, queue: str, rows: list[JobRow], report: QueueReport, pause: _Pause
) -> None:
    """Create the RQ jobs (a live one under the same id is kept), then switch the rows.

    A row due later (``run_after`` in the future: a retry waiting out its backoff) goes to
    RQ's scheduled registry with that time, as ``Queue.enqueue_at`` does, not onto the
    queue; RQ's scheduler (run by every ``jobfleet worker``) queues it when it is due.
    """
    from rq import Queue
    from rq.job import JobStatus

    rq_queue = runtime.rq_queue(queue)
    timeout = runtime.config.queue(queue).timeout
    statuses = rq_statuses(runtime, [r.id for r in rows])
    # A pending row is run by nobody (a running one would be `running` in the ledger), so an
    # RQ copy marked `started` is a leftover of a worker that was killed (an emergency
    # rollback): it is re-created, and dropped from RQ's started registry, whose cleanup
    # would otherwise fail the new copy.
    fresh = [r for r in rows if statuses.get(r.id) not in LIVE_RQ_STATUSES - {"started"}]
    now = utcnow()
    if fresh:
        with runtime.redis.pipeline() as pipe:
            stale = [f"rq:job:{r.id}" for r in fresh if statuses.get(r.id) is not None]
            if stale:
                pipe.delete(*stale)
            leftovers = [r.id for r in fresh if statuses.get(r.id) == "started"]
            if leftovers:
                pipe.zrem(rq_queue.started_job_registry.key, *leftovers)
            datas = []
            for row in fresh:
                args, kwargs = row.call_args()
                data = Queue.prepare_data(
                    rq_func_name(row.func),
                    args=args,
                    kwargs=kwargs,
                    timeout=timeout,
                    result_ttl=RESULT_TTL,
                    failure_ttl=FAILURE_TTL,
                    description=f"jobfleet {row.func}",
                    job_id=row.id,
                )
                if row.run_after is None or row.run_after <= now:
                    datas.append(data)
                    continue
                job = rq_queue.create_job(
                    data.func,
                    args=data.args,
                    kwargs=data.kwargs,
                    timeout=data.timeout,
                    result_ttl=data.result_ttl,
                    failure_ttl=data.failure_ttl,
                    description=data.description,
                    job_id=data.job_id,
                    status=JobStatus.SCHEDULED,
                )
                # the ledger holds naive UTC; RQ reads a naive time as local time
                rq_queue.schedule_job(job, row.run_after.replace(tzinfo=UTC), pipeline=pipe)
                report.scheduled += 1
            if datas:
                rq_queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
    pause.committed(len(rows))
    ids = [r.id for r in rows]
    engine = runtime.ledger.engine
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(id_in(engine, ids), is_pending(engine))
            .values(mode="rq", dispatched=True)
        )
    report.moved += len(rows)
