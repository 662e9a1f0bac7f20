"""``jobfleet db init``: create or upgrade the ledger schema (idempotent)."""

from __future__ import annotations

import argparse
from typing import Any

from jobfleet.cli import Output
from jobfleet.cli._common import runtime
from jobfleet.schema import SCHEMA_VERSION, init_db


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("db", help="ledger schema commands")
    sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    init = sub.add_parser("init", parents=[common], help="create or upgrade the ledger schema")
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> Output:
    from jobfleet.modes import seed

    rt = runtime(args)
    changed = init_db(rt.ledger.engine)
    changed = bool(seed(rt.ledger.engine, rt.config)) or changed  # config seeds new queues only
    text = f"ledger schema version {SCHEMA_VERSION} " + ("created" if changed else "up to date")
    return Output({"schema_version": SCHEMA_VERSION, "changed": changed}, text)
