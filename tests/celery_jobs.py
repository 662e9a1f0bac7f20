"""A Celery app for the tests; worker subprocesses load it with ``celery -A celery_jobs``.

Each task is a :mod:`jobhelpers` function run through the ledger wrapper, so a test
counts what really ran from the side file. ``CELERY_TEST_VISIBILITY`` (seconds) shortens
the broker visibility timeout, and restores abandoned messages every second.
"""

from __future__ import annotations

import os
from typing import Any

import jobhelpers

from jobfleet.celery import ledger_task, make_app

_visibility = os.environ.get("CELERY_TEST_VISIBILITY")
_options: dict[str, Any] = {}
if _visibility:
    _options = {
        "visibility_timeout": float(_visibility),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }

app = make_app("celery_jobs", transport_options=_options)

record = ledger_task(app)(jobhelpers.record)
slow = ledger_task(app)(jobhelpers.slow)
fatal = ledger_task(app)(jobhelpers.fatal)
http_error = ledger_task(app)(jobhelpers.http_error)
with_progress = ledger_task(app)(jobhelpers.with_progress)
flaky_once = ledger_task(app)(jobhelpers.flaky_once)
