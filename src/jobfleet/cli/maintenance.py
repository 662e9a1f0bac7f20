"""``jobfleet reap``, ``jobfleet startup-cleanup`` and ``jobfleet prune``.

Their event lines go to stderr, so that stdout holds only the result.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import duration, ready
from jobfleet.reaper import prune, reap, startup_cleanup


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "reap", parents=[common], help="one reaper pass: orphaned jobs, lost pending jobs"
    )
    p.set_defaults(handler=run_reap)
    p = subparsers.add_parser(
        "startup-cleanup",
        parents=[common],
        help="release the jobs a restarting worker left running",
    )
    p.add_argument("--name", required=True, help="the worker name (as given to the worker)")
    p.set_defaults(handler=run_startup_cleanup)
    p = subparsers.add_parser(
        "prune", parents=[common], help="delete finished jobs older than a duration"
    )
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h")
    p.set_defaults(handler=run_prune)


def run_reap(args: argparse.Namespace) -> Output:
    result = reap(ready(args))
    text = (
        f"requeued {len(result.requeued)}, failed {len(result.failed)}, "
        f"redispatched {len(result.redispatched)}"
    )
    return Output(asdict(result), text)


def run_startup_cleanup(args: argparse.Namespace) -> Output:
    result = startup_cleanup(ready(args), args.name)
    data = {"worker": args.name, "requeued": result.requeued, "failed": result.failed}
    text = f"worker {args.name}: requeued {len(result.requeued)}, failed {len(result.failed)}"
    return Output(data, text)


def run_prune(args: argparse.Namespace) -> Output:
    age = duration(args.older_than)
    deleted = prune(ready(args), age)
    return Output({"deleted": deleted}, f"deleted {deleted} finished jobs older than {age}")
