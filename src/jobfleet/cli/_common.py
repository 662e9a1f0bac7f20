"""Helpers the runtime subcommands share: building the runtime, parsing small values."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta

from jobfleet.errors import UsageError
from jobfleet.runtime import Runtime


def runtime(args: argparse.Namespace, logs_to_stderr: bool = False) -> Runtime:
    """The runtime for ``--config``; event lines go to stderr when stdout holds a result."""
    return Runtime.from_path(args.config, sys.stderr if logs_to_stderr else None)


def ready(args: argparse.Namespace, logs_to_stderr: bool = True) -> Runtime:
    """A runtime whose ledger answers and carries this runtime's schema."""
    from jobfleet.schema import require_schema  # SQLAlchemy: not for `jobfleet worker`

    rt = runtime(args, logs_to_stderr)
    require_schema(rt.ledger.engine)
    return rt


def queue_list(text: str) -> list[str]:
    names = [q.strip() for q in text.split(",") if q.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of queue names")
    return names


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``; a bare number means days."""
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(f"bad duration {text!r}; use e.g. 30d, 12h, 90m")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
