"""Errors an operator or a job author can cause: each is shown as one line, never a traceback."""

from __future__ import annotations

import re
import sys
from typing import ClassVar


class JobfleetError(Exception):
    """A problem the operator can fix: one line on stderr and a non-zero exit.

    Exit codes: 0 ok, 1 ran and found a problem, 2 usage or configuration mistake.
    """

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 1


class UsageError(JobfleetError):
    """Bad input: a missing file, malformed YAML or JSON, an unknown name."""

    code = "usage"
    exit_code = 2


class ConfigError(UsageError):
    """The config file is missing, unreadable, or holds an unknown key or a bad value."""

    code = "config"


class FatalError(Exception):
    """Raised by a job to say "do not retry": the ledger row fails at once."""


class UnavailableError(JobfleetError):
    """Redis or the database did not answer."""

    code = "unavailable"


_REDIS_ERRORS = ("ConnectionError", "TimeoutError", "AuthenticationError", "BusyLoadingError")


def translate(exc: BaseException) -> JobfleetError | None:
    """Turn a driver error about an unreachable server into one operator-readable line.

    Only modules already imported are consulted, so the CLI pays nothing for this.
    """
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None and isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        detail = str(exc.orig) if getattr(exc, "orig", None) is not None else str(exc)
        return UnavailableError(f"database unreachable: {redact(first_line(detail))}")
    redis_exc = sys.modules.get("redis.exceptions")
    if redis_exc is not None:
        kinds = tuple(getattr(redis_exc, name) for name in _REDIS_ERRORS)
        if isinstance(exc, kinds):
            return UnavailableError(f"redis unreachable: {redact(first_line(str(exc)))}")
    return None


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (driver messages often run on)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@", re.I)


def redact(text: str) -> str:
    """Hide passwords in URLs (``redis://:secret@host`` -> ``redis://:***@host``)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
