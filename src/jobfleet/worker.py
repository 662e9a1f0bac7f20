"""``jobfleet worker``: an RQ worker whose every job runs through the ledger wrapper.

How a job travels:

* The RQ job carries the real function name and JSON arguments (RQ's ``JSONSerializer``,
  never pickle) under the ledger row's id.
* The worker process claims the row (pending -> running, attempts + 1) before it forks the
  work horse, and heartbeats the row from a thread while the horse runs. The horse only
  runs the function (:class:`LedgerJob`); it sends its outcome, and any
  ``jobfleet.progress()``, to the worker over a pipe (:mod:`jobfleet.horse_channel`) and
  waits until the worker has written the ledger. All ledger writes thus use the worker's
  warm database connections; a horse opens none. The worker writes through
  :class:`~jobfleet.worker_ledger.WorkerLedger` (the plain DBAPI driver, the statements
  of :mod:`jobfleet.ledger_sql`) and never imports SQLAlchemy.
* Retries: for a retryable failure the worker sets the row back to ``pending`` with
  ``run_after``, then the horse returns an RQ ``Retry`` with that delay, so RQ itself
  reschedules the same job id. The worker runs RQ's scheduler (``with_scheduler=True``),
  which moves due jobs back to their queue; plain ``jobfleet worker`` processes need
  nothing else. If no scheduler is alive, the reaper pushes overdue retries
  (see :mod:`jobfleet.reaper`).
* Fatal and final failures are re-raised in the horse, so RQ's failed registry agrees
  with the ledger. A job timeout (``JobTimeoutException``) is a retryable ``timeout``.
* A row that no longer exists, or is not pending, is dropped with one log line and the
  horse does not call the function; it is never retried.
* A work horse killed by a signal (OOM killer, kill -9) is recorded at once by the worker
  (:meth:`JobfleetWorker.on_horse_killed`): the row is requeued and sent again, or failed
  when no attempts are left. It is not left for the reaper.
* The ledger unreachable (no job lost, none run twice, the worker keeps running):

  - at the claim, the job is not run: it goes back to the front of its RQ queue, one line
    says so on stderr, and the worker waits (taking no job) until the ledger answers
    again, then carries on;
  - at the outcome, the worker keeps the outcome in memory and writes it when the ledger
    answers again (:mod:`jobfleet.horse_channel`); until then the heartbeat thread marks
    the attempt alive in Redis, so a reaper does not requeue a job whose worker is only
    cut off from the database.

Shutdown: SIGTERM asks for a warm shutdown; the running job finishes first. The systemd
unit therefore needs ``KillMode=mixed`` (SIGTERM to the main process only); with the
default ``control-group`` mode systemd sends SIGTERM to the work horse too and kills the
job. ``TimeoutStopSec`` must sit above the longest job timeout.

Names: the ledger's ``worker`` column holds ``--name`` (``host:unit``); RQ registers the
worker as ``NAME/PID-RANDOM``, so a unit restarted after ``kill -9`` never collides with
its own stale registration.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import secrets
import sys
import time
from typing import TYPE_CHECKING, Any

from rq import Retry, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from jobfleet.dispatch import send
from jobfleet.errors import UnavailableError
from jobfleet.horse_channel import HorseChannel, Relays
from jobfleet.runner import JobRunner, call, progress_to

if TYPE_CHECKING:
    from resource import struct_rusage

    from rq import Queue

    from jobfleet.runtime import Runtime

LEDGER_WAIT_MAX = 5.0
"""Longest pause, in seconds, between two checks of an unreachable ledger."""

RETRY_CEILING = 1_000_000
"""The ``max`` of the ``Retry`` we hand to RQ: the ledger, not RQ, counts attempts."""

_horse: tuple[JobRunner, HorseChannel] | None = None
"""Set in a work horse right after the fork; None in any other process."""


class LedgerJob(Job):
    """An RQ job whose function runs inside the ledger wrapper (in the work horse)."""

    def _execute(self) -> Any:
        if _horse is None:  # a plain `rq worker` picked up a jobfleet job
            return super()._execute()
        runner, channel = _horse
        row = channel.row
        if row is None:  # the worker could not claim the row and logged why
            return None
        with progress_to(channel.progress):
            value, error, duration_ms = call(row)  # RQ's death penalty enforces the timeout
        judgement = None if error is None else runner.judge(row, error)
        recorded = channel.report(judgement, duration_ms)
        if recorded == "retry" and judgement is not None:
            return Retry(max=RETRY_CEILING, interval=int(judgement.delay))
        if recorded == "failed" and error is not None:
            raise error
        return _json_safe(value) if recorded == "success" else None


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


class JobfleetWorker(Worker):
    """RQ's forking worker; claims, heartbeats and records in this process."""

    job_class = LedgerJob

    def __init__(self, runtime: Runtime, queues: list[str], name: str) -> None:
        self.runtime = runtime
        self.ledger = runtime.worker_ledger
        self.ledger_name = name
        self.runner = JobRunner(runtime, name, "rq", ledger=self.ledger)
        self.channel: HorseChannel | None = None
        self.relays = Relays()
        self._redispatch: str | None = None
        super().__init__(
            [runtime.rq_queue(q) for q in queues],
            name=rq_worker_name(name),
            connection=runtime.redis,
            serializer=JSONSerializer,
            log_job_description=False,
            work_horse_killed_handler=self.on_horse_killed,
        )

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            row = self.runner.claim(job.id)
        except UnavailableError as exc:
            # The ledger is unreachable: the job is not run, and not lost either.
            self.give_back(job, queue)
            _say(f"{exc}; job {job.id} put back on queue {queue.name}")
            self.wait_for_ledger()
            return
        except BaseException:  # e.g. a shutdown signal during a slow claim
            self.give_back(job, queue)
            raise
        if row is not None:
            self.runner.log("JOB_START", row)
        self.channel = HorseChannel(
            self.runner, row, stopping=lambda: self._stop_requested, relays=self.relays
        )
        try:
            super().execute_job(job, queue)
        finally:
            self.channel.close()
            self.channel = None
        job_id, self._redispatch = self._redispatch, None
        if job_id is not None:  # after RQ has recorded its own failure of the dead horse
            current = self.ledger.get(job_id)
            if current is not None and current.status == "pending":
                send(self.runtime, current, ledger=self.ledger)

    def give_back(self, job: Job, queue: Queue) -> None:
        """Put a dequeued job that was not run back at the front of its queue."""
        with self.connection.pipeline() as pipe:
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            pipe.lpush(queue.key, job.id)
            pipe.execute()

    def wait_for_ledger(self) -> None:
        """Take no job until the ledger answers (or a shutdown is asked for)."""
        ledger = self.ledger
        ledger.dispose()  # pooled connections to a restarted server are dead
        delay = 1.0
        while not self._stop_requested:
            try:
                ledger.ping()
            except Exception:
                with contextlib.suppress(Exception):
                    self.heartbeat()  # RQ's registration stays alive while we wait
                time.sleep(delay)  # a SIGTERM here ends the worker (nothing is held)
                delay = min(delay * 2, LEDGER_WAIT_MAX)
                continue
            _say("the ledger answers again; taking jobs")
            return

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        # Frozen objects are never scanned by the horse's garbage collector, so the horse
        # does not copy the worker's memory page by page (fork stays cheap, as in plain RQ
        # with a small heap). The worker unfreezes at once, so its own garbage is collected.
        gc.freeze()
        try:
            super().fork_work_horse(job, queue)  # the horse never returns from this call
        finally:
            gc.unfreeze()
        assert self.channel is not None
        self.channel.worker_after_fork()

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        global _horse
        assert self.channel is not None
        self.channel.horse_after_fork()
        _horse = (self.runner, self.channel)
        super().main_work_horse(job, queue)

    def on_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: struct_rusage) -> None:
        """Record a work horse that died by a signal (OOM killer, kill -9) right away."""
        if self.channel is not None:
            self.channel.drain()  # an outcome the horse sent before it died comes first
        ledger = self.ledger
        row = ledger.get(job.id)
        if row is None or row.status != "running" or row.worker != self.ledger_name:
            return
        signum = os.WTERMSIG(ret_val) if ret_val and os.WIFSIGNALED(ret_val) else None
        how = f"signal {signum}" if signum else f"exit status {ret_val}"
        message = f"work horse of worker {self.ledger_name} died ({how}) during the job"
        new = ledger.release(row, message, "killed", stale_before=None)
        if new is None:
            return
        fields: dict[str, Any] = {"error": message, "error_kind": "killed", "fatal": False}
        if new.status == "pending":
            self.runner.log("JOB_REQUEUED", row, will_retry=True, **fields)
            self._redispatch = new.id
        else:
            self.runner.log("JOB_FAILED", row, will_retry=False, **fields)


def _say(text: str) -> None:
    print(f"jobfleet worker: {text}", file=sys.stderr, flush=True)


def rq_worker_name(name: str) -> str:
    """The Redis registration name: unique per process."""
    return f"{name}/{os.getpid()}-{secrets.token_hex(3)}"


def run_worker(runtime: Runtime, queues: list[str], name: str, burst: bool = False) -> bool:
    """Run the RQ worker until SIGTERM (or, with ``burst``, until the queues are empty)."""
    for queue in queues:
        runtime.config.queue(queue)  # unknown queue: one line, exit 2
    runtime.redis.ping()
    # RQ's own log lines go to stderr: stdout carries only the JSON event lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    rq_logger = logging.getLogger("rq")
    rq_logger.addHandler(handler)
    rq_logger.setLevel(logging.WARNING)
    worker = JobfleetWorker(runtime, queues, name)
    return bool(worker.work(burst=burst, with_scheduler=True, logging_level="WARNING"))
