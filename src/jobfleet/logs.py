"""One JSON line on stdout per job event: the keys below and nothing else.

Argument values never appear (they may hold personal data or secrets); error texts are cut
short and URLs in them lose their passwords.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from jobfleet.errors import redact

if TYPE_CHECKING:
    from jobfleet.ledger import JobRow

EVENTS = (
    "JOB_START",
    "JOB_SUCCESS",
    "JOB_RETRY",
    "JOB_FAILED",
    "JOB_DROPPED",
    "JOB_ORPHANED",
    "JOB_REQUEUED",
)
"""Every ``event`` value a log line may carry."""

KEYS = (
    "event",
    "job_id",
    "queue",
    "func",
    "attempt",
    "max_attempts",
    "duration_ms",
    "error",
    "error_kind",
    "fatal",
    "will_retry",
    "worker",
)
"""The exact keys of every log line, in order."""

MAX_ERROR_CHARS = 500
"""Error texts are cut to this length in logs (the ledger keeps more)."""

_lock = threading.Lock()


def event_line(event: str, **fields: Any) -> str:
    """Render one log line; unknown fields are a programming error."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    extra = set(fields) - set(KEYS)
    if extra:
        raise ValueError(f"unknown log fields {sorted(extra)}")
    record: dict[str, Any] = dict.fromkeys(KEYS)
    record.update(fields)
    record["event"] = event
    error = record["error"]
    if isinstance(error, str):
        record["error"] = redact(error)[:MAX_ERROR_CHARS]
    return json.dumps(record, separators=(",", ":"), default=str)


def emit(event: str, stream: IO[str] | None = None, **fields: Any) -> None:
    """Write one event line to stdout (or ``stream``) and flush it."""
    line = event_line(event, **fields)
    out = stream or sys.stdout
    with _lock:
        out.write(line + "\n")
        out.flush()


def emit_row(
    event: str, row: JobRow, worker: str | None, stream: IO[str] | None = None, **fields: Any
) -> None:
    """Write one event line about ``row``: its id, queue, function and attempt count."""
    emit(
        event,
        stream=stream,
        job_id=row.id,
        queue=row.queue,
        func=row.func,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        worker=worker,
        **fields,
    )
