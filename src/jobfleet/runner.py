"""The one job wrapper that the RQ worker and the poller share.

It runs a claimed ledger row: heartbeat thread on, call the function, heartbeat off, then
complete the row, retry it later (exponential backoff with full jitter) or fail it, and
write one JSON log line for each step. A row that is gone is dropped with one line and
never retried.
"""

from __future__ import annotations

import random
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobfleet import logs
from jobfleet.classify import UnknownFunctionError, classify, describe
from jobfleet.dispatch import resolve
from jobfleet.errors import JobfleetError, UsageError

if TYPE_CHECKING:
    from jobfleet.ledger import JobRow
    from jobfleet.runtime import Runtime


@dataclass(frozen=True)
class Outcome:
    """What became of one run: ``success``, ``retry``, ``failed`` or ``dropped``."""

    kind: str
    delay: float = 0.0
    error: BaseException | None = None
    value: Any = None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**attempt)) seconds before the next try."""
    return random.uniform(0.0, min(cap, base * (2.0**attempt)))


class Heartbeat(threading.Thread):
    """Refreshes ``heartbeat_at`` of the running row every ``interval`` seconds."""

    def __init__(self, runtime: Runtime, row: JobRow, interval: float) -> None:
        super().__init__(name=f"heartbeat-{row.id}", daemon=True)
        self.runtime, self.row, self.interval = runtime, row, max(interval, 0.05)
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if not self.runtime.ledger.heartbeat(self.row):
                    self.lost = True  # the reaper or an operator took the row away
                    return
            except Exception:  # a missed beat is retried on the next tick
                continue

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=self.interval + 5)


_active: JobRow | None = None
_active_runtime: Runtime | None = None


def progress(percent: float) -> None:
    """Record the running job's progress (0 to 100) in its ledger row."""
    if _active is None or _active_runtime is None:
        raise JobfleetError("jobfleet.progress() was called outside a jobfleet job")
    if isinstance(percent, bool) or not 0 <= float(percent) <= 100:
        raise UsageError(f"progress must be between 0 and 100, got {percent!r}")
    _active_runtime.ledger.set_progress(_active, float(percent))


class JobRunner:
    """Runs ledger rows for one worker name, in ``rq`` or ``db`` mode."""

    def __init__(self, runtime: Runtime, worker: str, mode: str) -> None:
        self.runtime, self.worker, self.mode = runtime, worker, mode

    def log(self, event: str, row: JobRow, **fields: Any) -> None:
        logs.emit(
            event,
            stream=self.runtime.stream,
            job_id=row.id,
            queue=row.queue,
            func=row.func,
            attempt=row.attempts,
            max_attempts=row.max_attempts,
            worker=self.worker,
            **fields,
        )

    def claim_and_run(self, job_id: str) -> Outcome:
        """RQ mode: claim the row by id (pending -> running), then run it."""
        ledger = self.runtime.ledger
        row = ledger.claim(job_id, self.worker)
        if row is None:
            current = ledger.get(job_id)
            if current is None:
                reason, kind = "the ledger row no longer exists", "missing_row"
                logs.emit(
                    "JOB_DROPPED",
                    stream=self.runtime.stream,
                    job_id=job_id,
                    worker=self.worker,
                    error=reason,
                    error_kind=kind,
                    fatal=True,
                    will_retry=False,
                )
            else:
                reason = f"the ledger row is {current.status}, not pending"
                self.log(
                    "JOB_DROPPED",
                    current,
                    error=reason,
                    error_kind="not_pending",
                    fatal=True,
                    will_retry=False,
                )
            return Outcome("dropped")
        return self.run(row)

    def run(self, row: JobRow, timeout: int | None = None) -> Outcome:
        """Run a row this worker has claimed; ``timeout`` arms SIGALRM (poller mode)."""
        global _active, _active_runtime
        config = self.runtime.config
        self.log("JOB_START", row)
        heartbeat = Heartbeat(self.runtime, row, config.heartbeat_interval)
        heartbeat.start()
        started = time.monotonic()
        error: BaseException | None = None
        value: Any = None
        _active, _active_runtime = row, self.runtime
        try:
            try:
                func = resolve(row.func)
            except UsageError as exc:
                raise UnknownFunctionError(str(exc)) from None
            args, kwargs = row.call_args()
            with _penalty(timeout):
                value = func(*args, **kwargs)
        except Exception as exc:
            error = exc
        finally:
            _active = _active_runtime = None
            heartbeat.stop()
        duration_ms = int((time.monotonic() - started) * 1000)
        if error is None:
            return self._succeeded(row, value, duration_ms)
        return self._failed(row, error, duration_ms)

    def _succeeded(self, row: JobRow, value: Any, duration_ms: int) -> Outcome:
        if self.runtime.ledger.complete(row):
            self.log("JOB_SUCCESS", row, duration_ms=duration_ms, fatal=False, will_retry=False)
            return Outcome("success", value=value)
        self._lost(row, duration_ms)
        return Outcome("dropped")

    def _failed(self, row: JobRow, error: BaseException, duration_ms: int) -> Outcome:
        config = self.runtime.config
        verdict = classify(error, config.fatal_exceptions)
        text = describe(error)
        ledger = self.runtime.ledger
        if not verdict.fatal and row.attempts < row.max_attempts:
            delay = backoff_delay(row.attempts, config.backoff_base, config.backoff_max)
            if self.mode == "rq":
                delay = float(round(delay))  # RQ schedules in whole seconds
            if ledger.retry_later(row, text, verdict.kind, delay, dispatched=True):
                self.log(
                    "JOB_RETRY",
                    row,
                    duration_ms=duration_ms,
                    error=text,
                    error_kind=verdict.kind,
                    fatal=False,
                    will_retry=True,
                )
                return Outcome("retry", delay=delay, error=error)
        elif ledger.fail(row, text, verdict.kind):
            self.log(
                "JOB_FAILED",
                row,
                duration_ms=duration_ms,
                error=text,
                error_kind=verdict.kind,
                fatal=verdict.fatal,
                will_retry=False,
            )
            return Outcome("failed", error=error)
        self._lost(row, duration_ms)
        return Outcome("dropped", error=error)

    def _lost(self, row: JobRow, duration_ms: int) -> None:
        current = self.runtime.ledger.get(row.id)
        state = "deleted" if current is None else current.status
        self.log(
            "JOB_DROPPED",
            row,
            duration_ms=duration_ms,
            error=f"the row changed under this worker (now {state}); outcome not recorded",
            error_kind="lost_ownership",
            fatal=False,
            will_retry=False,
        )


def _penalty(timeout: int | None) -> AbstractContextManager[Any]:
    if not timeout:
        return nullcontext()
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

    penalty: AbstractContextManager[Any] = UnixSignalDeathPenalty(  # type: ignore[no-untyped-call]
        timeout, JobTimeoutException
    )
    return penalty
