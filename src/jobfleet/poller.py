"""``jobfleet poll-worker``: run ``db``-mode jobs by claiming ledger rows directly.

Each claim is one atomic statement (:meth:`jobfleet.ledger.Ledger.claim_next`:
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, a conditional UPDATE on SQLite). The claimed row
runs in this process through the same wrapper as the RQ worker, with the same
classification, heartbeats and log lines; the queue's ``timeout`` is enforced with
SIGALRM. SIGTERM or SIGINT is a warm shutdown: the running job finishes, then the poller
exits (the unit needs ``KillMode=mixed`` like the RQ worker's).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from jobfleet.errors import translate
from jobfleet.runner import JobRunner

if TYPE_CHECKING:
    from jobfleet.runtime import Runtime

IDLE_BACKOFF_MAX = 5.0
"""An idle poller sleeps at most this long between claims, whatever poll_interval says."""


class Poller:
    """Claims and runs rows of ``queues`` until stopped."""

    def __init__(self, runtime: Runtime, queues: list[str], name: str) -> None:
        for queue in queues:
            runtime.config.queue(queue)  # unknown queue: one line, exit 2
        self.runtime, self.queues, self.name = runtime, queues, name
        self.runner = JobRunner(runtime, name, "db")
        self.stop_requested = threading.Event()
        self.processed = 0

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run_once(self) -> bool:
        """Claim and run one row of the queues stored in ``db`` mode; False when none was due."""
        from jobfleet.modes import in_mode

        queues = in_mode(self.runtime, self.queues, "db")  # never while a queue migrates
        if not queues:
            return False
        row = self.runtime.ledger.claim_next(queues, self.name)
        if row is None:
            return False
        timeout = self.runtime.config.queues[row.queue].timeout
        self.runner.run(row, timeout=timeout)
        self.processed += 1
        return True

    def work(self, burst: bool = False) -> int:
        """Loop until stopped (or, with ``burst``, until nothing is due); return the count."""
        from sqlalchemy.exc import OperationalError

        interval = min(self.runtime.config.poll_interval, IDLE_BACKOFF_MAX)
        while not self.stop_requested.is_set():
            try:
                if self.run_once():
                    continue
            except OperationalError as exc:  # the database blinked: wait, then claim again
                print(f"jobfleet poll-worker: {translate(exc)}", file=sys.stderr, flush=True)
                self.stop_requested.wait(IDLE_BACKOFF_MAX)
                continue
            if burst:
                break
            self.stop_requested.wait(interval)
        return self.processed
