"""Sort a job's exception into fatal (fail now) or retryable, and name its kind.

Fatal: :class:`jobfleet.FatalError`, HTTP client errors that a retry cannot fix
(:data:`FATAL_HTTP_STATUSES`, read from ``exc.status_code`` or ``exc.response.status_code``),
and the classes listed in the config's ``fatal_exceptions``. Everything else (5xx,
connection errors, timeouts) is retryable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rq.timeouts import JobTimeoutException

from jobfleet.errors import FatalError

FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 409, 410, 422})
"""HTTP statuses that mean "this request will never succeed"."""


@dataclass(frozen=True)
class Verdict:
    fatal: bool
    kind: str


class UnknownFunctionError(Exception):
    """The job names a function that cannot be imported (fatal)."""


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (requests/httpx style)."""
    for holder in (exc, getattr(exc, "response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status
    return None


def _names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def classify(exc: BaseException, fatal_exceptions: Iterable[str] = ()) -> Verdict:
    """The verdict for ``exc``; ``fatal_exceptions`` holds dotted class names."""
    if isinstance(exc, FatalError):
        return Verdict(True, "fatal")
    if isinstance(exc, UnknownFunctionError):
        return Verdict(True, "unknown_function")
    if isinstance(exc, JobTimeoutException):
        return Verdict(False, "timeout")
    status = http_status(exc)
    if status is not None:
        return Verdict(status in FATAL_HTTP_STATUSES, f"http_{status}")
    if _names(exc) & set(fatal_exceptions):
        return Verdict(True, "fatal")
    return Verdict(False, "error")


def describe(exc: BaseException) -> str:
    """``Type: message`` (the message may be empty)."""
    message = str(exc)
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name
