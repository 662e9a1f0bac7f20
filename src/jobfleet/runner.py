"""The one job wrapper that the RQ worker and the poller share.

Its steps: claim the row (pending -> running), heartbeat while the function runs, judge a
failure (fatal, or retry after exponential backoff with full jitter, or final), record the
outcome with one conditional UPDATE, and write one JSON log line for each step. A row that
is gone is dropped with one line and never retried. The poller runs all steps in its own
process (:meth:`JobRunner.run`); the RQ worker splits them between itself and its work
horse (:mod:`jobfleet.worker`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobfleet import logs
from jobfleet.classify import UnknownFunctionError, classify, describe
from jobfleet.dispatch import resolve
from jobfleet.errors import JobfleetError, UsageError

if TYPE_CHECKING:
    from jobfleet.jobrow import JobRow
    from jobfleet.ledger_sql import RowLedger
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
    """Refreshes ``heartbeat_at`` of the running row every ``interval`` seconds (through
    ``ledger``, by default the runtime's)."""

    def __init__(
        self, runtime: Runtime, row: JobRow, interval: float, ledger: RowLedger | None = None
    ) -> None:
        super().__init__(name=f"heartbeat-{row.id}", daemon=True)
        self.runtime, self.row, self.interval = runtime, row, max(interval, 0.05)
        self.ledger: RowLedger = runtime.ledger if ledger is None else ledger
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if not self.ledger.heartbeat(self.row):
                    self.lost = True  # the reaper or an operator took the row away
                    return
            except Exception as exc:  # a missed beat is retried on the next tick
                self.missed(exc)

    def missed(self, error: Exception) -> None:
        """Called when a beat could not be written (the ledger is unreachable)."""

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=self.interval + 5)


_progress_sink: Callable[[float], object] | None = None
"""Where :func:`progress` goes: the ledger (poller) or the pipe to the worker (RQ horse)."""


def progress(percent: float) -> None:
    """Record the running job's progress (0 to 100) in its ledger row."""
    if _progress_sink is None:
        raise JobfleetError("jobfleet.progress() was called outside a jobfleet job")
    if isinstance(percent, bool) or not 0 <= float(percent) <= 100:
        raise UsageError(f"progress must be between 0 and 100, got {percent!r}")
    _progress_sink(float(percent))


@contextmanager
def progress_to(sink: Callable[[float], object]) -> Iterator[None]:
    global _progress_sink
    _progress_sink = sink
    try:
        yield
    finally:
        _progress_sink = None


@dataclass(frozen=True)
class Judgement:
    """What a failure means for the row: retry after ``delay``, or fail (fatal or final)."""

    retry: bool
    fatal: bool
    kind: str
    text: str
    delay: float = 0.0


def call(row: JobRow, timeout: int | None = None) -> tuple[Any, BaseException | None, int]:
    """Run the row's function: (return value, exception or None, duration in ms)."""
    started = time.monotonic()
    try:
        try:
            func = resolve(row.func)
        except UsageError as exc:
            raise UnknownFunctionError(str(exc)) from None
        args, kwargs = row.call_args()
        with _penalty(timeout):
            value = func(*args, **kwargs)
    except Exception as exc:
        return None, exc, int((time.monotonic() - started) * 1000)
    return value, None, int((time.monotonic() - started) * 1000)


class JobRunner:
    """Claims, records and logs ledger rows for one worker name, in ``rq`` or ``db`` mode.

    ``ledger`` is the runtime's SQLAlchemy ledger unless given (the RQ worker passes its
    :class:`~jobfleet.worker_ledger.WorkerLedger`).
    """

    def __init__(
        self, runtime: Runtime, worker: str, mode: str, ledger: RowLedger | None = None
    ) -> None:
        self.runtime, self.worker, self.mode = runtime, worker, mode
        self.ledger: RowLedger = runtime.ledger if ledger is None else ledger

    def log(self, event: str, row: JobRow, **fields: Any) -> None:
        logs.emit_row(event, row, self.worker, stream=self.runtime.stream, **fields)

    def claim(self, job_id: str) -> JobRow | None:
        """RQ mode: pending -> running by id; None (and one log line) when it cannot run."""
        ledger = self.ledger
        row = ledger.claim(job_id, self.worker)
        if row is not None:
            return row
        current = ledger.get(job_id)
        if current is None:
            logs.emit(
                "JOB_DROPPED",
                stream=self.runtime.stream,
                job_id=job_id,
                worker=self.worker,
                error="the ledger row no longer exists",
                error_kind="missing_row",
                fatal=True,
                will_retry=False,
            )
        else:
            self.log(
                "JOB_DROPPED",
                current,
                error=f"the ledger row is {current.status}, not pending",
                error_kind="not_pending",
                fatal=True,
                will_retry=False,
            )
        return None

    def judge(self, row: JobRow, error: BaseException) -> Judgement:
        config = self.runtime.config
        verdict = classify(error, config.fatal_exceptions)
        text = describe(error)
        if verdict.fatal or row.attempts >= row.max_attempts:
            return Judgement(False, verdict.fatal, verdict.kind, text)
        delay = backoff_delay(row.attempts, config.backoff_base, config.backoff_max)
        if self.mode == "rq":
            delay = float(round(delay))  # RQ schedules in whole seconds
        return Judgement(True, False, verdict.kind, text, delay)

    def run(self, row: JobRow, timeout: int | None = None) -> Outcome:
        """Run a claimed row in this process (poller): heartbeat, call, record."""
        self.log("JOB_START", row)
        interval = self.runtime.config.heartbeat_interval
        heartbeat = Heartbeat(self.runtime, row, interval, self.ledger)
        heartbeat.start()
        try:
            with progress_to(lambda p: self.ledger.set_progress(row, p)):
                value, error, duration_ms = call(row, timeout)
        finally:
            heartbeat.stop()
        judgement = None if error is None else self.judge(row, error)
        kind = self.record(row, judgement, duration_ms)
        delay = judgement.delay if judgement else 0.0
        return Outcome(kind, delay=delay, error=error, value=value)

    def record(self, row: JobRow, judgement: Judgement | None, duration_ms: int) -> str:
        """Write the outcome of one run; returns success, retry, failed or dropped."""
        ledger = self.ledger
        if judgement is None:
            if ledger.complete(row):
                self.log("JOB_SUCCESS", row, duration_ms=duration_ms, fatal=False, will_retry=False)
                return "success"
        elif judgement.retry:
            if ledger.retry_later(row, judgement.text, judgement.kind, judgement.delay, True):
                self.log(
                    "JOB_RETRY",
                    row,
                    duration_ms=duration_ms,
                    error=judgement.text,
                    error_kind=judgement.kind,
                    fatal=False,
                    will_retry=True,
                )
                return "retry"
        elif ledger.fail(row, judgement.text, judgement.kind):
            self.log(
                "JOB_FAILED",
                row,
                duration_ms=duration_ms,
                error=judgement.text,
                error_kind=judgement.kind,
                fatal=judgement.fatal,
                will_retry=False,
            )
            return "failed"
        current = ledger.get(row.id)
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
        return "dropped"


def _penalty(timeout: int | None) -> AbstractContextManager[Any]:
    if not timeout:
        return nullcontext()
    from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

    penalty: AbstractContextManager[Any] = UnixSignalDeathPenalty(  # type: ignore[no-untyped-call]
        timeout, JobTimeoutException
    )
    return penalty
