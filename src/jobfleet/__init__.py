"""jobfleet: background jobs that are never left stuck or lost.

The API for applications::

    import jobfleet

    job_id = jobfleet.enqueue("shop.jobs:send_invoice", 42, queue="default")

    def send_invoice(order_id):          # inside a job
        jobfleet.progress(50)
        raise jobfleet.FatalError("order is gone")   # fail now, no retry

The config comes from ``$JOBFLEET_CONFIG`` (else ``/etc/jobfleet/jobfleet.yml``); call
:func:`configure` to use another file.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from jobfleet.errors import FatalError, JobfleetError

if TYPE_CHECKING:
    from jobfleet.runtime import Runtime

__all__ = ["FatalError", "JobfleetError", "configure", "enqueue", "progress"]

_lock = threading.Lock()
_runtime: Runtime | None = None


def configure(path: str | None = None) -> None:
    """Load the config at ``path`` (default: ``$JOBFLEET_CONFIG``) for later calls."""
    global _runtime
    from jobfleet.runtime import Runtime

    with _lock:
        _runtime = Runtime.from_path(path)


def _get_runtime() -> Runtime:
    if _runtime is None:
        configure()
    assert _runtime is not None
    return _runtime


def enqueue(
    func: str,
    *args: Any,
    queue: str = "default",
    max_attempts: int | None = None,
    job_id: str | None = None,
    **kwargs: Any,
) -> str:
    """Record a job in the ledger, then dispatch it; return its id.

    Redis being down is not an error: the job stays pending and the reaper sends it.
    """
    from jobfleet.dispatch import enqueue as _enqueue

    done = _enqueue(
        _get_runtime(), func, args, kwargs, queue=queue, max_attempts=max_attempts, job_id=job_id
    )
    return done.id


def progress(percent: float) -> None:
    """Record the running job's progress, 0 to 100 (only inside a job)."""
    from jobfleet.runner import progress as _progress

    _progress(percent)
