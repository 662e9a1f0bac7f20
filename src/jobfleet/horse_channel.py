"""The pipe pair between an RQ worker process and its work horse, for one job.

The horse sends JSON lines: ``{"progress": P}`` and, once, the outcome. A reader thread
in the worker writes each to the ledger (on the worker's warm connection) and answers a
failure with what the ledger recorded (``retry``, ``failed`` or ``dropped``); the horse
waits for that answer before it hands the result to RQ, so RQ never requeues a retry
before the ledger row is pending again.

A success is not answered: the horse hands its result to RQ at once while the worker
completes the row. This is safe because the worker writes the row before it takes its
next job (:meth:`HorseChannel.close` waits for the reader), the heartbeat keeps the row
fresh until then, and the UPDATE is conditional on this worker's attempt, so the row
ends ``completed`` once. If the worker dies between the horse's exit and that write,
the row is left ``running`` with a heartbeat that stops: the reaper requeues it, exactly
as when a worker dies during a job (the job then runs again; jobs are at least once).

The ledger unreachable when the outcome comes: the reader keeps the outcome and writes it
when the database answers again (the horse of a failed job waits for that), and the
worker takes no other job meanwhile. While a beat fails, the heartbeat marks this
attempt alive in Redis (:func:`alive_key`, expiring after ``orphan_after``), and the
reaper leaves such a row alone: the worker is alive, only cut off from the database.
Once a shutdown is asked for, the reader gives up after :data:`STOP_GRACE` seconds,
with one line; the row is then left to the reaper.

Threads: the reader and the heartbeat run on two long-lived :class:`Relay` threads of
the worker, handed each job's task, not on two new threads per job (starting a thread
waits until it runs: milliseconds per job on a busy host). A relay still stuck in a
task it was given (a process the job forked holds the pipe open; a beat hangs on a dead
server) is left behind and a fresh one serves the next job, as a per-job thread would.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from jobfleet.errors import translate
from jobfleet.runner import Heartbeat, Judgement

if TYPE_CHECKING:
    from jobfleet.jobrow import JobRow
    from jobfleet.runner import JobRunner
    from jobfleet.runtime import Runtime

STOP_GRACE = 30.0
"""Seconds an unwritten outcome is retried after a shutdown was asked for."""

WRITE_RETRY_MAX = 2.0
"""Longest pause, in seconds, between two tries of an outcome write."""


def alive_key(row: JobRow) -> str:
    """The Redis key that says "this attempt's worker is alive" while its ledger is away."""
    return f"jobfleet:alive:{row.id}:{row.attempts}"


class WorkerHeartbeat(Heartbeat):
    """The RQ worker's heartbeat: a failed beat marks the attempt alive in Redis."""

    def missed(self, error: Exception) -> None:
        runtime: Runtime = self.runtime
        ttl = max(1, int(runtime.config.orphan_after))
        with contextlib.suppress(Exception):
            runtime.redis.set(alive_key(self.row), "1", ex=ttl)


class Relay:
    """One long-lived daemon thread that runs the tasks it is handed, one at a time.

    :meth:`ready` is a relay that can take a task now: this one, or a fresh one when
    this one is still busy with an earlier task (that thread is then left behind).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._task: Callable[[], object] | None = None
        self._thread: threading.Thread | None = None

    def ready(self) -> Relay:
        return Relay(self.name) if self.busy() else self

    def busy(self) -> bool:
        return self._task is not None

    def submit(self, task: Callable[[], object]) -> None:
        """Hand ``task`` to the thread (started on first use); does not wait for it."""
        with self._cond:
            if self._task is not None:
                raise RuntimeError(f"relay {self.name} is busy")
            self._task = task
            self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()  # once per worker, not once per job

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the task to end; whether it has."""
        with self._cond:
            return self._cond.wait_for(lambda: self._task is None, timeout)

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._task is not None)
                task = self._task
            assert task is not None
            try:
                task()
            except Exception as exc:  # a task's own error must not end the relay
                _say(f"{self.name}: {exc!r}")
            finally:
                with self._cond:
                    self._task = None
                    self._cond.notify_all()


class Relays:
    """The worker's two relays: the horse reader and the heartbeat."""

    def __init__(self) -> None:
        self.reader = Relay("horse-channel")
        self.heartbeat = Relay("heartbeat")

    def take(self) -> tuple[Relay, Relay]:
        """Two relays free for the next job."""
        self.reader, self.heartbeat = self.reader.ready(), self.heartbeat.ready()
        return self.reader, self.heartbeat


