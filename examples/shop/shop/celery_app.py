"""The shop's Celery app: entry of the ``catalog`` Celery worker (kind ``celery``).

The unit runs ``celery -A shop.celery_app worker -n catalog-1@HOST -Q catalog``. Jobs go
through the same ledger as the RQ workers' jobs; enqueue them on a queue in mode
``celery``::

    jobfleet enqueue shop.celery_app:rebuild_catalog 10 1.0 --queue catalog

It needs Celery in the release (``jobfleet[celery]``): the wheelhouse is installed offline
from requirements.lock, so Celery and its dependencies must be pinned there first.
"""

from __future__ import annotations

import time

import jobfleet
from jobfleet.celery import ledger_task, make_app
from shop import models

app = make_app("shop.celery_app")


@ledger_task(app)
def rebuild_catalog(steps: int = 10, pause: float = 1.0) -> dict[str, int]:
    """A slow job that reports its progress after each of ``steps`` steps."""
    orders = models.sample_orders(steps)
    for done in range(1, steps + 1):
        time.sleep(pause)
        jobfleet.progress(100.0 * done / steps)
    return {"steps": steps, "orders": len(orders)}


@ledger_task(app)
def ping(value: object = None) -> dict[str, object]:
    """A quick job: proves a Celery node takes work."""
    return {"ok": True, "value": value}
