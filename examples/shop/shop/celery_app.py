"""The shop's Celery app: entry of the ``catalog`` Celery worker (kind ``celery``).

The unit runs ``celery -A shop.celery_app worker -n catalog-1@HOST -Q catalog``. Jobs go
through the same ledger as the RQ workers' jobs; enqueue them on a queue in mode
``celery``::

    jobfleet enqueue shop.celery_app:rebuild_catalog 10 1.0 --queue catalog

It needs Celery in the release: the shop depends on ``jobfleet[celery]``, and Celery and
its dependencies are pinned in requirements.lock (the wheelhouse is installed offline).
"""

from __future__ import annotations

import os
import socket
import time

import jobfleet
from jobfleet.celery import ledger_task, make_app
from shop import models

app = make_app("shop.celery_app")


#: Where a finished rebuild with a token appends ``host token`` (as ``shop.jobs:record``
#: does; not imported from there, so a change of shop/jobs.py does not affect catalog).
SIDE_EFFECTS_ENV = "SHOP_SIDE_EFFECTS"
SIDE_EFFECTS_DEFAULT = "/var/lib/jobfleet/shop-side-effects.log"


@ledger_task(app)
def rebuild_catalog(steps: int = 10, pause: float = 1.0, token: str = "") -> dict[str, int]:
    """A slow job that reports its progress after each of ``steps`` steps.

    With a ``token``, the finished job appends ``host token`` to the side-effect log, so a
    test can count how often it ran to completion.
    """
    orders = models.sample_orders(steps)
    for done in range(1, steps + 1):
        time.sleep(pause)
        jobfleet.progress(100.0 * done / steps)
    if token:
        _record(token)
    return {"steps": steps, "orders": len(orders)}


def _record(token: str) -> None:
    path = os.environ.get(SIDE_EFFECTS_ENV, SIDE_EFFECTS_DEFAULT)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, f"{socket.gethostname()} {token}\n".encode())
    finally:
        os.close(fd)


@ledger_task(app)
def ping(value: object = None) -> dict[str, object]:
    """A quick job: proves a Celery node takes work."""
    return {"ok": True, "value": value}
