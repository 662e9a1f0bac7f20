"""``jobfleet affected``: name the workers whose import closure contains a changed file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jobfleet.affected import Result, analyze, load_workers
from jobfleet.cli import Output

WARNING_PREFIX = "jobfleet affected: warning: "


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "affected",
        parents=[common],
        help="name the workers a change affects, from the import graph",
        description=(
            "Name the workers whose entry or import closure (in the old or the new tree) "
            "contains a changed file. A dependency lock or requirements change affects "
            "every worker. --config is ignored."
        ),
    )
    p.add_argument(
        "--workers",
        required=True,
        metavar="WORKERS.yml",
        help="worker definitions: workers: {NAME: {entry: PATH_OR_MODULE or [list]}}",
    )
    p.add_argument("--old", metavar="DIR", help="the tree before the change")
    p.add_argument("--new", metavar="DIR", help="the tree after the change (default: .)")
    p.add_argument(
        "--changed",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="changed files, relative to the tree root (instead of comparing --old and --new)",
    )
    p.add_argument(
        "--source-root",
        action="append",
        default=[],
        metavar="REL",
        help="a directory (relative to the tree root) that the app puts on sys.path; repeatable",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> Output:
    workers = load_workers(args.workers)
    result = analyze(
        workers,
        old=args.old,
        new=args.new,
        changed=args.changed,
        source_roots=args.source_root,
    )
    for warning in result.warnings:
        print(WARNING_PREFIX + warning, file=sys.stderr)
    return Output(data=result.to_json(), text=render_text(result))


def render_text(result: Result) -> str:
    """One line per worker, affected first, each with the chain that explains it."""
    count = len(result.changed_files)
    lines = [f"{count} changed file{'' if count == 1 else 's'}"]
    for name in result.affected_workers:
        lines.append(f"affected    {name}: {' -> '.join(result.reasons[name])}")
    for name in result.unaffected_workers:
        lines.append(f"unaffected  {name}")
    return "\n".join(lines)
