"""Jobs that exercise the runtime: success, fatal and retryable failure, long runs, side effects.

Enqueue them by dotted name, e.g. ``jobfleet enqueue shop.jobs:sleep 5 --queue slow``.
"""

from __future__ import annotations

import os
import socket
import time

import jobfleet
import shop

#: Where :func:`record` appends its token; the workers may write under /var/lib/jobfleet.
SIDE_EFFECTS_ENV = "SHOP_SIDE_EFFECTS"
SIDE_EFFECTS_DEFAULT = "/var/lib/jobfleet/shop-side-effects.log"


class ServiceUnavailable(Exception):
    """A 503 from a remote service: retryable."""

    status_code = 503


def succeed(value: object = None) -> dict[str, object]:
    """Always works; echoes its argument."""
    return {"ok": True, "value": value}


def fatal(reason: str = "order 404 is gone") -> None:
    """Fails in a way that must never be retried."""
    raise jobfleet.FatalError(reason)


def flaky(reason: str = "payment service answered 503") -> None:
    """Fails in a way that is retried until max_attempts."""
    raise ServiceUnavailable(reason)


def sleep(seconds: float = 5.0, steps: int = 5) -> dict[str, float]:
    """Sleeps in ``steps`` slices and reports progress after each."""
    steps = max(1, int(steps))
    for step in range(1, steps + 1):
        time.sleep(float(seconds) / steps)
        jobfleet.progress(100.0 * step / steps)
    return {"slept": float(seconds)}


def record(token: str) -> dict[str, str]:
    """Appends ``host token`` to the side-effect log, so a test can count runs."""
    path = os.environ.get(SIDE_EFFECTS_ENV, SIDE_EFFECTS_DEFAULT)
    line = f"{socket.gethostname()} {token}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return {"recorded": token}


def version() -> dict[str, str]:
    """The code version of the release that ran the job."""
    return {"version": shop.CODE_VERSION, "host": socket.gethostname()}