class HorseChannel:
    """Created by the worker before the fork; each side closes the ends it does not use."""

    def __init__(
        self,
        runner: JobRunner,
        row: JobRow | None,
        stopping: Callable[[], bool] = lambda: False,
        relays: Relays | None = None,
    ) -> None:
        self.runner, self.row, self.stopping = runner, row, stopping
        self.relays = relays or Relays()
        self.up_read, self.up_write = os.pipe()  # horse -> worker
        self.down_read, self.down_write = os.pipe()  # worker -> horse
        self.open_fds = {self.up_read, self.up_write, self.down_read, self.down_write}
        self.reader: Relay | None = None
        self.beating: Relay | None = None
        self.heartbeat: Heartbeat | None = None
        self.recording = False

    # -- worker side ---------------------------------------------------------------
    def worker_after_fork(self) -> None:
        self._close(self.up_write, self.down_read)
        if self.row is None:
            return
        runtime = self.runner.runtime
        self.heartbeat = WorkerHeartbeat(
            runtime, self.row, runtime.config.heartbeat_interval, self.runner.ledger
        )
        self.reader, self.beating = self.relays.take()
        self.beating.submit(self.heartbeat.run)  # the loop of Heartbeat, on the relay
        self.reader.submit(self._read)

    def _read(self) -> None:
        buffer = b""
        while chunk := _read_some(self.up_read):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._handle(json.loads(line))

    def _handle(self, message: dict[str, Any]) -> None:
        assert self.row is not None
        if "progress" in message:
            with contextlib.suppress(Exception):  # progress is best effort
                self.runner.ledger.set_progress(self.row, float(message["progress"]))
            return
        raw = message.get("judgement")
        judgement = None if raw is None else Judgement(**raw)
        self.recording = True
        try:
            kind = self._record(judgement, int(message["duration_ms"]))
        finally:
            self.recording = False
        if judgement is not None:  # a success is not answered (see the module docstring)
            with contextlib.suppress(OSError):
                os.write(self.down_write, kind.encode() + b"\n")

    def _record(self, judgement: Judgement | None, duration_ms: int) -> str:
        """Write the outcome, retrying while the ledger is unreachable (see the module)."""
        assert self.row is not None
        delay, failing_since, stop_seen = 0.25, None, None
        while True:
            try:
                kind = self.runner.record(self.row, judgement, duration_ms)
            except Exception as exc:
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    _say(f"{translate(exc) or exc}; outcome of job {self.row.id} kept, retrying")
                if self.stopping():
                    stop_seen = stop_seen or now
                    if now - stop_seen >= STOP_GRACE:
                        _say(f"gave up writing the outcome of job {self.row.id}; the reaper has it")
                        return "dropped"
                time.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX)
                continue
            if failing_since is not None:
                _say(f"the ledger answers again; job {self.row.id} recorded as {kind}")
            return kind

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the horse's messages are recorded (the horse has exited).

        An outcome being written is always waited for; otherwise the wait ends after
        ``timeout`` seconds (a process the job forked may still hold the pipe open).
        """
        if self.reader is None:
            return
        deadline = time.monotonic() + timeout
        while not self.reader.wait(0.5):
            if not self.recording and time.monotonic() > deadline:
                return

    def close(self) -> None:
        self.drain()
        if self.heartbeat is not None and self.beating is not None:
            self.heartbeat.stopped.set()
            self.beating.wait(self.heartbeat.interval + 5)
        self._close(*self.open_fds)

    def _close(self, *fds: int) -> None:
        """Close each fd once (a number closed twice may already name another file)."""
        for fd in fds:
            if fd in self.open_fds:
                self.open_fds.discard(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- horse side ----------------------------------------------------------------
    def horse_after_fork(self) -> None:
        self._close(self.up_read, self.down_write)

    def send(self, message: dict[str, Any]) -> None:
        os.write(self.up_write, json.dumps(message).encode() + b"\n")

    def progress(self, percent: float) -> None:
        self.send({"progress": percent})

    def report(self, judgement: Judgement | None, duration_ms: int) -> str:
        """Send the outcome; for a failure, return what the worker recorded (``dropped``
        if it is gone). A success returns ``success`` at once; the worker records it."""
        raw = None if judgement is None else asdict(judgement)
        self.send({"judgement": raw, "duration_ms": duration_ms})
        if judgement is None:
            return "success"
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = _read_some(self.down_read)
            if not chunk:
                return "dropped"
            answer += chunk
        return answer.decode().strip()


def _say(text: str) -> None:
    print(f"jobfleet worker: {text}", file=sys.stderr, flush=True)


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
