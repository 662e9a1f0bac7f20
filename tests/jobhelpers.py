"""Job functions the tests enqueue; worker subprocesses import this module by name.

Side effects go to files named by the caller, so a test counts what really ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jobfleet


class HTTPError(Exception):
    """An exception shaped like requests' HTTPError (status on ``response``)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"server answered {status}")
        self.response = type("Response", (), {"status_code": status})()


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status_code = status


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def noop() -> None:
    return None


def record(path: str, token: str) -> str:
    _append(path, token)
    return token


def add(a: int, b: int) -> int:
    return a + b


def slow(path: str, token: str, seconds: float) -> None:
    """Record "start token pid", sleep, then record "done token"."""
    _append(path, f"start {token} {os.getpid()}")
    time.sleep(seconds)
    _append(path, f"done {token}")


def http_error(path: str, status: int) -> None:
    _append(path, f"attempt {status}")
    raise HTTPError(status)


def status_error(path: str, status: int) -> None:
    _append(path, f"attempt {status}")
    raise StatusError(status)


def fatal(path: str) -> None:
    _append(path, "attempt")
    raise jobfleet.FatalError("this job can never succeed")


def secret_failure(password: str) -> None:
    raise ValueError("could not log in")


def with_progress(path: str, seconds: float) -> None:
    jobfleet.progress(40)
    _append(path, f"start {os.getpid()}")
    time.sleep(seconds)


def flaky_once(path: str) -> str:
    """Fail with a 503 the first time, succeed the second."""
    if Path(path).exists():
        _append(path, "second")
        return "ok"
    _append(path, "first")
    raise HTTPError(503)


def gated(path: str, token: str, gate: str, limit: float = 90.0) -> None:
    """Record "start token pid", wait (bounded) until the file ``gate`` exists, record
    "done token": the test decides when the job ends."""
    _append(path, f"start {token} {os.getpid()}")
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    _append(path, f"done {token}")


def loaded_modules(path: str) -> None:
    """Record which modules the process has imported (in a work horse: the worker's
    modules at the fork, plus what RQ imports to run this job)."""
    import sys

    _append(path, " ".join(sorted(sys.modules)))
