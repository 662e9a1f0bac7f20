"""``jobfleet backup --out DIR --queues a,b`` and ``jobfleet backup verify DIR``."""

from __future__ import annotations

import argparse
from typing import Any

from jobfleet.backup import backup, verify
from jobfleet.cli import Output
from jobfleet.cli._common import queue_list, ready, runtime


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "backup", parents=[common], help="back up RQ queues and ledger rows as JSON lines"
    )
    p.add_argument("action", nargs="?", choices=["verify"], help="verify DIR instead")
    p.add_argument("dir", nargs="?", metavar="DIR", help="with verify: the backup directory")
    p.add_argument("--out", metavar="DIR", help="new directory for the backup")
    p.add_argument("--queues", type=queue_list, metavar="A,B", help="default: every queue")
    p.add_argument("--dry-run", action="store_true", help="count, write nothing")
    p.add_argument("--redis-lost", action="store_true", help="ledger rows only")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> Output:
    from jobfleet.errors import UsageError

    if args.action == "verify":
        if not args.dir:
            raise UsageError("backup verify needs the backup directory")
        checked = verify(args.dir)
        ok = not checked.problems
        data = {"path": checked.path, "ok": ok, "files": checked.files}
        data["problems"] = checked.problems
        text = f"{checked.path}: " + ("ok" if ok else "; ".join(checked.problems))
        return Output(data, text, exit_code=0 if ok else 1)
    if not args.out:
        raise UsageError("backup needs --out DIR (or: backup verify DIR)")
    rt = ready(args) if not args.redis_lost else runtime(args, logs_to_stderr=True)
    queues = args.queues or sorted(rt.config.queues)
    done = backup(rt, args.out, queues, dry_run=args.dry_run, redis_lost=args.redis_lost)
    counts = {name: f["count"] for name, f in done.files.items()}
    data = {"path": done.path, "queues": queues, "dry_run": args.dry_run, "files": done.files}
    text = f"{'would write' if args.dry_run else 'wrote'} {done.path}: " + ", ".join(
        f"{n} {c}" for n, c in sorted(counts.items())
    )
    return Output(data, text)
