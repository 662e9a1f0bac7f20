"""``jobfleet backup``: RQ's view of some queues and their ledger rows, as JSON lines.

Per queue: the queue list, the intermediate list, the scheduled, started and deferred
registries (id and score), and every job hash they name (binary fields base64). Plus the
ledger rows of those queues. A ``manifest.json`` lists each file's line count and sha256;
:func:`verify` checks them. The directory is written under a temporary name and renamed at
the end, so a backup that exists is complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import select

from jobfleet.errors import JobfleetError, UsageError
from jobfleet.ledger import iso
from jobfleet.schema import jobs, utcnow

if TYPE_CHECKING:
    from redis import Redis

    from jobfleet.runtime import Runtime

FORMAT_VERSION = 1
BATCH = 1000
"""Job hashes and ledger rows read per round trip."""

MANIFEST = "manifest.json"


@dataclass
class BackupResult:
    path: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def rq_keys(runtime: Runtime, queue: str) -> dict[str, tuple[str, str]]:
    """Each RQ structure of ``queue``: its backup name -> (Redis key, list or zset)."""
    q = runtime.rq_queue(queue)
    return {
        "queued": (q.key, "list"),
        "intermediate": (q.intermediate_queue_key, "list"),
        "scheduled": (q.scheduled_job_registry.key, "zset"),
        "started": (q.started_job_registry.key, "zset"),
        "deferred": (q.deferred_job_registry.key, "zset"),
    }


def scan_ids(redis: Redis, key: str, kind: str) -> Iterator[tuple[str, float | None]]:
    """The members of a list or zset, in batches (id, score or None)."""
    start = 0
    while True:
        chunk: list[tuple[str, float | None]]
        if kind == "list":
            values: list[Any] = redis.lrange(key, start, start + BATCH - 1)
            chunk = [(_text(v), None) for v in values]
        else:
            pairs: list[Any] = redis.zrange(key, start, start + BATCH - 1, withscores=True)
            chunk = [(_text(v), float(s)) for v, s in pairs]
        yield from chunk
        if len(chunk) < BATCH:
            return
        start += BATCH


def _jsonable_hash(raw: dict[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw.items():
        key = _text(k)
        try:
            out[key] = v.decode() if isinstance(v, bytes) else str(v)
        except UnicodeDecodeError:
            out[key + ":b64"] = base64.b64encode(v).decode()
    return out


class _Writer:
    """A JSON-lines file that counts its lines and hashes its bytes."""

    def __init__(self, path: Path) -> None:
        self.path, self.count, self.digest = path, 0, hashlib.sha256()
        self.handle: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed in close())

    def write(self, obj: Any) -> None:
        line = (json.dumps(obj, sort_keys=True, default=str) + "\n").encode()
        self.handle.write(line)
        self.digest.update(line)
        self.count += 1

    def close(self) -> dict[str, Any]:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return {"count": self.count, "sha256": self.digest.hexdigest()}


def backup(
    runtime: Runtime, out: str, queues: list[str], dry_run: bool = False, redis_lost: bool = False
) -> BackupResult:
    """Write the backup of ``queues`` to ``out`` (which must not exist yet)."""
    for queue in queues:
        runtime.config.queue(queue)
    final = Path(out)
    if final.exists():
        raise UsageError(f"{out} already exists; choose a new backup directory")
    result = BackupResult(str(final))
    tmp = final.with_name(final.name + ".partial")
    if not dry_run:
        tmp.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o700)  # job arguments may be private
    writers: dict[str, _Writer] = {}

    def sink(name: str) -> _Writer | None:
        if dry_run:
            return None
        if name not in writers:
            writers[name] = _Writer(tmp / name)
        return writers[name]

    counts: dict[str, int] = {}

    def emit(name: str, obj: Any) -> None:
        counts[name] = counts.get(name, 0) + 1
        writer = sink(name)
        if writer is not None:
            writer.write(obj)

    for queue in queues:
        if not redis_lost:
            _backup_rq(runtime, queue, emit)
        for row in ledger_rows(runtime, [queue]):
            emit(f"ledger-{queue}.jsonl", row)
    for name in counts:
        result.files[name] = {"count": counts[name]}
    if dry_run:
        return result
    for name, writer in writers.items():
        result.files[name] = writer.close()
    manifest = {
        "format": FORMAT_VERSION,
        "created_at": iso(utcnow()),
        "queues": queues,
        "redis_lost": redis_lost,
        "files": result.files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, final)
    return result


def _backup_rq(runtime: Runtime, queue: str, emit: Any) -> None:
    redis = runtime.redis
    job_ids: list[str] = []
    seen: set[str] = set()
    for part, (key, kind) in rq_keys(runtime, queue).items():
        for job_id, score in scan_ids(redis, key, kind):
            emit(f"rq-{queue}-{part}.jsonl", {"id": job_id, "score": score})
            if job_id not in seen:
                seen.add(job_id)
                job_ids.append(job_id)
    for start in range(0, len(job_ids), BATCH):
        chunk = job_ids[start : start + BATCH]
        with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hgetall(f"rq:job:{job_id}")
            hashes = pipe.execute()
        for job_id, raw in zip(chunk, hashes, strict=True):
            emit(f"rq-{queue}-jobs.jsonl", {"id": job_id, "hash": _jsonable_hash(raw or {})})


def ledger_rows(runtime: Runtime, queues: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every ledger row of ``queues``, in id order, in batches (keyset pagination)."""
    last = ""
    while True:
        query = (
            select(jobs)
            .where(jobs.c.queue.in_(list(queues)), jobs.c.id > last)
            .order_by(jobs.c.id)
            .limit(BATCH)
        )
        with runtime.ledger.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            yield {k: iso(v) if hasattr(v, "isoformat") else v for k, v in row.items()}
        if len(rows) < BATCH:
            return
        last = rows[-1]["id"]


def verify(path: str) -> BackupResult:
    """Check every file of a backup against its manifest (count, sha256, JSON lines)."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except FileNotFoundError:
        raise UsageError(f"{path} has no {MANIFEST}; not a jobfleet backup") from None
    except (ValueError, KeyError, TypeError):
        raise JobfleetError(f"{path}/{MANIFEST} is corrupt") from None
    result = BackupResult(str(root), files)
    for name, expected in sorted(files.items()):
        digest, count = hashlib.sha256(), 0
        try:
            with open(root / name, "rb") as handle:
                for line in handle:
                    digest.update(line)
                    count += 1
                    try:
                        json.loads(line)
                    except ValueError:
                        result.problems.append(f"{name}: line {count} is not JSON")
                        break
        except FileNotFoundError:
            result.problems.append(f"{name}: missing")
            continue
        if count != expected.get("count"):
            result.problems.append(f"{name}: {count} lines, manifest says {expected.get('count')}")
        if digest.hexdigest() != expected.get("sha256"):
            result.problems.append(f"{name}: sha256 does not match the manifest")
    return result
