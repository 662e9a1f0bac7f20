"""Celery workers that keep the same ledger, with the same guarantees as the RQ worker.

An application builds its app with :func:`make_app` and declares tasks with
:func:`ledger_task` (or ``app.task(base=LedgerTask)``)::

    from jobfleet.celery import ledger_task, make_app

    app = make_app("shop.celery_app")

    @ledger_task(app)
    def rebuild_index(shop_id: int) -> None:
        jobfleet.progress(50)

Jobs are enqueued like any other, on a queue whose mode is ``celery``:
``jobfleet.enqueue("shop.celery_app:rebuild_index", 7, queue="index")``. The ledger row is
written first, then sent with ``send_task`` under the row's id (:mod:`jobfleet.celery_send`).

Inside the worker every task runs through the RQ worker's wrapper
(:class:`jobfleet.runner.JobRunner`): the row is claimed under the Celery node name
(``NAME@host``, the ledger's ``worker`` column), heartbeats while the task runs, and
records success, a fatal failure, or a retry with backoff (the retry is a new message
with a countdown under the same id). A row that no longer exists is dropped. A delivery
whose row is not pending (running under another process, or already terminal: a message
redelivered after the visibility timeout, or sent twice by a reaper) is acknowledged and
skipped, with one ``JOB_DROPPED`` line; so is one whose retry is not yet due. The same
JSON event lines go to stdout.

Safety settings (:func:`jobfleet.celery_send.app_settings`): JSON only, ``task_acks_late``
and ``task_reject_on_worker_lost`` (a message is acknowledged only after its task
returned, and comes back when a pool process dies), prefetch 1, and a broker visibility
timeout above the longest time limit. The soft time limit is the queue's ``timeout``
(a retryable ``timeout`` failure); the hard limit sits 30 s above it.

Startup cleanup: when a worker node starts (``worker_init``, before it takes any task)
the rows left running under its own node name are requeued or failed; no other node's
rows are touched. The systemd unit also runs ``jobfleet startup-cleanup --name NAME@%H``.
A node killed outright is handled by the reaper (stale heartbeat: requeue with
``send_task`` under the same id, or fail). A pool process that dies during a task (OOM
killer, kill -9) while its node lives on is recorded at once by the node's main process
(:class:`LedgerRequest`), as the RQ worker records a killed work horse: the row is
requeued (or failed, with no attempts left), and the message that Celery puts back runs
it again.

Shutdown: SIGTERM to the main process is Celery's warm shutdown (running tasks finish);
the unit uses ``KillMode=mixed`` so the pool processes are not signalled too.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from billiard.exceptions import WorkerLostError
from celery import Celery, Task, signals
from celery.worker.request import Request
from sqlalchemy.exc import OperationalError

from jobfleet import logs
from jobfleet.celery_send import app_settings, send
from jobfleet.errors import first_line, redact, translate
from jobfleet.runner import Heartbeat, JobRunner, progress_to
from jobfleet.runtime import Runtime
from jobfleet.schema import utcnow

if TYPE_CHECKING:
    from jobfleet.ledger import JobRow

__all__ = [
    "LedgerRequest",
    "LedgerTask",
    "ledger_task",
    "make_app",
    "pool_process_lost",
    "run_delivery",
    "startup_cleanup",
]

MODE = "celery"
"""The queue mode (and the ``mode`` column) of jobs that travel through Celery."""

NOT_DUE_SLACK = 1.0
"""Seconds a delivery may arrive before its row's ``run_after`` and still run."""

F = TypeVar("F", bound=Callable[..., Any])

_runtimes: dict[tuple[int, str | None], Runtime] = {}


def make_app(
    main: str,
    config_path: str | None = None,
    transport_options: dict[str, Any] | None = None,
    **settings: Any,
) -> Celery:
    """A Celery app with jobfleet's safety settings, the broker read from the config.

    ``config_path``: the jobfleet config (default ``$JOBFLEET_CONFIG``, else
    ``/etc/jobfleet/jobfleet.yml``). ``transport_options`` are merged over the broker
    transport options; ``settings`` over everything else.
    """
    runtime = runtime_for(config_path)
    conf = app_settings(runtime.config)
    conf["broker_transport_options"].update(transport_options or {})
    conf.update(settings)
    app = Celery(main)
    app.conf.update(conf)
    app.conf.jobfleet_config = config_path

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            startup_cleanup(config_path, str(sender.hostname))

    signals.worker_init.connect(on_worker_init, weak=False)
    return app


def runtime_for(config_path: str | None) -> Runtime:
    """This process's runtime for ``config_path`` (a forked pool process makes its own)."""
    key = (os.getpid(), config_path)
    runtime = _runtimes.get(key)
    if runtime is None:
        runtime = _runtimes[key] = Runtime.from_path(config_path)
    return runtime


def startup_cleanup(config_path: str | None, node: str) -> None:
    """Release the rows left running under ``node`` (this node only), in the main process.

    The connections are closed afterwards, so no pool process inherits them.
    """
    from jobfleet.reaper import startup_cleanup as release_node

    runtime = Runtime.from_path(config_path)
    try:
        result = release_node(runtime, node)
    finally:
        runtime.ledger.engine.dispose()
    if result.requeued or result.failed:
        print(
            f"jobfleet celery: node {node} released {len(result.requeued)} requeued and "
            f"{len(result.failed)} failed rows left from its last run",
            file=sys.stderr,
            flush=True,
        )


