"""``jobfleet worker``: an RQ worker whose every job runs through the ledger wrapper.

How a job travels:

* The RQ job carries the real function name and JSON arguments (RQ's ``JSONSerializer``,
  never pickle) under the ledger row's id. :class:`LedgerJob` replaces RQ's call with
  :meth:`jobfleet.runner.JobRunner.claim_and_run`, so the work horse claims the row,
  heartbeats, runs the function and records the outcome.
* Retries: a retryable failure sets the row back to ``pending`` with ``run_after`` and
  returns an RQ ``Retry`` with that delay, so RQ itself reschedules the same job id. The
  worker runs with RQ's scheduler (``with_scheduler=True``), which moves due jobs back to
  their queue; plain ``jobfleet worker`` processes need nothing else. If no scheduler is
  alive, the reaper pushes overdue retries (see :mod:`jobfleet.reaper`).
* Fatal and final failures are re-raised, so RQ's failed registry agrees with the ledger.
* A job timeout (``JobTimeoutException``) is a retryable ``timeout`` error.
* A work horse killed by a signal is recorded at once by the worker process
  (:meth:`JobfleetWorker.on_horse_killed`): the row is requeued and sent again, or failed
  when no attempts are left. It is not left for the reaper.

Shutdown: SIGTERM asks for a warm shutdown; the running job finishes first. The systemd
unit therefore needs ``KillMode=mixed`` (SIGTERM to the main process only); with the
default ``control-group`` mode systemd sends SIGTERM to the work horse too and kills the
job. ``TimeoutStopSec`` must sit above the longest job timeout.

Names: the ledger's ``worker`` column holds ``--name`` (``host:unit``); RQ registers the
worker as ``NAME/PID-RANDOM``, so a unit restarted after ``kill -9`` never collides with
its own stale registration.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

from rq import Retry, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from jobfleet.runner import JobRunner

if TYPE_CHECKING:
    from resource import struct_rusage

    from rq import Queue
    from rq.executions import Execution

    from jobfleet.runtime import Runtime

RETRY_CEILING = 1_000_000
"""The ``max`` of the ``Retry`` we hand to RQ: the ledger, not RQ, counts attempts."""

_runner: JobRunner | None = None


class LedgerJob(Job):
    """An RQ job whose execution goes through the ledger wrapper."""

    def _execute(self) -> Any:
        if _runner is None:  # a plain `rq worker` picked up a jobfleet job
            return super()._execute()
        outcome = _runner.claim_and_run(self.id)
        if outcome.kind == "retry":
            return Retry(max=RETRY_CEILING, interval=int(outcome.delay))
        if outcome.kind == "failed" and outcome.error is not None:
            raise outcome.error
        return _json_safe(outcome.value)


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


class JobfleetWorker(Worker):
    """RQ's forking worker plus ledger bookkeeping for killed work horses."""

    job_class = LedgerJob

    def __init__(self, runtime: Runtime, queues: list[str], name: str) -> None:
        global _runner
        self.runtime = runtime
        self.ledger_name = name
        _runner = JobRunner(runtime, name, "rq")
        self._redispatch: str | None = None
        super().__init__(
            [runtime.rq_queue(q) for q in queues],
            name=rq_worker_name(name),
            connection=runtime.redis,
            serializer=JSONSerializer,
            log_job_description=False,
            work_horse_killed_handler=self.on_horse_killed,
        )

    def on_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: struct_rusage) -> None:
        """Record a work horse that died by a signal (OOM killer, kill -9) right away."""
        ledger = self.runtime.ledger
        row = ledger.get(job.id)
        if row is None or row.status != "running" or row.worker != self.ledger_name:
            return
        signum = os.WTERMSIG(ret_val) if ret_val and os.WIFSIGNALED(ret_val) else None
        how = f"signal {signum}" if signum else f"exit status {ret_val}"
        message = f"work horse of worker {self.ledger_name} died ({how}) during the job"
        new = ledger.release(row, message, "killed", stale_before=None)
        if new is None:
            return
        runner = JobRunner(self.runtime, self.ledger_name, "rq")
        fields: dict[str, Any] = {"error": message, "error_kind": "killed", "fatal": False}
        if new.status == "pending":
            runner.log("JOB_REQUEUED", row, will_retry=True, **fields)
            self._redispatch = new.id  # after RQ has recorded its own failure
        else:
            runner.log("JOB_FAILED", row, will_retry=False, **fields)

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        super().monitor_work_horse(job, queue, execution)
        job_id, self._redispatch = self._redispatch, None
        if job_id is not None:
            from jobfleet.dispatch import send

            row = self.runtime.ledger.get(job_id)
            if row is not None and row.status == "pending":
                send(self.runtime, row)


def rq_worker_name(name: str) -> str:
    """The Redis registration name: unique per process."""
    return f"{name}/{os.getpid()}-{secrets.token_hex(3)}"


def run_worker(runtime: Runtime, queues: list[str], name: str, burst: bool = False) -> bool:
    """Run the RQ worker until SIGTERM (or, with ``burst``, until the queues are empty)."""
    for queue in queues:
        runtime.config.queue(queue)  # unknown queue: one line, exit 2
    runtime.redis.ping()
    logging.getLogger("rq").setLevel(logging.WARNING)
    worker = JobfleetWorker(runtime, queues, name)
    return bool(worker.work(burst=burst, with_scheduler=True, logging_level="WARNING"))
