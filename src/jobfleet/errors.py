"""Errors an operator or a job author can cause: each is shown as one line, never a traceback."""

from __future__ import annotations

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
