"""``jobfleet job show|retry|cancel ID``: one ledger row, as JSON or text."""

from __future__ import annotations

import argparse
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import ready
from jobfleet.ledger import JobRow
from jobfleet.modes import route


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("job", help="show, retry or cancel one job")
    sub = p.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    for name, helptext, handler in (
        ("show", "print the job's ledger row", run_show),
        ("retry", "run a finished job again (fresh attempt budget, its queue's mode)", run_retry),
        ("cancel", "cancel a pending or running job", run_cancel),
    ):
        action = sub.add_parser(name, parents=[common], help=helptext)
        action.add_argument("job_id", metavar="ID")
        action.set_defaults(handler=handler)


def _output(row: JobRow) -> Output:
    data = row.public()
    lines = [f"{key}: {value}" for key, value in data.items() if key not in ("args", "kwargs")]
    return Output(data, "\n".join(lines))


def run_show(args: argparse.Namespace) -> Output:
    return _output(ready(args).ledger.require(args.job_id))


def run_retry(args: argparse.Namespace) -> Output:
    rt = ready(args)
    row = rt.ledger.operator_retry(args.job_id)
    route(rt, row)  # by the queue's stored mode, as enqueue does
    return _output(rt.ledger.require(row.id))


def run_cancel(args: argparse.Namespace) -> Output:
    return _output(ready(args).ledger.cancel(args.job_id))