def pool_process_lost(config_path: str | None, job_id: str, node: str, comes_back: bool) -> None:
    """Record, in the node's main process, a task whose pool process died during it.

    Only a row still running under ``node`` is touched (a pool process that died after
    recording its outcome leaves nothing to do). It is requeued while attempts remain,
    else failed, with error kind ``killed``. ``comes_back``: Celery puts the message back
    (late acks and reject on worker lost), so the requeued row counts as sent; otherwise
    it is sent again here. The connections are closed afterwards, as no pool process
    forked later may inherit them.
    """
    from jobfleet.modes import route

    runtime = Runtime.from_path(config_path)
    try:
        row = runtime.ledger.get(job_id)
        if row is None or row.status != "running" or row.worker != node:
            return
        message = f"a pool process of Celery node {node} died during the job"
        new = runtime.ledger.release(row, message, "killed", stale_before=None)
        if new is None:
            return
        requeued = new.status == "pending"
        logs.emit_row(
            "JOB_REQUEUED" if requeued else "JOB_FAILED",
            row,
            node,
            stream=runtime.stream,
            error=message,
            error_kind="killed",
            fatal=False,
            will_retry=requeued,
        )
        if requeued and not (comes_back and runtime.ledger.set_dispatched(new.id, True)):
            route(runtime, new)
    finally:
        runtime.ledger.engine.dispose()


class LedgerRequest(Request):  # type: ignore[misc]
    """A delivery as the node's main process sees it: when its pool process dies during
    the task, the ledger row is recorded at once (:func:`pool_process_lost`) before Celery
    puts the message back, so that the message finds the row pending and runs it."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
        if isinstance(exc, WorkerLostError):
            task = self.task
            try:
                pool_process_lost(
                    task.app.conf.get("jobfleet_config"),
                    str(self.id),
                    str(self.hostname),
                    comes_back=bool(task.acks_late and task.reject_on_worker_lost),
                )
            except Exception as error:  # the reaper still has the row after orphan_after
                print(
                    f"jobfleet celery: {translate(error) or redact(first_line(str(error)))}; "
                    f"job {self.id} left for the reaper",
                    file=sys.stderr,
                    flush=True,
                )
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )


class LedgerTask(Task):  # type: ignore[misc]
    """A Celery task whose every delivery runs through the jobfleet ledger wrapper."""

    typing = False  # arguments come from the ledger row
    Request = LedgerRequest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or request.id is None:
            return self.run(*args, **kwargs)  # a plain function call, outside a worker
        runtime = runtime_for(self.app.conf.get("jobfleet_config"))
        return run_delivery(runtime, self, str(request.id), str(request.hostname))


def ledger_task(app: Celery, **options: Any) -> Callable[[F], F]:
    """Decorator: register ``func`` on ``app`` as a :class:`LedgerTask`.

    The task name is ``module.function``, the dotted form of the function name the
    ledger stores, so ``jobfleet.enqueue("pkg.mod:func", queue=...)`` reaches it.
    """

    def register(func: F) -> F:
        name = options.pop("name", f"{func.__module__}.{func.__qualname__}")
        task: F = app.task(base=LedgerTask, name=name, **options)(func)
        return task

    return register


def run_delivery(runtime: Runtime, task: Task, job_id: str, node: str) -> Any:
    """One delivery of a Celery message: claim, heartbeat, run, record, log."""
    runner = JobRunner(runtime, node, MODE)
    try:
        row = _claim(runner, job_id)
    except OperationalError as exc:
        # The ledger is unreachable: acknowledge and skip. The row stays pending; the
        # reaper sends it again once it is overdue.
        print(
            f"jobfleet celery: {translate(exc)}; job {job_id} left for the reaper",
            file=sys.stderr,
            flush=True,
        )
        return None
    if row is None:
        return None
    runner.log("JOB_START", row)
    heartbeat = Heartbeat(runtime, row, runtime.config.heartbeat_interval)
    heartbeat.start()
    try:
        with progress_to(lambda p: runtime.ledger.set_progress(row, p)):
            value, error, duration_ms = _call(task, row)
    finally:
        heartbeat.stop()
    judgement = None if error is None else runner.judge(row, error)
    recorded = runner.record(row, judgement, duration_ms)
    if recorded == "retry" and judgement is not None:
        pending = runtime.ledger.get(row.id)
        if pending is not None and pending.status == "pending":
            send(runtime, pending, countdown=judgement.delay)  # else the reaper sends it
        return None
    if recorded == "failed" and error is not None:
        raise error  # Celery logs the failure too; the message is acknowledged
    return value if recorded == "success" else None


def _claim(runner: JobRunner, job_id: str) -> JobRow | None:
    """pending -> running under this node, or None after one log line saying why not."""
    current = runner.runtime.ledger.get(job_id)
    if (
        current is not None
        and current.status == "pending"
        and current.run_after is not None
        and current.run_after > utcnow() + timedelta(seconds=NOT_DUE_SLACK)
    ):
        runner.log(
            "JOB_DROPPED",
            current,
            error="a delivery arrived before the row's retry is due; its own message follows",
            error_kind="not_due",
            fatal=False,
            will_retry=True,
        )
        return None
    return runner.claim(job_id)


def _call(task: Task, row: JobRow) -> tuple[Any, BaseException | None, int]:
    """Run the task's function with the row's arguments: (value, error, duration in ms)."""
    from celery.exceptions import SoftTimeLimitExceeded
    from rq.timeouts import JobTimeoutException

    started = time.monotonic()
    try:
        args, kwargs = row.call_args()
        value = task.run(*args, **kwargs)
    except SoftTimeLimitExceeded:
        error = JobTimeoutException("the task exceeded its soft time limit")
        return None, error, int((time.monotonic() - started) * 1000)
    except Exception as exc:
        return None, exc, int((time.monotonic() - started) * 1000)
    return value, None, int((time.monotonic() - started) * 1000)
