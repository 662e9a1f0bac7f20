"""``jobfleet queue list`` and ``jobfleet queue set-mode Q MODE``: the stored queue modes."""

from __future__ import annotations

import argparse
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import ready
from jobfleet.modes import MIGRATING, read, store


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("queue", help="show or set the stored mode of each queue")
    sub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", parents=[common], help="every queue and its mode")
    listing.set_defaults(handler=run_list)
    setter = sub.add_parser("set-mode", parents=[common], help="store a queue's mode")
    setter.add_argument("queue", metavar="QUEUE")
    setter.add_argument("mode", choices=["rq", "db", MIGRATING], metavar="MODE")
    setter.add_argument("--target", choices=["rq", "db"], help="with migrating: rq or db")
    setter.set_defaults(handler=run_set_mode)


def run_list(args: argparse.Namespace) -> Output:
    rt = ready(args)
    found = read(rt.ledger.engine, rt.config)
    data = {"queues": {q: m.public() for q, m in sorted(found.items())}}
    lines = []
    for q, m in sorted(found.items()):
        target = f" -> {m.target}" if m.target else ""
        lines.append(f"{q}: {m.mode}{target}" + ("" if m.stored else " (config)"))
    return Output(data, "\n".join(lines))


def run_set_mode(args: argparse.Namespace) -> Output:
    rt = ready(args)
    rt.config.queue(args.queue)  # unknown queue: one line, exit 2
    changed = store(rt.ledger.engine, args.queue, args.mode, args.target)
    data = {"queue": args.queue, "mode": args.mode, "target": args.target, "changed": changed}
    text = f"{args.queue}: {args.mode}" + (" (changed)" if changed else " (unchanged)")
    return Output(data, text)
