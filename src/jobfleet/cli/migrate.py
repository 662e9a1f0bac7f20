"""``jobfleet migrate rq-to-db|db-to-rq --queues a,b``: move waiting jobs, then verify."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import queue_list, ready
from jobfleet.migrate import db_to_rq, rq_to_db


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("migrate", help="move waiting jobs between RQ and the ledger")
    sub = p.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    for name, helptext in (
        ("rq-to-db", "roll back: RQ's waiting jobs become pending db-mode rows"),
        ("db-to-rq", "roll forward: pending rows become RQ jobs under their ids"),
    ):
        d = sub.add_parser(name, parents=[common], help=helptext)
        d.add_argument("--queues", type=queue_list, metavar="A,B", help="default: every queue")
        d.add_argument("--dry-run", action="store_true", help="count, change nothing")
        if name == "rq-to-db":
            d.add_argument(
                "--redis-lost", action="store_true", help="Redis is gone: switch from the ledger"
            )
        d.set_defaults(handler=run)


def run(args: argparse.Namespace) -> Output:
    rt = ready(args)
    queues = args.queues or sorted(rt.config.queues)
    if args.direction == "rq-to-db":
        reports = rq_to_db(rt, queues, dry_run=args.dry_run, redis_lost=args.redis_lost)
    else:
        reports = db_to_rq(rt, queues, dry_run=args.dry_run)
    ok = all(r.ok for r in reports)
    data = {
        "direction": args.direction,
        "dry_run": args.dry_run,
        "ok": ok,
        "changed": not args.dry_run and any(r.moved or r.swept for r in reports),
        "queues": {r.queue: asdict(r) for r in reports},
    }
    lines = []
    for r in reports:
        line = f"{r.queue}: before {r.before}, after {r.after}, moved {r.moved}"
        if r.created:
            line += f", created {r.created}"
        if r.scheduled:
            line += f", scheduled {r.scheduled}"
        if r.ran_meanwhile:
            line += f", ran meanwhile {r.ran_meanwhile}"
        if r.unconfirmed:
            line += f", unconfirmed {len(r.unconfirmed)}"
        if not r.ok:
            line += f"; MISMATCH missing {' '.join(r.missing + r.unreadable) or '-'}"
            line += f", left in redis {r.left_in_redis}"
        lines.append(line)
    return Output(data, "\n".join(lines), exit_code=0 if ok else 1)
