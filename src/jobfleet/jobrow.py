"""A ledger row as read, and the plain values every ledger module shares.

No SQLAlchemy here: the worker process reads and writes rows without it
(:mod:`jobfleet.worker_ledger`), and the CLI's ledger (:mod:`jobfleet.ledger`) builds
the same :class:`JobRow`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

ERROR_MAX_CHARS = 4000
"""The ledger keeps this much of an error text."""

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL = ("completed", "failed", "cancelled")


def utcnow() -> datetime:
    """Naive UTC (the ledger stores naive UTC times on every backend)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class JobRow:
    """One ledger row, as read."""

    id: str
    queue: str
    func: str
    args: str
    kwargs: str
    status: str
    mode: str
    progress: float
    attempts: int
    max_attempts: int
    worker: str | None
    heartbeat_at: datetime | None
    error: str | None
    error_kind: str | None
    created_at: datetime
    first_started_at: datetime | None
    last_started_at: datetime | None
    finished_at: datetime | None
    run_after: datetime | None
    dispatched: bool

    @classmethod
    def from_mapping(cls, mapping: Any) -> JobRow:
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})

    def call_args(self) -> tuple[list[Any], dict[str, Any]]:
        """The decoded positional and keyword arguments."""
        args = json.loads(self.args)
        kwargs = json.loads(self.kwargs)
        return list(args), dict(kwargs)

    def send_claimed_after(self, since: datetime) -> bool:
        """Whether this row is unsent with a ``run_after`` later than ``since``: a reaper
        claimed its send then (:meth:`Ledger.claim_send` stamps it) and may still be
        sending it, or it is not due yet. Another reaper leaves it alone until then."""
        return not self.dispatched and self.run_after is not None and self.run_after > since

    def public(self) -> dict[str, Any]:
        """The row as ``jobfleet job show --json`` prints it (times ISO 8601 UTC)."""
        args, kwargs = self.call_args()
        out: dict[str, Any] = {}
        for name in SHOW_KEYS:
            value = kwargs if name == "kwargs" else args if name == "args" else getattr(self, name)
            out[name] = iso(value) if isinstance(value, datetime) else value
        return out


SHOW_KEYS = (
    "id",
    "queue",
    "func",
    "args",
    "kwargs",
    "status",
    "mode",
    "progress",
    "attempts",
    "max_attempts",
    "worker",
    "heartbeat_at",
    "error",
    "error_kind",
    "created_at",
    "first_started_at",
    "last_started_at",
    "finished_at",
    "dispatched",
)
"""The keys of ``job show --json``, pinned by docs/contracts.md."""


def iso(value: datetime | None) -> str | None:
    """Naive UTC -> ISO 8601 with an explicit ``Z``."""
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def cut(text: str | None) -> str | None:
    return None if text is None else text[:ERROR_MAX_CHARS]
