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
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from jobfleet.runner import Heartbeat, Judgement

if TYPE_CHECKING:
    from jobfleet.ledger import JobRow
    from jobfleet.runner import JobRunner


class HorseChannel:
    """Created by the worker before the fork; each side closes the ends it does not use."""

    def __init__(self, runner: JobRunner, row: JobRow | None) -> None:
        self.runner, self.row = runner, row
        self.up_read, self.up_write = os.pipe()  # horse -> worker
        self.down_read, self.down_write = os.pipe()  # worker -> horse
        self.open_fds = {self.up_read, self.up_write, self.down_read, self.down_write}
        self.reader: threading.Thread | None = None
        self.heartbeat: Heartbeat | None = None

    # -- worker side ---------------------------------------------------------------
    def worker_after_fork(self) -> None:
        self._close(self.up_write, self.down_read)
        if self.row is None:
            return
        runtime = self.runner.runtime
        self.heartbeat = Heartbeat(runtime, self.row, runtime.config.heartbeat_interval)
        self.heartbeat.start()
        self.reader = threading.Thread(target=self._read, name="horse-channel", daemon=True)
        self.reader.start()

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
                self.runner.runtime.ledger.set_progress(self.row, float(message["progress"]))
            return
        raw = message.get("judgement")
        judgement = None if raw is None else Judgement(**raw)
        try:
            kind = self.runner.record(self.row, judgement, int(message["duration_ms"]))
        except Exception:  # the database is gone: the reaper will requeue the row later
            kind = "dropped"
        if judgement is not None:  # a success is not answered (see the module docstring)
            with contextlib.suppress(OSError):
                os.write(self.down_write, kind.encode() + b"\n")

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the horse's messages are recorded (the horse has exited)."""
        if self.reader is not None:
            self.reader.join(timeout)

    def close(self) -> None:
        self.drain()
        if self.heartbeat is not None:
            self.heartbeat.stop()
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


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
