"""``jobfleet worker`` (RQ mode) and ``jobfleet poll-worker`` (database mode)."""

from __future__ import annotations

import argparse
import socket
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import queue_list, ready, runtime


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    for name, helptext, handler in (
        ("worker", "run an RQ worker whose jobs go through the ledger", run_worker),
        ("poll-worker", "run database-mode jobs by polling the ledger", run_poller),
    ):
        p = subparsers.add_parser(name, parents=[common], help=helptext)
        p.add_argument(
            "--queues",
            required=True,
            type=queue_list,
            metavar="A,B",
            help="queues in priority order",
        )
        p.add_argument(
            "--name",
            default=f"{socket.gethostname()}:{name}",
            help="worker name recorded in the ledger (the unit passes %%H:%%n)",
        )
        p.add_argument("--burst", action="store_true", help="exit when no job is left")
        p.set_defaults(handler=handler)


def run_worker(args: argparse.Namespace) -> Output:
    from jobfleet.worker import run_worker as work

    rt = runtime(args, logs_to_stderr=False)
    rt.worker_ledger.require_schema()  # the worker runs without SQLAlchemy
    work(rt, args.queues, args.name, burst=args.burst)
    return Output(None)


def run_poller(args: argparse.Namespace) -> Output:
    from jobfleet.poller import Poller

    rt = ready(args, logs_to_stderr=False)
    poller = Poller(rt, args.queues, args.name)
    poller.install_signal_handlers()
    poller.work(burst=args.burst)
    return Output(None)
