"""``jobfleet enqueue FUNC [ARG ...]``: record a job and dispatch it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import ready
from jobfleet.dispatch import enqueue
from jobfleet.errors import UsageError


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("enqueue", parents=[common], help="enqueue a job")
    p.add_argument("func", metavar="FUNC", help="pkg.module:func")
    p.add_argument("args", nargs="*", metavar="ARG", help="each decoded as JSON (5, '\"x\"')")
    p.add_argument("--queue", default="default")
    p.add_argument("--kwargs", default="{}", metavar="JSON", help="a JSON object")
    p.add_argument("--max-attempts", type=int, metavar="N")
    p.add_argument("--id", dest="job_id", metavar="ID", help="job id (default: random)")
    p.set_defaults(handler=run)


def _decode(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc.msg}): {text!r}") from None


def run(args: argparse.Namespace) -> Output:
    values = [_decode(a, f"argument {i + 1}") for i, a in enumerate(args.args)]
    kwargs = _decode(args.kwargs, "--kwargs")
    if not isinstance(kwargs, dict):
        raise UsageError("--kwargs must be a JSON object")
    done = enqueue(
        ready(args),
        args.func,
        values,
        kwargs,
        queue=args.queue,
        max_attempts=args.max_attempts,
        job_id=args.job_id,
    )
    state = "dispatched" if done.dispatched else "pending (Redis unreachable; the reaper sends it)"
    data = {"id": done.id, "queue": done.queue, "dispatched": done.dispatched}
    return Output(data, f"{done.id} on {done.queue}: {state}")
