"""The ``jobfleet`` command line: parsing, rendering and exit codes; no business logic.

Each subcommand lives in its own module under ``jobfleet.cli`` and exposes
``register(subparsers, common)``, which adds its parser and sets ``handler``. A handler
takes the parsed namespace and returns an :class:`Output`; it never prints. ``main`` is
the only place where a :class:`~jobfleet.errors.JobfleetError` becomes one stderr line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jobfleet.errors import JobfleetError, translate

#: Each subcommand and the module under ``jobfleet.cli`` that registers it, in the order
#: ``--help`` lists them. A run imports only the module of its command (all of them for
#: ``--help`` or a typo), so ``affected`` never loads SQLAlchemy and a worker's idle
#: memory holds only what a worker needs.
COMMANDS: dict[str, str] = {
    "db": "db",
    "worker": "worker",
    "poll-worker": "worker",
    "enqueue": "enqueue",
    "status": "status",
    "health": "status",
    "job": "job",
    "reap": "maintenance",
    "startup-cleanup": "maintenance",
    "prune": "maintenance",
    "affected": "affected",
    "queue": "queue",
    "backup": "backup",
    "migrate": "migrate",
}


@dataclass(frozen=True)
class Output:
    """What a subcommand returns: a JSON-ready object, its human rendering, an exit code."""

    data: Any
    text: str = ""
    exit_code: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (``--config``, ``--json``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $JOBFLEET_CONFIG, else /etc/jobfleet/jobfleet.yml)",
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    return common


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser: only the first argument's command when it names one, else every command."""
    parser = argparse.ArgumentParser(
        prog="jobfleet", description="Background-job workers that never leave a job stuck."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_parser()
    first = list(sys.argv[1:] if argv is None else argv)[:1]
    only = COMMANDS.get(first[0]) if first else None
    for name in (only,) if only else dict.fromkeys(COMMANDS.values()):
        module = importlib.import_module(f"jobfleet.cli.{name}")
        module.register(subparsers, common)
    return parser


def render(args: argparse.Namespace, output: Output) -> int:
    if output.data is None and not output.text:
        return output.exit_code
    if getattr(args, "json", False):
        print(json.dumps(output.data, sort_keys=True, default=str))
    elif output.text:
        print(output.text)
    return output.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        output: Output = args.handler(args)
    except JobfleetError as exc:
        print(f"jobfleet {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        known = translate(exc)  # unreachable Redis or database: one line, not a traceback
        if known is None:
            raise
        print(f"jobfleet {args.command}: {known}", file=sys.stderr)
        return known.exit_code
    return render(args, output)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
